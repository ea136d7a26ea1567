"""The embedding path's JPEG decode (issue 22 §4): the fastest decoder that decodes identically enough.

Measured in ``benchmarks/decode.py`` (``results/decode.json``), against PIL's full decode, by the min cosine of
the embeddings (usable at >= 0.9999): libjpeg-turbo through ``simplejpeg`` decodes the same pixels as Pillow,
faster; DCT scaling (PIL's draft mode, libjpeg-turbo's scaled decode) is several times faster on large
photos, but when it brings an image down close to the model's input size (640×480 -> 320×240 for a 224 model)
the cosine falls to ~0.9998 — and libjpeg-turbo's scales other than 1/2, 1/4, 1/8 are worse still. So:

- a JPEG is decoded by ``simplejpeg`` when it is installed (``pip install 'clipzoo[decode]'``), else by PIL;
- with ``min_side`` (fast decoding), scaled by the largest power of two (1/2, 1/4, 1/8) that keeps both
  sides >= :data:`SCALE_MARGIN` × ``min_side``, else decoded whole;
- the EXIF orientation is applied, as every clipzoo decode does; CMYK JPEGs (PIL converts them its own way)
  and anything ``simplejpeg`` cannot decode go to PIL, whose errors name the file.
"""
from __future__ import annotations

import io
import os
from functools import lru_cache

from ..image_bytes import orientation, upright
from ..inputs import open_image

__all__ = ["SCALE_MARGIN", "decoder_name", "dct_scale", "decode_file", "decode_bytes", "is_jpeg", "exif_turn"]

SCALE_MARGIN = 2  # DCT-scaled sides stay >= this × the input: min cosine 0.99992 (results/decode.json)
JPEG_MAGIC = b"\xff\xd8\xff"


@lru_cache(maxsize=1)
def decoder_name() -> str:
    """``"simplejpeg"`` when it imports (libjpeg-turbo, no Python-side copies), else ``"pil"``."""
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return "pil"
    return "simplejpeg"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def dct_scale(width: int, height: int, min_side: "int | None") -> int:
    """The JPEG decode's downscale divisor (1, 2, 4 or 8): the largest keeping both sides >= SCALE_MARGIN × min_side."""
    if not min_side:
        return 1
    need = SCALE_MARGIN * int(min_side)
    for div in (8, 4, 2):
        if -(-width // div) >= need and -(-height // div) >= need:
            return div
    return 1


def exif_turn(data: bytes) -> int:
    """The EXIF orientation of JPEG bytes (1 when none): PIL reads it only when an Exif block is there."""
    if b"Exif\x00\x00" not in data[:65536]:
        return 1
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return orientation(im)


def decode_bytes(data: bytes, min_side: "int | None" = None):
    """JPEG bytes -> an upright RGB PIL image (see the module docstring); non-JPEG bytes, CMYK JPEGs and
    anything simplejpeg refuses go to PIL."""
    from PIL import Image

    if is_jpeg(data) and decoder_name() == "simplejpeg":
        try:
            import simplejpeg

            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            if colorspace in ("YCbCr", "Gray", "RGB"):  # CMYK / YCCK: PIL converts them its own way
                div = dct_scale(w, h, min_side)
                kw = {"min_width": -(-w // div), "min_height": -(-h // div)} if div > 1 else {}
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", **kw)
                return upright(Image.fromarray(rgb), exif_turn(data))
        except (ValueError, RuntimeError, OSError):  # a truncated file: PIL decodes what it can or says why
            pass
    im = Image.open(io.BytesIO(data))  # reads the header only: size, format, EXIF
    (w, h), turn = im.size, orientation(im)
    div = dct_scale(w, h, min_side) if im.format == "JPEG" else 1
    if div > 1:
        im.draft("RGB", (w // div, h // div))  # PIL's draft: the largest power of two with sides >= these
    im.load()
    return upright(im.convert("RGB") if im.mode != "RGB" else im, turn)


def decode_file(path: "str | os.PathLike", min_side: "int | None" = None):
    """An image file -> upright RGB PIL image: JPEGs through :func:`decode_bytes`; other formats, and
    files that fail, through :func:`clipzoo.inputs.open_image` (its :class:`BadImageError` names the file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return open_image(path)
    if not is_jpeg(data):
        return open_image(path)
    try:
        return decode_bytes(data, min_side)
    except Exception:  # noqa: BLE001 - a broken JPEG: the reference decoder reports it, naming the file
        return open_image(path)
