"""The HTTP service: a FastAPI app over one :class:`~clipzoo.index.SearchIndex`.

``create_app(index)`` opens the index (and its model) once, at start-up, and returns the app; run it
with uvicorn (``clipzoo serve INDEX``). Design:

- **One model thread.** Every model and index call runs on a single worker thread (a one-thread
  executor), so the event loop never blocks, the model is never called from two threads at once, and
  the index's SQLite connection is used from one thread only. torch's own intra-op threads still use
  every core for each call. Decoding uploads and making thumbnails run in anyio's thread pool.
- **Untrusted input never makes a 500.** Bodies are size-limited (413, checked on ``Content-Length``
  and on the bytes actually streamed); uploads are decoded by :mod:`clipzoo.serve.images` (corrupt,
  truncated, empty, non-image and decompression-bomb files are 400); validation errors are 422; unknown
  ids and paths are 404. Every error body is ``{"detail": "<one line>"}``.
- **Optional bearer token.** With ``token`` set, every API route, ``/thumb`` and ``/metrics`` need
  ``Authorization: Bearer <token>`` (401 otherwise). ``/health``, the web page and its static files,
  and the OpenAPI docs stay open: they reveal no indexed data (``/health`` gives only a status and a
  count), so load balancers and browsers can reach them without the secret.
- **Files are named by id only.** ``/thumb/{id}`` and ``/items/{id}`` resolve the id through the index;
  no path from the client is ever opened. Responses give each item's ``relpath`` (inside the indexed
  folder), never the server's absolute path.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hmac
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import BadImageError, ClipzooError
from . import schemas
from .images import DEFAULT_MAX_PIXELS, decode_base64, decode_image, thumbnail_jpeg
from .metrics import CONTENT_TYPE, ServiceMetrics

log = logging.getLogger("clipzoo.serve")

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_THUMB_SIZE = 256
DEFAULT_TEMPLATE = "a photo of a {}."
OPEN_PATHS = ("/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/favicon.ico")
_ID = re.compile(r"^[0-9]{1,18}$")
_UPLOAD = "\0upload"  # placeholder for a multipart file field while its model is validated


def _is_not_found(exc: BaseException) -> bool:
    try:
        from ..errors import NotFoundError
    except ImportError:  # pragma: no cover - older core
        return False
    return isinstance(exc, NotFoundError)


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int, seen: "int | None" = None):
        size = f" ({seen:,} bytes)" if seen is not None else ""
        super().__init__(413, f"request body too large{size}: the limit is {limit:,} bytes "
                              f"({limit / 2**20:.1f} MiB); send a smaller image (or start the server with "
                              "a larger --max-body-mb)")


# ------------------------------------------------------------------ ASGI middleware
class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: refused up front on ``Content-Length``, and counted as it
    streams (chunked uploads, or a client that lies about its length)."""

    def __init__(self, app: ASGIApp, limit: int, on_reject: Callable[[], None] = lambda: None):
        self.app, self.limit, self.on_reject = app, int(limit), on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, "invalid Content-Length header")
        if declared is not None and declared > self.limit:
            self.on_reject()
            return await _send_json(send, 413, BodyTooLarge(self.limit, declared).detail)
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    self.on_reject()
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no handler turned it into a response
            if started:
                raise
            await _send_json(send, 413, exc.detail)


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts requests by method, route template and status; times them; tracks requests in flight."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        self.metrics.in_flight.add(1)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.add(-1)
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = "/static" if scope.get("path", "").startswith("/static/") else "unmatched"
            self.metrics.requests.inc(method=scope.get("method", ""), route=route, status=str(status[0]))
            self.metrics.latency.observe(time.perf_counter() - t0, route=route)


# ------------------------------------------------------------------ the service state
class Service:
    """What the routes share: the index, its model, the vocabulary, caches, the model thread, metrics."""

    def __init__(self, index: Any, *, labels: "Sequence[str] | str | os.PathLike | None", token: str | None,
                 max_body_bytes: int, thumb_size: int, max_image_pixels: int, template: str,
                 model: Any = None, thumb_cache_items: int = 2048, max_pending: int = 256):
        self.token = token or None
        self.max_body_bytes = int(max_body_bytes)
        self.thumb_size = int(thumb_size)
        self.max_image_pixels = int(max_image_pixels)
        self.template = template
        self.started = time.time()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clipzoo-model")
        self._thumbs: "OrderedDict[tuple, bytes]" = OrderedDict()
        self._thumbs_max = thumb_cache_items
        self._thumbs_lock = threading.Lock()
        self._weights: "OrderedDict[tuple, Any]" = OrderedDict()
        self.max_pending = int(max_pending)
        self._pending = 0  # model-thread jobs queued or running (touched on the event loop only)
        try:
            # open the index (and load its model) once, on the model thread that will use it
            self.index = self._executor.submit(self._open, index, model).result()
            self.model = self._executor.submit(lambda: self.index.model).result()
            self.metrics = ServiceMetrics(items=lambda: self.count)
            self.vocabulary: list[str] = self._executor.submit(self._load_labels, labels).result()
            if self.vocabulary:  # embed the server's vocabulary at start-up, not on the first request
                self._executor.submit(self._classifier, tuple(self.vocabulary), self.template).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    # --- start-up (model thread)
    @staticmethod
    def _open(index: Any, model: Any):
        if isinstance(index, (str, os.PathLike)):
            from ..index import open_index

            path = Path(index)
            if not path.exists():
                raise ClipzooError(f"index {str(path)!r} does not exist; build one with "
                                   f"`clipzoo index build FOLDER --model MODEL --out {path}`")
            if isinstance(model, (str, os.PathLike)):
                import clipzoo

                model = clipzoo.load(os.fspath(model))
            return open_index(path, model=model)
        for attr in ("search_text", "search_embedding", "item", "model"):
            if not hasattr(index, attr):
                raise TypeError(f"create_app needs an index path or a SearchIndex, got {type(index).__name__}")
        return index

    @staticmethod
    def _load_labels(labels: Any) -> list[str]:
        if labels is None:
            return []
        if isinstance(labels, (str, os.PathLike)):
            from ..index import load_vocabulary

            return list(load_vocabulary(labels))
        out = [str(x) for x in labels]
        if not out:
            raise ClipzooError("the label vocabulary is empty; pass at least one label")
        return out

    # --- properties
    @property
    def count(self) -> int:
        return int(self.index.count)

    @property
    def partitions(self) -> list[str]:
        return list(self.index.partitions)

    @property
    def model_name(self) -> str:
        spec = str(getattr(self.index, "model_spec", None) or "")
        if spec and os.path.exists(spec):  # a local model: its name, not the server's path
            return Path(spec).name
        return spec or str(getattr(getattr(self.model, "card", None), "alias", "model"))

    # --- running work off the event loop
    async def on_model_thread(self, op: str, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread; the event loop awaits it without blocking."""
        if self._pending >= self.max_pending:  # shed load instead of queueing without bound
            self.metrics.rejected.inc(reason="busy")
            raise StarletteHTTPException(503, f"the server is busy ({self._pending} requests waiting for the "
                                              "model); retry shortly", headers={"Retry-After": "1"})
        self._pending += 1
        t0 = time.perf_counter()
        try:
            return await asyncio.wrap_future(self._executor.submit(fn, *args))
        finally:
            self._pending -= 1
            self.metrics.inference.observe(time.perf_counter() - t0, op=op)

    async def decode(self, data: "bytes | str", name: str = "image"):
        """Upload bytes or base64 -> RGB PIL image, decoded in a worker thread (BadImageError on failure)."""
        from anyio import to_thread

        def work():
            raw = decode_base64(data, name) if isinstance(data, str) else data
            return decode_image(raw, max_pixels=self.max_image_pixels, name=name)

        try:
            return await to_thread.run_sync(work)
        except BadImageError:
            self.metrics.rejected.inc(reason="bad_image")
            raise

    # --- model-thread work
    def _classifier(self, labels: tuple, template: str):
        key = (labels, template)
        weights = self._weights.get(key)
        if weights is None:
            weights = self.model.classifier(list(labels), [template])
            self._weights[key] = weights
            while len(self._weights) > 16:
                self._weights.popitem(last=False)
        else:
            self._weights.move_to_end(key)
        return weights

    def classify(self, image, labels: tuple, template: str, k: int) -> list[tuple[str, float]]:
        weights = self._classifier(labels, template)
        probs = self.model.probabilities(self.model.similarity(self.model.encode_image([image]), weights))[0]
        top = probs.topk(min(k, len(labels)))
        return [(labels[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]

    def rank(self, image, texts: list[str], truncate: bool):
        logits = self.model.similarity(self.model.encode_image([image]),
                                       self.model.encode_text(texts, truncate=truncate))
        probs = self.model.probabilities(logits)[0]
        return logits[0].tolist(), probs.tolist()

    # --- thumbnails
    def thumbnail(self, item: dict) -> bytes:
        path = item.get("path")
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        if st is None or not os.path.isfile(path):
            raise StarletteHTTPException(404, f"item {item['id']}: its indexed file is gone "
                                              "(moved or deleted since the index was built)")
        size, mtime = item.get("size"), item.get("mtime")
        if (size is not None and int(size) != st.st_size) or (mtime is not None and abs(float(mtime) - st.st_mtime) > 0.01):
            # replaced (or swapped for a link) since it was indexed: not the file the index holds
            raise StarletteHTTPException(404, f"item {item['id']}: its file changed since the index was built; "
                                              "rebuild the index to see it")
        key = (item["id"], st.st_mtime_ns, st.st_size, self.thumb_size)
        with self._thumbs_lock:
            data = self._thumbs.get(key)
            if data is not None:
                self._thumbs.move_to_end(key)
                return data
        try:
            data = thumbnail_jpeg(path, self.thumb_size, max_pixels=self.max_image_pixels)
        except (BadImageError, OSError):  # no detail: it could quote the file's bytes
            raise StarletteHTTPException(404, f"item {item['id']}: no thumbnail, its file cannot be read as "
                                              "an image") from None
        with self._thumbs_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > self._thumbs_max:
                self._thumbs.popitem(last=False)
        return data

    def scrub(self, message: str) -> str:
        """A message for a client: the server's folders (index, indexed root) shown by name only."""
        for attr in ("path", "root"):
            where = getattr(self.index, attr, None)
            if where and str(where) not in ("", "."):
                message = message.replace(str(where), Path(where).name)
        return message

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------ helpers
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _validation_detail(errors: Sequence[dict]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def _clean_errors(errors: Sequence[dict]) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors[:20]]


def _form_list(values: list[str]) -> Any:
    """A list field sent as form data: repeated fields, a JSON list, or one item per line (or comma)."""
    if len(values) > 1:
        return values
    text = values[0].strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    if len(lines) == 1 and "," in lines[0]:
        lines = [x.strip() for x in lines[0].split(",") if x.strip()]
    return lines


async def read_request(request: Request, model: type[BaseModel], *, file_fields: Sequence[str] = ("image",),
                       list_fields: Sequence[str] = ()) -> tuple[Any, dict[str, bytes]]:
    """A JSON body or a multipart form -> (validated model, {file field: bytes}).

    In a form, a file field's bytes are returned aside (not base64) and list fields may be repeated,
    a JSON list, or one item per line.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploads: dict[str, bytes] = {}
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        from starlette.datastructures import UploadFile

        form = await request.form(max_files=8, max_fields=256, max_part_size=max(request.app.state.service.max_body_bytes, 1 << 20))
        data: dict[str, Any] = {}
        grouped: dict[str, list] = {}
        for key, value in form.multi_items():
            grouped.setdefault(key, []).append(value)
        for key, values in grouped.items():
            files = [v for v in values if isinstance(v, UploadFile)]
            if files:
                if key not in file_fields:
                    raise StarletteHTTPException(422, f"invalid request: {key}: files are accepted only in "
                                                      f"{', '.join(file_fields)}")
                uploads[key] = await files[0].read()
                data[key] = _UPLOAD
            elif key in list_fields or key == "embedding":
                data[key] = _form_list([str(v) for v in values])
            else:
                data[key] = values[0]
        await form.close()
    else:
        raw = await request.body()
        if not raw:
            raise StarletteHTTPException(400, f"empty request body: send JSON ({model.__name__}) or a "
                                              "multipart form with an image file")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StarletteHTTPException(400, f"the request body is not valid JSON ({_one_line(exc)})") from None
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
    return parsed, uploads


def _body_doc(model: type[BaseModel], files: Sequence[str] = ("image",)) -> dict:
    """OpenAPI for a body that is JSON or a multipart form (an image file instead of base64)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    form = {k: dict(v) for k, v in schema.get("properties", {}).items()}
    for f in files:
        if f in form:
            form[f] = {"type": "string", "format": "binary", "description": "The image file."}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": form}},
    }}}


def _hit_out(hit: Any) -> dict:
    d = hit.to_dict() if hasattr(hit, "to_dict") else dict(hit)
    d.pop("path", None)
    d["id"] = int(d["id"])
    d["score"] = float(d["score"])
    d["thumb"] = f"thumb/{d['id']}"
    return d


def _item_out(item: dict) -> dict:
    d = {k: v for k, v in dict(item).items() if k != "path"}
    d["id"] = int(d["id"])
    d["thumb"] = f"thumb/{d['id']}"
    return d


def _parse_id(text: str) -> int:
    if not _ID.match(text):
        raise StarletteHTTPException(404, f"no item {text[:40]!r}: ids are whole numbers from search results")
    return int(text)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


# ------------------------------------------------------------------ the app
def create_app(index: Any, *, labels: "Sequence[str] | str | os.PathLike | None" = None, token: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, thumb_size: int = DEFAULT_THUMB_SIZE,
               max_image_pixels: int = DEFAULT_MAX_PIXELS, template: str = DEFAULT_TEMPLATE,
               model: Any = None, max_pending: int = 256) -> FastAPI:
    """The service over ``index`` (a folder built by ``clipzoo index build``, or an open SearchIndex).

    labels: the vocabulary for ``/classify`` (a list, or a vocab .txt/.json file); requests may send
    their own. token: require ``Authorization: Bearer <token>`` on the API. max_body_bytes: the request
    body limit (413 above it). thumb_size: the longer side of thumbnails. max_image_pixels: uploads that
    declare more pixels are refused (decompression bombs). model: a spec or Comparator to use instead
    of the one recorded in the index. max_pending: model jobs allowed to wait at once; more get 503 with
    Retry-After (load shedding instead of an unbounded queue). The index and model load here, once; a
    corrupt or missing index raises :class:`~clipzoo.errors.ClipzooError`.
    """
    if max_body_bytes < 1024:
        raise ClipzooError(f"max_body_bytes must be at least 1024, got {max_body_bytes}")
    if "{}" not in template:
        raise ClipzooError(f"template {template!r} has no '{{}}' for the label")
    service = Service(index, labels=labels, token=token, max_body_bytes=max_body_bytes, thumb_size=thumb_size,
                      max_image_pixels=max_image_pixels, template=template, model=model, max_pending=max_pending)

    app = FastAPI(title="clipzoo", version=__version__,
                  description="Search an image collection by text or image, classify images over a "
                              "vocabulary, embed and rank — with a CLIP-family model. The web page is at `/`.")
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes,
                       on_reject=lambda: service.metrics.rejected.inc(reason="body_too_large"))
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)

    # --- errors: always {"detail": "<one line>"}
    @app.exception_handler(ClipzooError)
    async def _clipzoo_error(request: Request, exc: ClipzooError):
        status = 404 if _is_not_found(exc) else 400
        return JSONResponse({"detail": service.scrub(_one_line(exc))}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        service.metrics.rejected.inc(reason="invalid")
        errors = list(exc.errors())
        return JSONResponse({"detail": _validation_detail(errors), "errors": _clean_errors(errors)},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": exc.detail if isinstance(exc.detail, str) else str(exc.detail)},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)

    # --- auth
    bearer = HTTPBearer(auto_error=False, description="Set when the server was started with --token.")

    async def check_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if service.token is None:
            return
        if credentials is None:
            raise StarletteHTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                                         headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), service.token.encode()):
            raise StarletteHTTPException(401, "wrong bearer token",
                                         headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    protected = [Depends(check_token)]

    # --- open routes
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "style-src 'self'; script-src 'self'; object-src 'none'",
            "X-Content-Type-Options": "nosniff"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    @app.get("/health", response_model=schemas.Health, tags=["service"])
    async def health():
        """Liveness: open without a token; gives only a status and the item count."""
        return {"status": "ok", "items": service.count}

    # --- protected routes
    @app.get("/info", response_model=schemas.Info, dependencies=protected, tags=["service"])
    async def info():
        """The model, the index's size and partitions, the server's vocabulary and limits."""
        return {"model": service.model_name, "embed_dim": int(service.model.embed_dim), "items": service.count,
                "partitions": service.partitions, "vocabulary": service.vocabulary[:1000],
                "vocabulary_size": len(service.vocabulary), "auth": service.token is not None,
                "limits": {"max_body_bytes": service.max_body_bytes, "max_image_pixels": service.max_image_pixels,
                           "max_k": schemas.MAX_K, "thumb_size": service.thumb_size}}

    @app.get("/metrics", dependencies=protected, tags=["service"],
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics():
        """Prometheus metrics (text exposition format 0.0.4)."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/search", response_model=schemas.SearchResponse, dependencies=protected, tags=["search"],
              openapi_extra=_body_doc(schemas.SearchRequest))
    async def search(request: Request):
        """Search the index by text, image (base64 or a multipart file), embedding, or an item's id."""
        t0 = time.perf_counter()
        req, uploads = await read_request(request, schemas.SearchRequest)
        kwargs = {"k": req.k, "partition": req.partition, "dedup": req.dedup}
        idx = service.index
        if req.text is not None:
            kind, hits = "text", await service.on_model_thread("search_text", functools.partial(
                idx.search_text, req.text, **kwargs))
        elif req.image is not None:
            image = await service.decode(uploads.get("image", req.image), "image")
            kind, hits = "image", await service.on_model_thread("search_image", functools.partial(
                idx.search_image, image, **kwargs))
        elif req.embedding is not None:
            dim = int(service.model.embed_dim)
            if len(req.embedding) != dim:
                raise ClipzooError(f"embedding has {len(req.embedding)} values; this index's model "
                                   f"({service.model_name}) makes {dim}")
            kind, hits = "embedding", await service.on_model_thread("search_embedding", functools.partial(
                idx.search_embedding, _vector(req.embedding), **kwargs))
        else:
            def by_id():
                return idx.search_embedding(idx.embedding(req.id), **kwargs)

            kind, hits = "id", await service.on_model_thread("search_id", by_id)
        return {"query": kind, "k": req.k, "partition": req.partition, "took_ms": _ms(t0),
                "hits": [_hit_out(h) for h in hits]}

    @app.post("/classify", response_model=schemas.ClassifyResponse, dependencies=protected, tags=["classify"],
              openapi_extra=_body_doc(schemas.ClassifyRequest))
    async def classify(request: Request):
        """Zero-shot classify one image over the server's vocabulary or the request's labels."""
        t0 = time.perf_counter()
        req, uploads = await read_request(request, schemas.ClassifyRequest, list_fields=("labels",))
        if req.labels is not None:
            labels, source = tuple(_check_texts(req.labels, "labels")), "request"
        elif service.vocabulary:
            labels, source = tuple(service.vocabulary), "server"
        else:
            raise ClipzooError("no labels: send 'labels' in the request, or start the server with "
                               "--labels vocab.txt")
        template = _check_template(req.template or service.template)
        image = await service.decode(uploads.get("image", req.image), "image")
        top = await service.on_model_thread("classify", service.classify, image, labels, template, req.k)
        return {"labels": [{"label": lab, "probability": p} for lab, p in top], "vocabulary": source,
                "took_ms": _ms(t0)}

    @app.post("/embed", response_model=schemas.EmbedResponse, dependencies=protected, tags=["embed"],
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/EmbedRequest"}}}}})
    async def embed(request: Request):
        """Texts or base64 images (JSON) -> embedding vectors (L2-normalised unless ``normalize`` is false)."""
        req, _ = await read_request(request, schemas.EmbedRequest, file_fields=())
        model = service.model
        if req.texts is not None:
            texts = _check_texts(req.texts, "texts")
            feats = await service.on_model_thread("embed_text", functools.partial(
                model.encode_text, texts, normalize=req.normalize, truncate=req.truncate))
            modality = "text"
        else:
            images = [await service.decode(b64, f"images[{i}]") for i, b64 in enumerate(req.images)]
            feats = await service.on_model_thread("embed_image", functools.partial(
                model.encode_image, images, normalize=req.normalize))
            modality = "image"
        return {"modality": modality, "dim": int(feats.shape[1]), "model": service.model_name,
                "embeddings": feats.float().cpu().tolist()}

    @app.post("/rank", response_model=schemas.RankResponse, dependencies=protected, tags=["classify"],
              openapi_extra=_body_doc(schemas.RankRequest))
    async def rank(request: Request):
        """One image, many texts -> the texts ranked with the model's probabilities."""
        t0 = time.perf_counter()
        req, uploads = await read_request(request, schemas.RankRequest, list_fields=("texts",))
        texts = _check_texts(req.texts, "texts")
        image = await service.decode(uploads.get("image", req.image), "image")
        logits, probs = await service.on_model_thread("rank", service.rank, image, texts, req.truncate)
        order = sorted(range(len(texts)), key=lambda i: -logits[i])
        return {"probability": getattr(service.model, "probability", "softmax"), "took_ms": _ms(t0),
                "ranking": [{"text": texts[i], "index": i, "logit": logits[i], "probability": probs[i]}
                            for i in order]}

    async def lookup(item_id: str) -> dict:
        """An item by the id in the URL: 404 for anything that is not an id of this index."""
        number = _parse_id(item_id)
        try:
            return dict(await service.on_model_thread("item", service.index.item, number))
        except ClipzooError as exc:
            if _is_not_found(exc):  # the library's message names the index's path on the server
                raise StarletteHTTPException(404, f"no item with id {number} in this index") from None
            raise

    @app.get("/items/{item_id}", response_model=schemas.Item, dependencies=protected, tags=["items"],
             responses={404: {"description": "No such item"}})
    async def item(item_id: str):
        """An indexed item's metadata (relative path, size, mtime, sha256, caption, partition)."""
        return _item_out(await lookup(item_id))

    @app.get("/thumb/{item_id}", dependencies=protected, tags=["items"],
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "No such item"}})
    async def thumb(item_id: str):
        """A JPEG thumbnail of an indexed file (only indexed files: the id is resolved by the index)."""
        from anyio import to_thread

        data = await to_thread.run_sync(service.thumbnail, await lookup(item_id))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def openapi() -> dict:
        # the request bodies are parsed by hand (JSON or multipart): add their schemas for the docs
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
            components = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (schemas.SearchRequest, schemas.ClassifyRequest, schemas.EmbedRequest,
                          schemas.RankRequest):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _vector(values: list[float]):
    import numpy as np

    return np.asarray(values, dtype=np.float32)


def _check_texts(texts: list[str], field: str) -> list[str]:
    for i, t in enumerate(texts):
        if not t.strip():
            raise ClipzooError(f"{field}[{i}] is empty; send non-empty strings")
        if len(t) > schemas.MAX_TEXT_CHARS:
            raise ClipzooError(f"{field}[{i}] is {len(t)} characters, more than {schemas.MAX_TEXT_CHARS}")
    return list(texts)


def _check_template(template: str) -> str:
    try:
        template.format("label")
    except (KeyError, IndexError, ValueError) as exc:
        raise ClipzooError(f"template {template!r} is not a format string with one '{{}}' "
                           f"({_one_line(exc)})") from None
    if "{}" not in template:
        raise ClipzooError(f"template {template!r} has no '{{}}' for the label")
    return template

