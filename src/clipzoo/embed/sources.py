"""What to embed: image files and folders, webdataset ``.tar`` shards, and text files.

Folders expand to their image files (recursively, sorted; hidden files and folders skipped, links leading out of
the folder left out, as ``clipzoo index build`` walks one). An uncompressed webdataset tar's image members are
indexed by byte offset (:class:`TarMember`), so DataLoader workers read them at random, in parallel and in order;
brace patterns such as ``shards-{000..009}.tar`` expand; a shard cut short keeps the members before the cut.
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
from ..files import NOT_REGULAR, expand_files, special_file, tar_end_problem
from ..inputs import load_rgb
from .decode import decode_bytes, read_image

__all__ = ["expand_image_paths", "read_texts", "TarMember", "TruncatedTar", "tar_image_members", "tar_entries",
           "expand_image_inputs", "ImageItems", "table_image_paths", "table_column", "TABLE_PATH_COLUMNS"]

TABLE_PATH_COLUMNS = ("image_path", "path", "filepath")
"""The column of a CSV / parquet input that holds the image paths (the first one present)."""


def expand_image_paths(paths: "str | os.PathLike | Iterable[str | os.PathLike]") -> list[str]:
    """Files stay as given; a folder becomes its image files (recursively, sorted; :func:`clipzoo.files.expand_files`
    says which are left out).

    Raises :class:`~clipzoo.errors.BadImageError` naming a path that does not exist or a folder
    without images.
    """
    return expand_files(paths, IMAGE_SUFFIXES, BadImageError, "image")


def read_texts(path: "str | os.PathLike") -> list[str]:
    """One text per line of a UTF-8 file (lines end at ``\\n``; a ``\\r\\n`` line end is stripped whole, a
    lone ``\\r`` inside a line kept; blank lines skipped; a UTF-8 byte-order mark at its start, as Notepad writes
    it, is not part of the first text)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ClipzooError(f"texts file {path!r} does not exist; pass a UTF-8 text file with one text per line")
    if os.path.isdir(path):
        raise ClipzooError(f"texts file {path!r} is a folder; pass a UTF-8 text file with one text per line")
    if special_file(path):
        raise ClipzooError(f"texts file {path!r} {NOT_REGULAR}; pass a UTF-8 text file with one text per line")
    try:  # lines end at \n only (a lone \r inside a caption is part of it), a trailing \r is dropped
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            texts = [line.removesuffix("\n").removesuffix("\r") for line in f]
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
        """The member's bytes, bounded as a file's are (:func:`clipzoo.embed.decode.read_image`)."""
        with open(self.tar, "rb") as f:
            return read_image(f, self.offset, self.size, str(self))

    def open_rgb(self, draft_size: int | None = None):
        try:
            data = self.read()  # a refused size names the member already
        except OSError as exc:
            raise BadImageError(f"image {str(self)!r} cannot be read ({type(exc).__name__}: {exc})") from None
        try:  # fast decoding as for files (embed.decode); without draft_size PIL's full decode
            return decode_bytes(data, draft_size) if draft_size else load_rgb(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any decoder failure names the member
            raise BadImageError(f"image {str(self)!r} cannot be decoded ({type(exc).__name__}: {exc}); "
                                "is the tar member a corrupt or non-image file?") from None


@dataclass(frozen=True)
class TruncatedTar:
    """Where a tar shard was cut short, kept among a run's items under ``skip_bad`` (after the members read
    before the cut, as webdataset reads them), so the sidecar lists it under ``skipped``; decoding it raises
    ``why``."""

    tar: str
    why: str

    def __str__(self) -> str:
        return self.tar

    def open_rgb(self, draft_size: int | None = None):
        raise BadImageError(self.why)


def tar_image_members(path: "str | os.PathLike", skip_bad: bool = False) -> list:
    """The image members of an uncompressed (webdataset) tar, in tar order. A shard cut short keeps the members
    before the cut: with ``skip_bad`` followed by a :class:`TruncatedTar` saying so, else a one-line
    :class:`BadImageError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadImageError(f"tar shard {path!r} does not exist; check the path (brace patterns such as "
                            "shards-{000..009}.tar are expanded)")
    try:
        with open(path, "rb") as f:
            entries, cut = tar_entries(f, os.fstat(f.fileno()).st_size, path)
    except OSError as exc:
        raise BadImageError(f"tar shard {path!r} cannot be read ({exc})") from None
    members: list = [TarMember(path, name, offset, size) for name, offset, size in entries]
    if cut is not None:
        why = (f"tar shard {path!r} is truncated after {len(members)} image member(s) ({cut}); copy or write it "
               "again")
        if not skip_bad:
            raise BadImageError(f"{why}, or pass --skip-bad (skip_bad=True) to keep the members before the cut")
        members.append(TruncatedTar(path, why))
    return members


def tar_entries(f, size: int, shown: str) -> "tuple[list[tuple[str, int, int]], str | None]":
    """The image members of the uncompressed tar ``f`` (``size`` bytes; a local or fsspec binary file) as
    ``(name, data offset, size)`` in tar order, and why the tar ends early (None: it is whole). A member whose data
    runs past the end, a header cut short or a block that is no header ends it, the members before it kept;
    a file that is no tar at all (a compressed one) raises :class:`BadImageError` naming ``shown``."""
    entries: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            try:
                for m in iter(tar.next, None):
                    if m.offset_data + m.size > size:
                        return entries, f"member {m.name!r} ends past the end of the file, at byte {size:,}"
                    if m.isfile() and os.path.splitext(m.name)[1].lower() in IMAGE_SUFFIXES:
                        entries.append((m.name, m.offset_data, m.size))
            except (tarfile.TarError, EOFError) as exc:
                return entries, str(exc)
            stop = tar.offset
    except tarfile.ReadError as exc:  # the first header: no tar at all
        raise BadImageError(f"tar shard {shown!r} is not an uncompressed tar ({exc}); webdataset shards are "
                            "plain .tar files — decompress it first") from None
    f.seek(stop)
    return entries, tar_end_problem(f.read(tarfile.BLOCKSIZE), stop)


def table_image_paths(path: "str | os.PathLike") -> list[str]:
    """The image paths of a ``.csv`` (header row) or ``.parquet`` table, in row order, from its first column
    named in :data:`TABLE_PATH_COLUMNS` (other columns, such as ``caption``, are ignored); a relative path is
    taken from the table's folder. A row naming a fifo, a socket or a device is refused (reading it would wait
    for ever)."""
    path = os.fspath(path)
    if special_file(path):
        raise BadImageError(f"table {path!r} {NOT_REGULAR}; pass a .csv or .parquet file of image paths")
    if not os.path.isfile(path):
        raise BadImageError(f"table {path!r} does not exist; pass a .csv or .parquet file of image paths")
    with open(path, "rb") as f:
        name, values = table_column(f, path)
    base = os.path.dirname(os.path.abspath(path))
    paths = [os.path.join(base, os.path.expanduser(p)) for p in values]
    for row, p in enumerate(paths, 1):
        if special_file(p):
            raise BadImageError(f"image {p!r} (row {row} of table {path!r}) {NOT_REGULAR}; remove the row or make "
                                "it name an image file")
    return paths


def table_column(f, shown: str) -> "tuple[str, list[str]]":
    """The image path column of the CSV (UTF-8, a byte-order mark allowed: Excel's "CSV UTF-8") or parquet table
    in the binary file ``f`` (local or fsspec; parquet when ``shown`` ends in ``.parquet``): its name and its
    non-empty values as text, in row order. A table that cannot be read, has no such column or lists nothing is
    a one-line :class:`BadImageError` naming ``shown``."""
    if shown.lower().endswith(".parquet"):
        parquet = require("pyarrow.parquet", "reading a parquet table of images")
        try:
            table = parquet.read_table(f)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors (ArrowInvalid, …) on a damaged file
            raise BadImageError(f"table {shown!r} cannot be read as parquet ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); is it a damaged file?") from None
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
    else:
        try:
            rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline="")))
        except UnicodeDecodeError as exc:
            raise BadImageError(f"table {shown!r} is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from None
        except csv.Error as exc:
            raise BadImageError(f"table {shown!r} cannot be read as CSV ({exc})") from None
        columns = {name: [r[name] for r in rows] for name in (rows[0].keys() if rows else [])}
    name = next((c for c in TABLE_PATH_COLUMNS if c in columns), None)
    if name is None:
        raise BadImageError(f"table {shown!r} has no image path column; name one of {', '.join(TABLE_PATH_COLUMNS)}")
    values = [str(v) for v in columns[name] if v not in (None, "")]
    if not values:
        raise BadImageError(f"table {shown!r} lists no images in its {name!r} column")
    return name, values


def _is_tar_spec(text: str) -> bool:
    return text.lower().endswith(".tar") or ("{" in text and ".tar" in text.lower())


class ImageItems(list):
    """What :func:`expand_image_inputs` returns: expanding it again gives it back as it is (``clipzoo embed``
    expands before the model loads, then hands the items on; a second expansion made a folder named by a table's
    row its files, where the library refuses that row)."""


def expand_image_inputs(inputs: "str | os.PathLike | Iterable[str | os.PathLike]", *,
                        skip_bad: bool = False) -> ImageItems:
    """Files, folders (recursively, sorted) and ``.tar`` shards (brace patterns expanded) -> a list of
    image paths (str) and :class:`TarMember` s, in the order given (``skip_bad``: a truncated tar keeps its
    members before the cut, see :func:`tar_image_members`)."""
    from braceexpand import braceexpand

    if isinstance(inputs, ImageItems):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out = ImageItems()
    for given in inputs:
        if isinstance(given, (TarMember, TruncatedTar)):  # already expanded
            out.append(given)
            continue
        text = os.fspath(given)
        if "://" in text:  # an fsspec URL (clipzoo.embed.remote_inputs lists those): not a path that is missing
            raise BadImageError(f"image input {text!r} is a URL, and the local engine reads local paths only; pass "
                                "--engine ray (embed_with_ray) to read fsspec URLs, or the local path")
        if text.lower().endswith((".csv", ".parquet")):
            out.extend(table_image_paths(os.path.expanduser(text)))
            continue
        if not _is_tar_spec(text):
            out.extend(expand_image_paths(text))
            continue
        for path in braceexpand(text):
            members = tar_image_members(os.path.expanduser(path), skip_bad)
            if not members:
                raise BadImageError(f"tar shard {path!r} holds no image members ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(members)
    if not out:
        raise BadImageError("no images given; pass image files, folders or .tar shards")
    return out
