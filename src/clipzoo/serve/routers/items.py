"""``GET /items/{id}`` and ``GET /thumb/{id}``: files are named by id only.

The id is resolved through the index; no path from the client is ever opened. Responses give each
item's ``relpath`` (inside the indexed folder), never the server's absolute path.
"""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from ..deps import IndexedItem, ServiceDep, require_token
from ..schemas import Item, item_out

router = APIRouter(tags=["items"], dependencies=[Depends(require_token)],
                   responses={404: {"description": "No such item"}})


@router.get("/items/{item_id}", response_model=Item)
async def item(entry: IndexedItem):
    """An indexed item's metadata (relative path, size, mtime, sha256, caption, partition)."""
    return item_out(entry)


@router.get("/thumb/{item_id}", responses={200: {"content": {"image/jpeg": {}}}})
async def thumb(entry: IndexedItem, service: ServiceDep):
    """A JPEG thumbnail of an indexed file (only indexed files: the id is resolved by the index)."""
    return Response(await service.thumbnail(entry), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})
