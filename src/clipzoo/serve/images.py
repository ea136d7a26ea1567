"""Thumbnails of indexed image files, decoded as safely as uploads (:mod:`clipzoo.image_bytes`)."""
from __future__ import annotations

import io
import os

from ..image_bytes import DEFAULT_MAX_PIXELS, decode_base64, decode_image

__all__ = ["DEFAULT_MAX_PIXELS", "decode_base64", "decode_image", "thumbnail_jpeg"]


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
