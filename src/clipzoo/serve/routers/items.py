"""``GET /items/{id}`` and ``GET /thumb/{id}``: files are named by id only; ``POST /items`` and
``DELETE /items/{id}``: writes, behind the token.

The id is resolved through the index; no path from the client is ever opened for reading an item.
Responses give each item's ``relpath`` (inside the indexed folder), never the server's absolute path.
A write (an uploaded image, or a ``path`` to an image already inside the indexed folder, with an
optional caption) is committed and fsynced, published as a new generation and switched to before the
200 (:mod:`clipzoo.serve.live`): the next search finds it, and it survives a crash of the server.
"""
from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...image_bytes import decode_base64
from ...index.folder import MAX_CAPTION_BYTES
from ...index.lock import IndexBusyError
from ..bodies import JsonOrFormRoute, form_doc
from ..deps import IndexedItem, ServiceDep, Uploads, require_token
from ..schemas import Base64Image, Item, RequestBody, item_out

router = APIRouter(tags=["items"], dependencies=[Depends(require_token)],
                   responses={404: {"description": "No such item"}})
writes = APIRouter(tags=["items"], route_class=JsonOrFormRoute, dependencies=[Depends(require_token)])


async def require_writable(service: ServiceDep) -> None:
    """Writes need a server started with a token (403 otherwise)."""
    if service.token is None:
        raise StarletteHTTPException(403, "writes are disabled: start the server with --token (or CLIPZOO_TOKEN) "
                                          "to allow POST /items and DELETE /items")


Writable = Annotated[None, Depends(require_writable)]


class AddItemRequest(RequestBody):
    """Exactly one of ``image`` (base64, or a multipart file) and ``path`` (an image inside the indexed folder)."""

    image: str | None = Field(None, min_length=1, description=Base64Image.description)
    path: str | None = Field(None, min_length=1, max_length=4096,
                             description="An image file inside the indexed folder (relative to it, or absolute).")
    caption: str | None = Field(None, max_length=MAX_CAPTION_BYTES)

    @model_validator(mode="after")
    def _one_source(self) -> "AddItemRequest":
        if (self.image is None) == (self.path is None):
            raise ValueError("send exactly one of 'image' (an upload) and 'path' (a file inside the indexed folder)")
        return self


@router.get("/items/{item_id}", response_model=Item)
async def item(entry: IndexedItem):
    """An indexed item's metadata (relative path, size, mtime, sha256, caption, partition)."""
    return item_out(entry)


@router.get("/thumb/{item_id}", responses={200: {"content": {"image/jpeg": {}}}})
async def thumb(entry: IndexedItem, service: ServiceDep):
    """A JPEG thumbnail of an indexed file (only indexed files: the id is resolved by the index)."""
    return Response(await service.thumbnail(entry), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


@writes.post("/items", openapi_extra=form_doc(AddItemRequest),
             responses={403: {"description": "The server has no token: writes are disabled"},
                        409: {"description": "Another writer holds the index"}})
async def add_item(body: AddItemRequest, uploads: Uploads, service: ServiceDep, _: Writable):
    """Add an image to the index: an upload (saved under ``uploads/`` in the indexed folder) or a ``path``
    inside the indexed folder, with an optional caption. Durable and searchable when it answers:
    ``{"id", "relpath", "generation"}``."""
    live = service.live
    if body.path is not None:
        rel, data = await to_thread.run_sync(live.resolve_path, body.path)
    else:
        rel, given = None, uploads.get("image", body.image)
        data = decode_base64(given, "image") if isinstance(given, str) else given
    image = await service.decode(data, "image")
    model = service.model
    vector = await service.on_model_thread("add_item", lambda: model.encode_image(
        [image], normalize=True)[0].float().cpu().numpy())
    try:
        return await to_thread.run_sync(live.add, rel, data, vector, body.caption)
    except IndexBusyError as exc:
        raise StarletteHTTPException(409, service.scrub(str(exc))) from None


@router.delete("/items/{item_id}", responses={403: {"description": "The server has no token: writes are disabled"},
                                              409: {"description": "Another writer holds the index"}})
async def delete_item(entry: IndexedItem, service: ServiceDep, _: Writable):
    """Remove an item from the index (and its file, when it was uploaded): ``{"id", "deleted", "generation"}``."""
    try:
        return await to_thread.run_sync(service.live.delete, int(entry["id"]))
    except IndexBusyError as exc:
        raise StarletteHTTPException(409, service.scrub(str(exc))) from None
