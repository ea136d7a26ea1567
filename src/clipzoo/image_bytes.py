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

from .constants import DEFAULT_MAX_PIXELS, MAX_ASPECT_RATIO
from .errors import BadImageError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageTooLargeError", "decode_base64", "decode_image", "decode_rgb", "image_size",
           "orientation", "upright", "aspect_box", "within_aspect"]

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
            raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise BadImageError(f"{field}: not valid base64; encode the image file's bytes with base64 "
                                "(a data: URL is accepted too)") from None
    if not raw:
        raise BadImageError(f"{field}: the image is empty (0 bytes)")
    return raw


class ImageTooLargeError(BadImageError):
    """An image (or a request's images together) declaring more pixels than allowed: the service's 413."""


_ORIENTATION_TAG = 0x0112  # EXIF orientation; 1 is upright, 2-8 each need a flip or rotation to display


def orientation(im) -> int:
    """The EXIF orientation (1-8) an image file declares; 1 (upright) when it has none or it is unreadable."""
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: keep the pixels as stored
        return 1
    return value if 1 <= value <= 8 else 1


def upright(im, turn: int | None = None):
    """``im`` turned as its EXIF orientation (or ``turn``) says — a phone's rotated JPEG — or ``im`` itself
    when upright. Applied by every decode (:func:`decode_rgb`), so an index build, a library call and a
    query to the service see the same pixels."""
    from PIL import Image

    methods = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
               7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    method = methods.get(orientation(im) if turn is None else turn)
    return im.transpose(method) if method is not None else im


def within_aspect(im):
    """``im``, or its central part when one side is more than :data:`~clipzoo.constants.MAX_ASPECT_RATIO` times
    the other (applied by every decode, so an index build and a query see the same pixels). The models' eval
    transforms resize the shortest side to their input size before they crop the centre: a 100,000 × 1 image
    would be resized to gigapixels first; its central 32 : 1 part holds the square they keep."""
    box = aspect_box(*im.size)
    return im if box is None else im.crop(box)


def aspect_box(width: int, height: int) -> "tuple[int, int, int, int] | None":
    """The (left, top, right, bottom) :func:`within_aspect` keeps of a ``width`` × ``height`` image; None: all."""
    if width > MAX_ASPECT_RATIO * height:
        left = (width - MAX_ASPECT_RATIO * height) // 2
        return left, 0, left + MAX_ASPECT_RATIO * height, height
    if height > MAX_ASPECT_RATIO * width:
        top = (height - MAX_ASPECT_RATIO * width) // 2
        return 0, top, width, top + MAX_ASPECT_RATIO * width
    return None


def decode_rgb(source, draft_size: int | None = None, *, reduce: bool = False):
    """A path or binary file object -> RGB PIL image, EXIF orientation applied; PIL's errors propagate.

    ``draft_size``: for a JPEG whose sides are both at least twice this, the decoder scales down by 2, 4
    or 8 while decoding (PIL's draft mode) so that both sides stay ≥ ``draft_size``. Other formats are
    decoded whole; with ``reduce`` (an index build, the service) they are then reduced by a whole factor
    while both sides stay ≥ ``draft_size``, so a decoded image holds about the pixels the model needs."""
    from PIL import Image

    with Image.open(source) as im:
        if draft_size and im.format == "JPEG":
            im.draft("RGB", (int(draft_size), int(draft_size)))
        im.load()
        return _finish(im, draft_size if reduce else None)


def _finish(im, draft_size: int | None):
    """A loaded image -> RGB, reduced (PIL's ``reduce``: box average by a whole factor) while both sides
    stay ≥ ``draft_size`` — the drafted JPEG's equivalent for other formats, so a decoded upload holds
    about the pixels the model needs, not the file's — and turned upright (EXIF)."""
    factor = min(im.size) // int(draft_size) if draft_size else 1
    reduced = im
    if factor >= 2:
        reduced = (im if im.mode in ("RGB", "L") else im.convert("RGB")).reduce(factor)
    turned = within_aspect(upright(reduced, orientation(im)))
    return turned.convert("RGB") if turned.mode != "RGB" or turned is im else turned


def image_size(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> tuple[int, int]:
    """``(width, height)`` from the header of untrusted image bytes, decoding no pixel; a
    :class:`BadImageError` when it cannot be read, :class:`ImageTooLargeError` above ``max_pixels``."""
    im = _open(data, name, max_pixels)
    try:
        return _checked_size(im, name, max_pixels)
    finally:
        im.close()


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image",
                 draft_size: int | None = None):
    """Untrusted bytes -> an RGB PIL image (EXIF orientation applied), or :class:`BadImageError` naming
    what is wrong.

    ``max_pixels``: images whose header declares more pixels are refused before decoding
    (:class:`ImageTooLargeError`: a decompression bomb, a small file that would expand to gigabytes).
    ``draft_size``: let JPEG decode at a reduced scale when only about this many pixels per side are
    needed (thumbnails, small models), as an index build does.
    """
    from PIL import Image

    im = _open(data, name, max_pixels)
    try:
        width, height = _checked_size(im, name, max_pixels)
        if draft_size and im.format == "JPEG":
            im.draft("RGB", (draft_size, draft_size))
        try:
            im.seek(0)
            im.load()
            return _finish(im, draft_size)
        except Image.DecompressionBombError:
            raise _bomb(name, (width, height), max_pixels) from None
        except MemoryError:
            raise ImageTooLargeError(f"{name}: the image is too large to decode ({width}×{height})") from None
        except Exception as exc:  # noqa: BLE001
            what = "truncated" if "truncated" in str(exc).lower() else "corrupt"
            raise BadImageError(f"{name}: the {im.format or 'image'} file is {what} and cannot be decoded "
                                f"({exc.__class__.__name__}: {exc}); upload the complete file") from None
    finally:
        im.close()


def _open(data: bytes, name: str, max_pixels: int):
    """Pillow's lazy open of untrusted bytes (reads the header only)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadImageError(f"{name}: the image is empty (0 bytes); upload an image file")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _bomb(name, None, max_pixels) from None
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image Pillow can read ({len(data)} bytes, starting "
                            f"{_head(data)}); upload a JPEG, PNG, WebP, GIF or BMP file") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes is a bad image
        raise BadImageError(f"{name}: the image header cannot be read ({exc.__class__.__name__}: {exc}); "
                            "is the file corrupt?") from None


def _checked_size(im, name: str, max_pixels: int) -> tuple[int, int]:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise BadImageError(f"{name}: the image has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise _bomb(name, (width, height), max_pixels)
    return width, height


def _bomb(name: str, size: "tuple[int, int] | None", max_pixels: int) -> ImageTooLargeError:
    dims = f"{size[0]}×{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return ImageTooLargeError(f"{name}: the image declares {dims}, more than the limit of {max_pixels:,} "
                              "(a decompression bomb?); upload a smaller image")


def _head(data: bytes) -> str:
    head = data[:8]
    return repr(head.decode("latin-1")) if head.isascii() and head.decode("latin-1").isprintable() else head.hex()
