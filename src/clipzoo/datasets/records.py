"""The one sample type every reader yields, and turning it into pixels.

A reader (image folder, CSV, webdataset tar, TFRecord) yields :class:`Record`s: the encoded image
(bytes, or a path / URL to open), its captions and its class id. Decoding happens later, in
DataLoader workers, so readers stay cheap and a bad image is reported with the name of its file
(``shard-000003.tar:00001234.jpg``) instead of a traceback.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..constants import IMAGE_SUFFIXES
from ..errors import BadImageError
from ..files import NOT_REGULAR, special_file

__all__ = ["Record", "decode_image", "IMAGE_EXTENSIONS", "is_index"]

# file extensions read as images (clipzoo.constants.IMAGE_SUFFIXES without the dot), in the order a
# webdataset sample's image is looked for
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)


@dataclass
class Record:
    """One sample.

    ``image``: encoded bytes, or a local path / fsspec URL to open. ``captions``: zero or more texts.
    ``label``: a class id or ``None``. ``source``: where it came from, for error messages
    (a path, or ``shard.tar:KEY.jpg``). ``meta``: anything else the reader found (a JSON side file).
    """

    key: str
    image: "bytes | str | None"
    captions: list[str] = field(default_factory=list)
    label: "int | None" = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def caption(self) -> "str | None":
        return self.captions[0] if self.captions else None


def is_index(text: str) -> bool:
    """Whether ``text`` is a class index: ASCII digits with an optional minus (``"²"`` and ``"٣"`` pass
    ``isdigit()``, then fail ``int()``)."""
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdecimal()


def decode_image(record: Record, open_file: "Callable[[str], Any] | None" = None):
    """The record's image as an RGB ``PIL.Image``; :class:`~clipzoo.errors.BadImageError` naming the source.

    ``open_file``: how to open a path that is a URL (default: fsspec for ``scheme://`` paths).
    """
    from PIL import Image, UnidentifiedImageError

    where = record.source or record.key
    data = record.image
    if data is None:
        raise BadImageError(f"{where}: the sample has no image")
    if isinstance(data, str) and "://" not in data and special_file(data):  # a fifo x.png: open() waited for ever
        raise BadImageError(f"image {where!r} {NOT_REGULAR}; not read")
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            fh = io.BytesIO(bytes(data))
        elif "://" in str(data):
            opener = open_file or _fsspec_open
            with opener(str(data)) as remote:
                fh = io.BytesIO(remote.read())
        else:
            fh = open(data, "rb")  # noqa: SIM115 - closed by the `with fh` below
        with fh:
            image = Image.open(fh)
            image.load()
    except FileNotFoundError:
        raise BadImageError(f"image file {where!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"image {where!r} cannot be decoded ({type(err).__name__}: {err}); "
                            f"it may be truncated or not an image") from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _fsspec_open(url: str):
    import fsspec

    return fsspec.open(url, "rb").open()
