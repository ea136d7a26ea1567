"""The web page and the service's own routes: ``/``, ``/favicon.ico``, ``/health`` (open), ``/info`` and
``/metrics`` (behind the token when there is one). The page's script and style sheet are mounted at ``/static``
(:class:`PageFiles`: those two files only; the page itself is ``/``, with :data:`PAGE_HEADERS`)."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from ..deps import ServiceDep, require_token
from ..limits import MAX_K
from ..metrics import CONTENT_TYPE
from ..schemas import Health, Info

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE_FILES = frozenset({"app.js", "style.css"})
"""What ``/static`` serves: the page's script and style sheet (never ``index.html`` without its headers)."""
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # blob: images and media: with a token, thumbnails and videos are fetched with the header and shown as blobs
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a ?token= the page was opened with never leaves in a Referer
}
protected = [Depends(require_token)]


class PageFiles(StaticFiles):
    """``/static``: the files of :data:`PAGE_FILES` only (404 for anything else)."""

    async def get_response(self, path: str, scope: Scope):
        if path not in PAGE_FILES:
            raise StarletteHTTPException(404, f"no page file {path[:100]!r}")
        return await super().get_response(path, scope)


router = APIRouter(tags=["service"])


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon():
    return Response(status_code=204)


@router.get("/health", response_model=Health)
async def health(service: ServiceDep):
    """Liveness: open without a token; gives only a status, the item count and the model's name."""
    return {"status": "ok", "items": service.count, "model": service.model_name}


@router.get("/info", response_model=Info, dependencies=protected)
async def info(service: ServiceDep):
    """The model, the index's size and partitions, the server's vocabulary and limits."""
    return {"model": service.model_name, "embed_dim": int(service.model.embed_dim), "items": service.count,
            "partitions": service.partitions, "vocabulary": service.vocabulary[:1000],
            "vocabulary_size": len(service.vocabulary), "auth": service.token is not None,
            "limits": {"max_body_bytes": service.max_body_bytes, "max_image_pixels": service.max_image_pixels,
                       "max_request_pixels": service.max_request_pixels,
                       "max_k": MAX_K, "thumb_size": service.thumb_size}}


@router.get("/metrics", dependencies=protected,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(service: ServiceDep):
    """Prometheus metrics (text exposition format 0.0.4)."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
