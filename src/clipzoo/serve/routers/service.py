"""The web page and the service's own routes: ``/``, ``/favicon.ico``, ``/health`` (open), ``/info`` and
``/metrics`` (behind the token when there is one). The page's files are mounted at ``/static``."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, Response

from ..deps import ServiceDep, require_token
from ..limits import MAX_K
from ..metrics import CONTENT_TYPE
from ..schemas import Health, Info

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "style-src 'self'; script-src 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
protected = [Depends(require_token)]

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
