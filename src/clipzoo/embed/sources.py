"""What to embed: image files and folders, webdataset ``.tar`` shards, and text files.

Folders expand to their image files (recursively, sorted, hidden files skipped). An uncompressed
webdataset tar's image members are indexed by byte offset (:class:`TarMember`), so DataLoader workers
read them at random, in parallel and in order; brace patterns such as ``shards-{000..009}.tar`` expand.
Image files and tar members are told by the same suffixes, :data:`clipzoo.constants.IMAGE_SUFFIXES`.
"""
from __future__ import annotations

import csv
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from ..constants import IMAGE_SUFFIXES
from ..errors import BadImageError, BadTextError, ClipzooError
from ..extras import require
from ..files import NOT_REGULAR, expand_files, special_file
from ..inputs import load_rgb
from .decode import decode_bytes

__all__ = ["expand_image_paths", "read_texts", "TarMember", "tar_image_members", "expand_image_inputs",
           "table_image_paths", "TABLE_PATH_COLUMNS"]

TABLE_PATH_COLUMNS = ("image_path", "path", "filepath")
"""The column of a CSV / parquet input that holds the image paths (the first one present)."""


def expand_image_paths(paths: "str | os.PathLike | Iterable[str | os.PathLike]") -> list[str]:
    """Files stay as given; a folder becomes its image files (recursively, sorted, hidden files skipped).

    Raises :class:`~clipzoo.errors.BadImageError` naming a path that does not exist or a folder
    without images.
    """
    return expand_files(paths, IMAGE_SUFFIXES, BadImageError, "image")


def read_texts(path: "str | os.PathLike") -> list[str]:
    """One text per line of a UTF-8 file (line ends stripped, blank lines skipped)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ClipzooError(f"texts file {path!r} does not exist; pass a UTF-8 text file with one text per line")
    if os.path.isdir(path):
        raise ClipzooError(f"texts file {path!r} is a folder; pass a UTF-8 text file with one text per line")
    if special_file(path):
        raise ClipzooError(f"texts file {path!r} {NOT_REGULAR}; pass a UTF-8 text file with one text per line")
    try:
        with open(path, encoding="utf-8") as f:
            texts = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as exc:
        raise BadTextError(f"texts file {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "save it as UTF-8 with one text per line") from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise BadTextError(f"texts file {path!r} holds no texts; write one text per line")
    return texts


# ------------------------------------------------------------------ webdataset tars
@dataclass(frozen=True)
class TarMember:
    """One image inside an uncompressed tar, addressed by byte offset (picklable for DataLoader workers)."""

    tar: str
    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.tar}#{self.name}"

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def open_rgb(self, draft_size: int | None = None):
        try:
            data = self.read()  # fast decoding as for files (embed.decode); without draft_size PIL's full decode
            return decode_bytes(data, draft_size) if draft_size else load_rgb(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any decoder failure names the member
            raise BadImageError(f"image {str(self)!r} cannot be decoded ({type(exc).__name__}: {exc}); "
                                "is the tar member a corrupt or non-image file?") from None


def tar_image_members(path: "str | os.PathLike") -> list[TarMember]:
    """The image members of an uncompressed (webdataset) tar, in tar order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadImageError(f"tar shard {path!r} does not exist; check the path (brace patterns such as "
                            "shards-{000..009}.tar are expanded)")
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = [TarMember(path, m.name, m.offset_data, m.size) for m in tar
                       if m.isfile() and os.path.splitext(m.name)[1].lower() in IMAGE_SUFFIXES]
    except tarfile.ReadError as exc:
        raise BadImageError(f"tar shard {path!r} is not an uncompressed tar ({exc}); webdataset shards are "
                            "plain .tar files — decompress it first") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadImageError(f"tar shard {path!r} cannot be read ({exc}); it may be truncated") from None
    return members


def table_image_paths(path: "str | os.PathLike") -> list[str]:
    """The image paths of a ``.csv`` (header row) or ``.parquet`` table, in row order, from its first column
    named in :data:`TABLE_PATH_COLUMNS` (other columns, such as ``caption``, are ignored); a relative path is
    taken from the table's folder."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadImageError(f"table {path!r} does not exist; pass a .csv or .parquet file of image paths")
    if path.lower().endswith(".parquet"):
        table = require("pyarrow.parquet", "reading a parquet table of images").read_table(path)
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        columns = {name: [r[name] for r in rows] for name in (rows[0].keys() if rows else [])}
    name = next((c for c in TABLE_PATH_COLUMNS if c in columns), None)
    if name is None:
        raise BadImageError(f"table {path!r} has no image path column; name one of {', '.join(TABLE_PATH_COLUMNS)}")
    base = os.path.dirname(os.path.abspath(path))
    paths = [os.path.join(base, os.path.expanduser(str(p))) for p in columns[name] if p not in (None, "")]
    if not paths:
        raise BadImageError(f"table {path!r} lists no images in its {name!r} column")
    return paths


def _is_tar_spec(text: str) -> bool:
    return text.lower().endswith(".tar") or ("{" in text and ".tar" in text.lower())


def expand_image_inputs(inputs: "str | os.PathLike | Iterable[str | os.PathLike]") -> list:
    """Files, folders (recursively, sorted) and ``.tar`` shards (brace patterns expanded) -> a list of
    image paths (str) and :class:`TarMember` s, in the order given."""
    from braceexpand import braceexpand

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list = []
    for given in inputs:
        if isinstance(given, TarMember):  # already expanded
            out.append(given)
            continue
        text = os.fspath(given)
        if text.lower().endswith((".csv", ".parquet")):
            out.extend(table_image_paths(os.path.expanduser(text)))
            continue
        if not _is_tar_spec(text):
            out.extend(expand_image_paths(text))
            continue
        for path in braceexpand(text):
            members = tar_image_members(os.path.expanduser(path))
            if not members:
                raise BadImageError(f"tar shard {path!r} holds no image members ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(members)
    if not out:
        raise BadImageError("no images given; pass image files, folders or .tar shards")
    return out
