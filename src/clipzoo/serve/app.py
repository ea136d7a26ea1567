"""The HTTP service: a FastAPI app over one :class:`~clipzoo.index.SearchIndex`.

``create_app(index)`` opens the index (and its model) once, at start-up, and returns the app; run it
with uvicorn (``clipzoo serve INDEX``). Where things are:

- :mod:`.state`: the :class:`~clipzoo.serve.state.Service` the routes share. **One model thread**: every
  model and index call runs on a single worker thread, so the event loop never blocks, the model is never
  called from two threads at once, and the index's SQLite connection is used from one thread only;
  torch's own intra-op threads still use every core for each call.
- :mod:`.routers`: one APIRouter per concern (search, classify and rank, embed, items and thumbnails,
  the page and the service's own routes); request and response bodies are the pydantic models of
  :mod:`.schemas`, sent as JSON or as a form (:mod:`.bodies`).
- :mod:`.deps`: the **optional bearer token** (every API route, ``/thumb`` and ``/metrics``; ``/health``,
  the page and the OpenAPI docs stay open: they reveal no indexed data) and the limits on texts, labels
  and templates (:mod:`.limits`). A token no client could send (not visible ASCII) is refused here, at start.
- **Every answer** says nosniff and ``X-Frame-Options: DENY``; HTML answers cannot be framed by another site
  (:class:`.middleware.SecurityHeaders`).
- **Untrusted input never makes a 500.** Bodies are size-limited (:mod:`.middleware`: 413, checked on
  ``Content-Length`` and on the bytes actually streamed); uploads are decoded by
  :mod:`clipzoo.image_bytes` (corrupt, truncated, empty, non-image and decompression-bomb files are 400);
  validation errors are 422; unknown ids and paths are 404. Every error body is ``{"detail": "<one
  line>"}`` (:mod:`.handlers`).
- **Files are named by id only** (:mod:`.routers.items`).
- **Connections are bounded** (:mod:`.connections`, applied by :func:`~clipzoo.serve.run`): a concurrency
  cap, header and keep-alive timeouts, a cap on an incomplete request, repeated log lines collapsed; the
  Host header is checked against an allow-list (400), bodies a cross-site form could post are 415, CORS
  is off unless origins are given (:mod:`.middleware`).
- **Encoding is batched** (:mod:`.batcher`): concurrent text and image queries share one model call.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ..constants import DEFAULT_MAX_PIXELS, VERSION
from ..errors import ClipzooError
from .docs_assets import router as docs_router
from .handlers import UnexpectedErrors, install_handlers
from .indices import IndexRegistry
from .limits import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_TEMPLATE,
    DEFAULT_THUMB_SIZE,
    MIN_BODY_BYTES,
    check_template,
)
from .middleware import (
    BodyLimitMiddleware,
    ContentTypeGuard,
    HostGuard,
    MetricsMiddleware,
    SecurityHeaders,
    TokenGuard,
    check_token,
)
from .names import named_indices
from .routers import ROUTERS
from .routers.clip_retrieval import PLAIN_TEXT_JSON_PATHS
from .routers.service import STATIC_DIR, PageFiles
from .state import Service
from .url_fetch import UrlFetcher

DESCRIPTION = ("Search an image collection by text or image, classify images over a vocabulary, embed and "
               "rank — with a CLIP-family model. The web page is at `/`.")


def create_app(index: Any, *, labels: "Sequence[str] | str | os.PathLike | None" = None, token: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, thumb_size: int = DEFAULT_THUMB_SIZE,
               max_image_pixels: int = DEFAULT_MAX_PIXELS, template: str = DEFAULT_TEMPLATE,
               model: Any = None, max_pending: int = DEFAULT_MAX_PENDING,
               max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS, allowed_hosts: Sequence[str] = (),
               cors_origins: Sequence[str] = (), max_batch: int = DEFAULT_MAX_BATCH,
               max_wait_ms: float = DEFAULT_MAX_WAIT_MS, allow_url: bool = False) -> FastAPI:
    """The service over ``index`` (a folder built by ``clipzoo index build``, or an open SearchIndex).

    labels: the vocabulary for ``/classify`` (a list, or a vocab .txt/.json file); requests may send
    their own. token: require ``Authorization: Bearer <token>`` on the API. max_body_bytes: the request
    body limit (413 above it). thumb_size: the longer side of thumbnails. max_image_pixels: uploads that
    declare more pixels are refused (413, decompression bombs); max_request_pixels: the same for all the images
    of one request together (413). model: a spec or Comparator to use instead
    of the one recorded in the index. max_pending: model jobs allowed to wait at once; more get 503 with
    Retry-After (load shedding instead of an unbounded queue). allowed_hosts: Host names accepted besides
    the address the server is reached on and the localhost names (else 400; ``"*"``: any). cors_origins:
    origins allowed to call the API from a browser (CORS is off without them). max_batch, max_wait_ms:
    dynamic batching of text and image encoding (:mod:`.batcher`; 1: unbatched). Bodies sent as
    text/plain or urlencoded get 415 (:class:`.middleware.ContentTypeGuard`). The index and model load
    here, once; a corrupt or missing index raises :class:`~clipzoo.errors.ClipzooError`.

    Several indices: ``index`` a mapping ``{name: index}``; each is its own Service with these options,
    served by name through clip-retrieval's API (:mod:`.routers.clip_retrieval`, ``app.state.indices``);
    the first is the one the other routes use. allow_url: let ``/knn-service`` fetch ``image_url``
    (bounded, public http(s) addresses only; :mod:`.url_fetch`).
    """
    token = check_token(token)  # one no client could send: refused before the index and model load
    if max_body_bytes < MIN_BODY_BYTES:
        raise ClipzooError(f"max_body_bytes must be at least {MIN_BODY_BYTES}, got {max_body_bytes}")
    check_template(template)
    named = named_indices(index)
    options = dict(labels=labels, token=token, max_body_bytes=max_body_bytes, thumb_size=thumb_size,
                   max_image_pixels=max_image_pixels, template=template, model=model, max_pending=max_pending,
                   max_request_pixels=max_request_pixels, max_batch=max_batch, max_wait_ms=max_wait_ms)
    service = Service(named[0][1], **options)

    # /docs and /redoc from the package's own files (docs_assets), never from a CDN: they work offline
    app = FastAPI(title="clipzoo", version=VERSION, description=DESCRIPTION, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.indices = IndexRegistry.build(named, service, lambda other: Service(other, **options),
                                            fetcher=UrlFetcher(max_body_bytes) if allow_url else None)
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes,
                       on_reject=lambda: service.metrics.rejected.inc(reason="body_too_large"))
    app.add_middleware(UnexpectedErrors)  # inside the metrics, which count its 500s
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(ContentTypeGuard, on_reject=lambda: service.metrics.rejected.inc(reason="content_type"),
                       plain_text_paths=PLAIN_TEXT_JSON_PATHS)
    app.add_middleware(TokenGuard, token=service.token, on_reject=lambda: service.metrics.rejected.inc(reason="token"))
    if cors_origins:
        add_cors(app, cors_origins)
    app.add_middleware(HostGuard, allowed=tuple(allowed_hosts),
                       on_reject=lambda: service.metrics.rejected.inc(reason="bad_host"))
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, the guards' own included
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(docs_router)
    app.mount("/static", PageFiles(directory=STATIC_DIR), name="static")
    return app


def add_cors(app: FastAPI, origins: Sequence[str]) -> None:
    """Let pages from ``origins`` (exact ``scheme://host[:port]`` values) call the API with the token."""
    bad = [o for o in origins if o != "*" and ("://" not in o or o.endswith("/"))]
    if bad:
        raise ClipzooError(f"CORS origin {bad[0]!r} is not an origin; give scheme://host[:port], "
                           "e.g. --cors-origin https://app.example.org")
    app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "POST", "DELETE"],
                       allow_headers=["Authorization", "Content-Type"], max_age=600)
