"""The embedding path's JPEG decode (issue 22 §4): the fastest decoder that decodes identically enough.

Measured in ``benchmarks/decode.py`` (``results/decode.json``), against PIL's full decode, by the min cosine of
the embeddings (usable at >= 0.9999): libjpeg-turbo through ``simplejpeg`` decodes the same pixels as Pillow,
faster; DCT scaling (PIL's draft mode, libjpeg-turbo's scaled decode) is several times faster on large
photos, but when it brings an image down close to the model's input size (640×480 -> 320×240 for a 224 model)
the cosine falls to ~0.9998 — and libjpeg-turbo's scales other than 1/2, 1/4, 1/8 are worse still. So:

- a JPEG is decoded by ``simplejpeg`` when it is installed (``pip install 'clipzoo[decode]'``), else by PIL;
- with ``min_side`` (fast decoding), scaled by the largest power of two (1/2, 1/4, 1/8) that keeps both
  sides >= :data:`SCALE_MARGIN` × ``min_side``, else decoded whole;
- other formats (PNG, WebP, …) are decoded whole by PIL and, with ``min_side``, reduced by the same divisor
  (PIL's ``reduce``: a box average, the DCT scaling's equivalent), so a large upload holds about the pixels the
  model needs;
- the EXIF orientation is applied, as every clipzoo decode does; CMYK JPEGs (PIL converts them its own way),
  JPEGs whose header declares more pixels than PIL allows (``simplejpeg`` has no limit: it would allocate the
  declared size; PIL refuses them from the header as decompression bombs) and anything ``simplejpeg`` cannot
  decode go to PIL, whose errors name the file;
- a file is decoded once (:func:`decode_file`: the decoder's error is the one line), and read whole only when
  bounded (:func:`read_image`: up to :data:`READ_WHOLE_BYTES`, or up to that plus :data:`BYTES_PER_PIXEL` per pixel
  its header declares), so a padded or garbage file costs neither its size in memory nor a decoder's crawl.

This is the one decoder of every image the model sees by path or bytes: ``clipzoo embed`` (its decode
workers), ``clipzoo index build`` (:class:`clipzoo.index.folder.IndexFiles`) and the service's image queries
(:func:`decode_upload`, which first checks the header against the pixel limit): an image indexed and the same
image sent to ``/search`` decode to the same pixels, so to the same vector.
"""
from __future__ import annotations

import io
import os
import stat
from functools import lru_cache

from ..errors import BadImageError
from ..image_bytes import ImageTooLargeError, image_size, orientation, upright, within_aspect
from ..inputs import open_image

__all__ = ["SCALE_MARGIN", "decoder_name", "dct_scale", "decode_file", "decode_bytes", "decode_upload", "is_jpeg",
           "exif_turn", "within_pil_limit", "read_image", "declared_pixels", "undecodable", "READ_WHOLE_BYTES",
           "BYTES_PER_PIXEL"]

SCALE_MARGIN = 2  # DCT-scaled sides stay >= this × the input: min cosine 0.99992 (results/decode.json)
JPEG_MAGIC = b"\xff\xd8\xff"

READ_WHOLE_BYTES = 16 << 20
"""An image file (or tar member) up to this size is read whole; a larger one only when :func:`read_image` finds
that its header declares enough pixels to need it."""

BYTES_PER_PIXEL = 32
"""Most bytes an image file may hold per pixel its header declares, beyond :data:`READ_WHOLE_BYTES`: float32 RGBA
(a TIFF's largest) is 16; an incompressible JPEG's coefficients stay below 10."""


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
    """Image bytes -> an upright RGB PIL image (see the module docstring): JPEGs by simplejpeg; other formats,
    CMYK JPEGs, JPEGs past PIL's pixel limit (:func:`within_pil_limit`) and anything simplejpeg refuses by PIL."""
    from PIL import Image

    if is_jpeg(data) and decoder_name() == "simplejpeg":
        try:
            import simplejpeg

            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            # CMYK / YCCK: PIL converts them its own way; past PIL's pixel limit PIL refuses it as a bomb
            if colorspace in ("YCbCr", "Gray", "RGB") and within_pil_limit(w, h):
                div = dct_scale(w, h, min_side)
                kw = {"min_width": -(-w // div), "min_height": -(-h // div)} if div > 1 else {}
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", **kw)
                return within_aspect(upright(Image.fromarray(rgb), exif_turn(data)))
        except (ValueError, RuntimeError, OSError):  # a truncated file: PIL decodes what it can or says why
            pass
    im = Image.open(io.BytesIO(data))  # reads the header only: size, format, EXIF
    (w, h), turn = im.size, orientation(im)
    div = dct_scale(w, h, min_side)
    if div > 1 and im.format == "JPEG":
        im.draft("RGB", (w // div, h // div))  # PIL's draft: the largest power of two with sides >= these
        div = 1
    im.load()
    rgb = im.convert("RGB") if im.mode != "RGB" else im
    return within_aspect(upright(rgb.reduce(div) if div > 1 else rgb, turn))


def within_pil_limit(width: int, height: int) -> bool:
    """Whether PIL opens an image of ``width`` × ``height``: at most twice ``Image.MAX_IMAGE_PIXELS`` (above that
    ``Image.open`` raises ``DecompressionBombError`` from the header; no limit when it is None). simplejpeg has no
    limit of its own — a forged header would have it allocate the declared size — so larger JPEGs go to PIL."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return limit is None or width * height <= 2 * limit


def decode_upload(data: bytes, min_side: "int | None" = None, *, max_pixels: int, name: str = "image"):
    """Untrusted bytes (an upload to the service) -> upright RGB PIL image, decoded as :func:`decode_bytes`
    decodes an indexed file; the header is checked first (:func:`clipzoo.image_bytes.image_size`: an image
    over ``max_pixels`` is refused before any pixel is decoded) and every failure is a one-line
    :class:`BadImageError` naming ``name``."""
    from PIL import Image

    width, height = image_size(data, max_pixels=max_pixels, name=name)
    try:
        return decode_bytes(data, min_side)
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{name}: the image declares {width}×{height} pixels, too many to decode; "
                                 "upload a smaller image") from None
    except MemoryError:
        raise ImageTooLargeError(f"{name}: the image is too large to decode ({width}×{height})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is a bad image
        what = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        kind = "JPEG" if is_jpeg(data) else "image"
        raise BadImageError(f"{name}: the {kind} file is {what} and cannot be decoded ({exc.__class__.__name__}: "
                            f"{exc}); upload the complete file") from None


def decode_file(path: "str | os.PathLike", min_side: "int | None" = None):
    """An image file -> upright RGB PIL image through :func:`decode_bytes`, decoded once: a failure is a one-line
    :class:`BadImageError` naming the file and the decoder's error. A path that is not a regular file (missing,
    a folder, a fifo — opened without waiting for a writer, then refused) gets
    :func:`clipzoo.inputs.open_image`'s message; the bytes read are bounded by :func:`read_image`."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)  # a fifo opens at once (and is refused below)
    except OSError:
        return open_image(path)  # missing, unreadable: its one-line message
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return open_image(path)  # a folder, a fifo, a device: refused there without reading
    with os.fdopen(fd, "rb") as f:
        try:
            data = read_image(f, 0, st.st_size, name)
        except OSError as exc:
            raise BadImageError(f"image {name!r} cannot be read ({exc.__class__.__name__}: {exc})") from None
    try:
        return decode_bytes(data, min_side)
    except Exception as exc:  # noqa: BLE001 - any decoder failure names the file
        raise undecodable(name, exc) from None


def undecodable(name: str, exc: BaseException) -> BadImageError:
    """The one line for an image file the decoder refused (as :func:`clipzoo.inputs.open_image` says it)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, Image.DecompressionBombError):
        return BadImageError(f"image {name!r} is refused as a decompression bomb ({exc})")
    said = f"cannot identify image file {name!r}" if isinstance(exc, UnidentifiedImageError) else exc  # not BytesIO
    return BadImageError(f"image {name!r} cannot be decoded ({exc.__class__.__name__}: {said}); is it a corrupt or "
                         "non-image file?")


def read_image(f, start: int, size: int, name: str) -> bytes:
    """The ``size`` bytes at ``start`` of the binary file ``f`` (an image file, or a tar member), read whole only
    when bounded: up to :data:`READ_WHOLE_BYTES`, or up to that plus :data:`BYTES_PER_PIXEL` per pixel its header
    declares. Anything larger — a garbage or zero-padded file behind an image's magic bytes, whose junk the
    decoders would crawl through (a 200 MB one took 45 s and 250 MB) — or a header that cannot be read is a
    one-line :class:`BadImageError` naming ``name``, before the rest is read."""
    f.seek(start)
    if size <= READ_WHOLE_BYTES:
        return f.read(size)
    head = f.read(1 << 20)
    pixels = declared_pixels(head, _Span(f, start, size), name)
    if pixels is None:
        raise BadImageError(f"image {name!r} ({size:,} bytes) has no image header a decoder can read; is it a "
                            "corrupt or non-image file?")
    if size > READ_WHOLE_BYTES + BYTES_PER_PIXEL * pixels:
        raise BadImageError(f"image {name!r} is {size:,} bytes, more than its {pixels:,} pixels can need; is it a "
                            "corrupt or padded file? (re-save it)")
    f.seek(start + len(head))
    return head + f.read(size - len(head))


def declared_pixels(head: bytes, source, name: str) -> "int | None":
    """Width × height as the header says, from ``head`` (a JPEG's first MiB: libjpeg-turbo, else PIL's parse of
    those bytes — PIL crawls junk before a JPEG marker byte by byte) or the seekable ``source`` (other formats:
    a TIFF's directory may lie at its end); None when no decoder reads a header there; a header PIL refuses as a
    decompression bomb is that one-line :class:`BadImageError` naming ``name``."""
    from PIL import Image

    if is_jpeg(head) and decoder_name() == "simplejpeg":
        import simplejpeg

        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(head)
            return width * height
        except (ValueError, RuntimeError):
            pass
    try:
        with Image.open(io.BytesIO(head) if is_jpeg(head) else source) as im:
            return im.size[0] * im.size[1]
    except Image.DecompressionBombError as exc:
        raise undecodable(name, exc) from None
    except Exception:  # noqa: BLE001 - no header here
        return None


class _Span:
    """Bytes ``start`` to ``start + size`` of a binary file, as a seekable file of their own (PIL's header parse of
    a tar member)."""

    def __init__(self, f, start: int, size: int):
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        self.f.seek(self.start + self.pos)
        data = self.f.read(max(n, 0))
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset + (0, self.pos, self.size)[whence])
        return self.pos

    def tell(self) -> int:
        return self.pos
