"""fsspec URLs as image inputs of ``--engine ray`` (``s3://bucket/photos/``, ``gs://…/shard-{000..009}.tar``,
``file:///data/rows.parquet``, ``memory://…``): listed here as the local engine lists paths, read where they are
decoded (in the Ray tasks, through fsspec).

A URL names a folder (its image files, recursively, sorted, hidden files skipped), an image file, an uncompressed
webdataset tar (its image members, addressed by byte offset; brace patterns expand) or a CSV / parquet table of
image paths (relative ones taken from the table's folder). A filesystem that lives in one process only
(``memory://``) is read in this process and its bytes travel with the rows; any other is read by the tasks.
``s3://`` and the like need their fsspec package (s3fs, gcsfs, …) on every node.
"""
from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass, replace

import fsspec

from ..constants import IMAGE_SUFFIXES
from ..errors import BadImageError
from ..inputs import load_rgb
from .decode import decode_bytes, read_image
from .sources import expand_image_inputs, table_column, tar_entries

__all__ = ["is_url", "RemoteFile", "RemoteTarMember", "expand_inputs", "INLINE_PROTOCOLS"]

INLINE_PROTOCOLS = frozenset({"memory"})
"""Filesystems that exist in one process only: their bytes are read here and sent with the rows."""


def is_url(text: str) -> bool:
    """``scheme://…`` (an fsspec URL), not a local path."""
    return "://" in text


@dataclass(frozen=True)
class RemoteFile:
    """An image file at an fsspec URL (``data``: its bytes, when read here)."""

    url: str
    data: bytes | None = None

    def __str__(self) -> str:
        return self.url

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with fsspec.open(self.url, "rb") as f:  # bounded as a local file is (read_image)
            size = f.seek(0, os.SEEK_END)
            return read_image(f, 0, size, self.url)

    def open_rgb(self, draft_size: int | None = None):
        return _decode(self.read(), str(self), draft_size)


@dataclass(frozen=True)
class RemoteTarMember:
    """One image inside an uncompressed tar at an fsspec URL, addressed by byte offset."""

    url: str
    name: str
    offset: int
    size: int
    data: bytes | None = None

    def __str__(self) -> str:
        return f"{self.url}#{self.name}"

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with fsspec.open(self.url, "rb") as f:
            return read_image(f, self.offset, self.size, str(self))

    def open_rgb(self, draft_size: int | None = None):
        return _decode(self.read(), str(self), draft_size)


def _decode(data: bytes, name: str, draft_size: int | None):
    try:  # as the local engine decodes files and tar members
        return decode_bytes(data, draft_size) if draft_size else load_rgb(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any decoder failure names the input
        raise BadImageError(f"image {name!r} cannot be decoded ({type(exc).__name__}: {exc}); is it a corrupt or "
                            "non-image file?") from None


def expand_inputs(inputs) -> list:
    """Local paths as :func:`~clipzoo.embed.sources.expand_image_inputs` lists them, and fsspec URLs as
    :class:`RemoteFile` s and :class:`RemoteTarMember` s, in the order given."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list = []
    for given in inputs:
        if isinstance(given, (RemoteFile, RemoteTarMember)):  # already expanded
            out.append(given)
            continue
        text = given if isinstance(given, str) else os.fspath(given) if isinstance(given, os.PathLike) else None
        if text is None or not is_url(text):
            out.extend(expand_image_inputs([given]))
        else:
            out.extend(_expand_url(text))
    if not out:
        raise BadImageError("no images given; pass image files, folders or .tar shards")
    return out


def _expand_url(url: str) -> list:
    from braceexpand import braceexpand

    if url.lower().endswith((".csv", ".parquet")):
        return _inline([RemoteFile(u) for u in _table_urls(url)])
    if url.lower().endswith(".tar") or ("{" in url and ".tar" in url.lower()):
        return _inline([m for one in braceexpand(url) for m in _tar_members(one)])
    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        found = sorted(p for p in fs.find(path) if posixpath.splitext(p)[1].lower() in IMAGE_SUFFIXES
                       and not posixpath.basename(p).startswith("."))
        if not found:
            raise BadImageError(f"folder {url!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}); check the URL")
        return _inline([RemoteFile(fs.unstrip_protocol(p)) for p in found])
    if not fs.exists(path):
        raise BadImageError(f"image {url!r} does not exist; check the URL")
    return _inline([RemoteFile(url)])


def _inline(items: list) -> list:
    """Items of a one-process filesystem with their bytes read here (see :data:`INLINE_PROTOCOLS`)."""
    return [replace(item, data=item.read()) if item.url.split("://", 1)[0] in INLINE_PROTOCOLS else item
            for item in items]


def _tar_members(url: str) -> list[RemoteTarMember]:
    try:
        with fsspec.open(url, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            entries, cut = tar_entries(f, size, url)
    except FileNotFoundError:
        raise BadImageError(f"tar shard {url!r} does not exist; check the URL") from None
    except OSError as exc:
        raise BadImageError(f"tar shard {url!r} cannot be read ({exc})") from None
    if cut is not None:
        raise BadImageError(f"tar shard {url!r} is truncated after {len(entries)} image member(s) ({cut}); copy or "
                            "write it again")
    if not entries:
        raise BadImageError(f"tar shard {url!r} holds no image members ({', '.join(IMAGE_SUFFIXES)})")
    return [RemoteTarMember(url, name, offset, size) for name, offset, size in entries]


def _table_urls(url: str) -> list[str]:
    """The image URLs a CSV / parquet table at ``url`` lists, in row order (relative to the table's folder)."""
    try:
        with fsspec.open(url, "rb") as f:
            _, values = table_column(f, url)
    except FileNotFoundError:
        raise BadImageError(f"table {url!r} does not exist; pass a .csv or .parquet file of image paths") from None
    base = url.rsplit("/", 1)[0]
    return [p if is_url(p) else f"{base}/{p}" for p in values]
