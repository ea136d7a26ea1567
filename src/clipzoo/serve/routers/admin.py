"""``POST /admin/reload``: switch to the index's published generation now (the server also follows it by
itself, :mod:`clipzoo.serve.live`). Behind the token; 403 when the server has none."""
from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Depends

from ..deps import ServiceDep, require_token
from .items import Writable

router = APIRouter(tags=["admin"], dependencies=[Depends(require_token)])


@router.post("/admin/reload", responses={403: {"description": "The server has no token"}})
async def reload(service: ServiceDep, _: Writable):
    """Serve the index's newest published generation: ``{"generation", "changed"}``."""
    return await to_thread.run_sync(service.live.reload)
