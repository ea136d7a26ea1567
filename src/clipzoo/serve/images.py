"""Thumbnails of indexed image files, decoded as safely as uploads (:mod:`clipzoo.image_bytes`).

:class:`ThumbnailCache` serves only the file an index item names, only when its real path is inside the
index's root and it is a regular file, and only while it is the file that was indexed: gone, replaced or
unreadable files are a 404 whose message quotes nothing of the file.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence

from starlette.exceptions import HTTPException as StarletteHTTPException

from ..constants import DEFAULT_MAX_PIXELS
from ..errors import BadImageError
from ..image_bytes import decode_base64, decode_image
from ..index.folder import inside
from ..video import BadVideoError, poster_jpeg

__all__ = ["DEFAULT_MAX_PIXELS", "ThumbnailCache", "decode_base64", "decode_image", "release_freed_memory",
           "thumbnail_jpeg"]


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand memory freed by large decodes back to the system (glibc keeps it in its arenas otherwise, so
    the server's RSS would stay hundreds of MB above idle after a burst of large uploads)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def thumbnail_jpeg(path: "str | os.PathLike", size: int = 256, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   quality: int = 85) -> bytes:
    """An indexed image file -> JPEG bytes of at most ``size`` pixels on its longer side."""
    from PIL import Image

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # a link swapped in since the check: refused
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BadImageError(f"{os.path.basename(os.fspath(path))}: not a regular file")
        data = f.read()
    im = decode_image(data, max_pixels=max_pixels, name=os.path.basename(os.fspath(path)), draft_size=size)
    im.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


class ThumbnailCache:
    """JPEG thumbnails of indexed files, the last ``max_items`` kept in memory (thread-safe)."""

    def __init__(self, size: int, max_pixels: int, max_items: int = 2048,
                 roots: "Sequence[str | os.PathLike]" = ()):
        self.size, self.max_pixels, self.max_items = int(size), int(max_pixels), int(max_items)
        self.roots = tuple(os.path.realpath(r) for r in roots)  # files are served only from inside these
        self._data: "OrderedDict[tuple, bytes]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, item: dict) -> bytes:
        """The thumbnail of an index item (a dict with ``id``, ``path``, ``size``, ``mtime``); 404 when its
        file is gone, changed since indexing, or not an image."""
        real, st = self._indexed_file(item)
        key = (item["id"], st.st_mtime_ns, st.st_size, self.size, item.get("timestamp"))
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
                return data
        try:
            data = (poster_jpeg(real, self.size, float(item["timestamp"])) if item.get("timestamp") is not None
                    else thumbnail_jpeg(real, self.size, max_pixels=self.max_pixels))  # a video row: its poster
        except (BadImageError, BadVideoError, OSError):  # no detail: it could quote the file's bytes
            raise StarletteHTTPException(404, f"item {item['id']}: no thumbnail, its file cannot be read as "
                                              "an image") from None
        with self._lock:
            self._data[key] = data
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)
        return data

    def indexed_file(self, item: dict) -> tuple[str, os.stat_result]:
        """The item's checked file (real path, stat), as :meth:`get` reads it; 404 otherwise (``/video``)."""
        return self._indexed_file(item)

    def _indexed_file(self, item: dict) -> tuple[str, os.stat_result]:
        """The item's file's real path and stat, when it is inside an indexed root, a regular file, and
        still the file the index holds (else 404)."""
        path = item.get("path")
        real = os.path.realpath(path) if path else ""
        if not real or not any(inside(real, root) for root in self.roots):
            raise StarletteHTTPException(404, f"item {item['id']}: its file is not inside the indexed folder "
                                              "(a link out of it); not served")
        try:
            st = os.stat(real)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise StarletteHTTPException(404, f"item {item['id']}: its indexed file is gone "
                                              "(moved or deleted since the index was built)")
        size, mtime = item.get("size"), item.get("mtime")
        moved = mtime is not None and abs(float(mtime) - st.st_mtime) > 0.01
        if (size is not None and int(size) != st.st_size) or moved:
            # replaced (or swapped for a link) since it was indexed: not the file the index holds
            raise StarletteHTTPException(404, f"item {item['id']}: its file changed since the index was built; "
                                              "rebuild the index to see it")
        return real, st
