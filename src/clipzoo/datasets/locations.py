"""Where data lives: local paths and fsspec URLs (``s3://``, ``gs://``, ``https://`` …) behind one set of helpers.

Each helper takes a local path or a URL; URLs go through :func:`clipzoo.files.url_filesystem`, so a missing
fsspec backend (``s3fs``, ``gcsfs``) is a one-line :class:`~clipzoo.errors.DatasetError`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from ..constants import MAX_SHARD_NAMES
from ..errors import DatasetError
from ..files import url_filesystem as files_url_filesystem
from .braces import brace_count

__all__ = ["TFRECORD_SUFFIXES", "open_binary", "url_filesystem", "join_url", "exists", "isdir", "listdir",
           "file_size", "read_text", "expand_urls", "is_tfrecord", "find_sidecar", "parent_url"]

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec", ".tfrecord.gz", ".tfrecords.gz", ".tfrec.gz")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
"""Webdataset shards: tar files, plain or gzip-compressed (a glob took .tar.gz, its plain name did not)."""


def open_binary(url: str):
    """A binary file object for reading a local path, ``file://`` path or fsspec URL."""
    if "://" in url and not url.startswith("file://"):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url[7:] if url.startswith("file://") else url, "rb")


def url_filesystem(url: str):
    """``(filesystem, path)`` of a URL; a missing fsspec backend raises :class:`DatasetError`."""
    return files_url_filesystem(url, DatasetError)


def join_url(base: str, *parts: str) -> str:
    """``base/part/…`` (``/`` for URLs, ``os.path.join`` for local paths)."""
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def exists(url: str) -> bool:
    if "://" not in url:
        return os.path.exists(url)
    fs, path = url_filesystem(url)
    return fs.exists(path)


def isdir(url: str) -> bool:
    if "://" not in url:
        return os.path.isdir(url)
    fs, path = url_filesystem(url)
    return fs.isdir(path)


def listdir(url: str) -> list[str]:
    """Full URLs / paths of the entries of a folder, sorted."""
    if "://" not in url:
        return sorted(os.path.join(url, n) for n in os.listdir(url))
    fs, path = url_filesystem(url)
    protocol = url.split("://", 1)[0]
    out = []
    for p in fs.ls(path, detail=False):
        p = p if "://" in p else f"{protocol}://{p.lstrip('/')}" if protocol != "file" else p
        out.append(p)
    return sorted(out)


def expand_urls(spec: "str | Sequence[str]") -> list[str]:
    """Brace-expand (``shard-{000..009}.tar``) and glob a shard spec (or list of specs) into URLs. A spec naming a
    local file that exists is that file, brackets and all (``set [v2]/a.tar`` was globbed and matched nothing);
    more than :data:`~clipzoo.constants.MAX_SHARD_NAMES` names is a one-line error, said before any is listed."""
    from braceexpand import braceexpand

    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in specs:
        if _local_file(s):
            out.append(s)
            continue
        _check_count(s, len(out) + brace_count(s))
        for u in braceexpand(s):
            if any(c in u for c in "*?[") and not _local_file(u):
                out.extend(_glob(u))
                _check_count(s, len(out))
            else:
                out.append(u)
    return out


def _local_file(spec: str) -> bool:
    return "://" not in spec and os.path.isfile(spec)


def _check_count(spec: str, count: int) -> None:
    if count > MAX_SHARD_NAMES:
        raise DatasetError(f"{spec!r} names {count:,} shards, more than the {MAX_SHARD_NAMES:,} a data set may list; "
                           "check the brace range (shards-{000000..000999}.tar names 1,000)")


def _glob(u: str) -> list[str]:
    fs, path = url_filesystem(u)
    matches = sorted(fs.glob(path))
    if not matches:
        raise DatasetError(f"no files match {u!r}")
    protocol = u.split("://", 1)[0] if "://" in u else None
    return [m if protocol in (None, "file") else f"{protocol}://{m.lstrip('/')}" for m in matches]


def is_tfrecord(url: str) -> bool:
    """Whether ``url`` names a TFRecord file (:data:`TFRECORD_SUFFIXES`)."""
    return url.lower().endswith(TFRECORD_SUFFIXES)


def find_sidecar(folder: str, name: str) -> "str | None":
    """The file ``name`` in ``folder`` or one folder up (CLIP_benchmark's layout), else None."""
    for base in (folder, parent_url(folder)):
        if base is None:
            continue
        path = join_url(base, name)
        if exists(path):
            return path
    return None


def parent_url(url: str) -> "str | None":
    """The folder holding ``url`` (None at the top of a bucket or filesystem)."""
    stripped = url.rstrip("/")
    parent = stripped.rsplit("/", 1)[0] if "://" in stripped else os.path.dirname(stripped)
    return parent if parent and parent != stripped and not parent.endswith(":/") else None


def file_size(url: str) -> int:
    if "://" not in url:
        return os.path.getsize(url)
    fs, path = url_filesystem(url)
    return fs.size(path)


def read_text(url: str) -> str:
    """A UTF-8 file's text (a byte-order mark dropped)."""
    with open_binary(url) as fh:
        return fh.read().decode("utf-8-sig")
