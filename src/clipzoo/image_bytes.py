"""Safe decoding of untrusted image bytes: uploads to the service, base64 fields, bytes passed to the library.

Every failure a client can cause — empty body, bad base64, a non-image, a corrupt or truncated file,
a decompression bomb — raises :class:`~clipzoo.errors.BadImageError` with a message saying what was
wrong, which the service turns into a 4xx answer. Nothing here changes Pillow's global settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``): the pixel limit is checked from
the header, before any pixel is decoded, against this module's own limit.
"""
from __future__ import annotations

import base64
import binascii
import io
import re

from .constants import DEFAULT_MAX_PIXELS
from .errors import BadImageError

__all__ = ["DEFAULT_MAX_PIXELS", "decode_base64", "decode_image"]

#: default most pixels (width × height) an upload may have: 40 Mpx, ~6300×6300, ~120 MB as RGB.
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def decode_base64(data: str, field: str = "image") -> bytes:
    """A base64 string (optionally a ``data:image/…;base64,`` URL) -> bytes; BadImageError if invalid."""
    if not isinstance(data, str):
        raise BadImageError(f"{field}: expected a base64 string, got {type(data).__name__}")
    text = _DATA_URL.sub("", data.strip(), count=1)
    text = "".join(text.split())  # line breaks from encoders that wrap at 76 columns
    if not text:
        raise BadImageError(f"{field}: the image is empty (0 bytes); send the file's bytes, base64-encoded")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        try:  # URL-safe alphabet ("-" and "_")
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise BadImageError(f"{field}: not valid base64; encode the image file's bytes with base64 "
                                "(a data: URL is accepted too)") from None
    if not raw:
        raise BadImageError(f"{field}: the image is empty (0 bytes)")
    return raw


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image",
                 draft_size: int | None = None):
    """Untrusted bytes -> an RGB PIL image, or :class:`BadImageError` naming what is wrong.

    ``max_pixels``: images whose header declares more pixels are refused before decoding (a
    decompression bomb: a small file that would expand to gigabytes). ``draft_size``: let JPEG decode
    at a reduced scale when only about this many pixels per side are needed (thumbnails, small models).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadImageError(f"{name}: the image is empty (0 bytes); upload an image file")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _bomb(name, None, max_pixels) from None
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image Pillow can read ({len(data)} bytes, starting "
                            f"{_head(data)}); upload a JPEG, PNG, WebP, GIF or BMP file") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes is a bad image
        raise BadImageError(f"{name}: the image header cannot be read ({exc.__class__.__name__}: {exc}); "
                            "is the file corrupt?") from None
    try:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise BadImageError(f"{name}: the image has no pixels ({width}×{height})")
        if width * height > max_pixels:
            raise _bomb(name, (width, height), max_pixels)
        if draft_size and im.format == "JPEG":
            im.draft("RGB", (draft_size, draft_size))
        try:
            im.seek(0)
            im.load()
            rgb = im.convert("RGB")
        except BadImageError:
            raise
        except Image.DecompressionBombError:
            raise _bomb(name, (width, height), max_pixels) from None
        except MemoryError:
            raise BadImageError(f"{name}: the image is too large to decode ({width}×{height})") from None
        except Exception as exc:  # noqa: BLE001
            what = "truncated" if "truncated" in str(exc).lower() else "corrupt"
            raise BadImageError(f"{name}: the {im.format or 'image'} file is {what} and cannot be decoded "
                                f"({exc.__class__.__name__}: {exc}); upload the complete file") from None
        return rgb
    finally:
        im.close()


def _bomb(name: str, size: "tuple[int, int] | None", max_pixels: int) -> BadImageError:
    dims = f"{size[0]}×{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return BadImageError(f"{name}: the image declares {dims}, more than the limit of {max_pixels:,} "
                         "(a decompression bomb?); upload a smaller image")


def _head(data: bytes) -> str:
    head = data[:8]
    return repr(head.decode("latin-1")) if head.isascii() and head.decode("latin-1").isprintable() else head.hex()
