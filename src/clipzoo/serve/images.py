"""Thumbnails of indexed image files, decoded as safely as uploads (:mod:`clipzoo.image_bytes`).

:class:`ThumbnailCache` serves only the file an index item names, and only while it is the file that
was indexed: gone, replaced or unreadable files are a 404 whose message quotes nothing of the file.
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict

from starlette.exceptions import HTTPException as StarletteHTTPException

from ..constants import DEFAULT_MAX_PIXELS
from ..errors import BadImageError
from ..image_bytes import decode_base64, decode_image

__all__ = ["DEFAULT_MAX_PIXELS", "ThumbnailCache", "decode_base64", "decode_image", "thumbnail_jpeg"]


def thumbnail_jpeg(path: "str | os.PathLike", size: int = 256, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   quality: int = 85) -> bytes:
    """An indexed image file -> JPEG bytes of at most ``size`` pixels on its longer side."""
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    im = decode_image(data, max_pixels=max_pixels, name=os.path.basename(os.fspath(path)), draft_size=size)
    im.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


class ThumbnailCache:
    """JPEG thumbnails of indexed files, the last ``max_items`` kept in memory (thread-safe)."""

    def __init__(self, size: int, max_pixels: int, max_items: int = 2048):
        self.size, self.max_pixels, self.max_items = int(size), int(max_pixels), int(max_items)
        self._data: "OrderedDict[tuple, bytes]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, item: dict) -> bytes:
        """The thumbnail of an index item (a dict with ``id``, ``path``, ``size``, ``mtime``); 404 when its
        file is gone, changed since indexing, or not an image."""
        st = self._indexed_file(item)
        key = (item["id"], st.st_mtime_ns, st.st_size, self.size)
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
                return data
        try:
            data = thumbnail_jpeg(item["path"], self.size, max_pixels=self.max_pixels)
        except (BadImageError, OSError):  # no detail: it could quote the file's bytes
            raise StarletteHTTPException(404, f"item {item['id']}: no thumbnail, its file cannot be read as "
                                              "an image") from None
        with self._lock:
            self._data[key] = data
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)
        return data

    @staticmethod
    def _indexed_file(item: dict) -> os.stat_result:
        """The item's file's stat, when it is still the file the index holds (else 404)."""
        path = item.get("path")
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        if st is None or not os.path.isfile(path):
            raise StarletteHTTPException(404, f"item {item['id']}: its indexed file is gone "
                                              "(moved or deleted since the index was built)")
        size, mtime = item.get("size"), item.get("mtime")
        moved = mtime is not None and abs(float(mtime) - st.st_mtime) > 0.01
        if (size is not None and int(size) != st.st_size) or moved:
            # replaced (or swapped for a link) since it was indexed: not the file the index holds
            raise StarletteHTTPException(404, f"item {item['id']}: its file changed since the index was built; "
                                              "rebuild the index to see it")
        return st
