"""``GET /video/{id}``: the video file of an indexed video row, for the page's ``<video>`` player.

Like ``/thumb/{id}``, the file is named by id only and resolved through the index: it must be inside the indexed
folder, a regular file, and still the file that was indexed (404 otherwise). Byte ranges are served (seeking,
and ``#t=START`` playing from a segment's start). An image row has no video: 404.
"""
from __future__ import annotations

import os

from anyio import to_thread
from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...index.videos import is_video_key
from ..deps import IndexedItem, ServiceDep, require_token

router = APIRouter(tags=["items"], dependencies=[Depends(require_token)],
                   responses={404: {"description": "No such video item"}})

MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
               ".avi": "video/x-msvideo", ".mov": "video/quicktime"}


@router.get("/video/{item_id}", responses={200: {"content": {"video/mp4": {}, "video/webm": {}}}})
async def video(entry: IndexedItem, service: ServiceDep):
    """The indexed video file of a video row (whole-video or segment row), with byte-range support."""
    if not is_video_key(str(entry.get("relpath") or "")):
        raise StarletteHTTPException(404, f"item {entry['id']} is not a video; its image is at thumb/{entry['id']}")
    real, _ = await to_thread.run_sync(service.thumbnails.indexed_file, entry)
    suffix = os.path.splitext(real)[1].lower()
    return FileResponse(real, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
                        headers={"Cache-Control": "private, max-age=3600"})
