"""fsspec URLs as the folder of ``clipzoo index build`` (``file:///data/photos``, ``memory://photos``,
``s3://bucket/photos/`` with s3fs installed).

A ``file://`` URL is its local folder. Any other URL's folder is mirrored into ``OUT/.source/`` — its image,
video and caption (``.txt``) files, hidden entries skipped, as a local folder would be walked — and the index is
built from that copy, so it holds what a build of the same files in a local folder holds (the same relative paths,
partitions, captions, hashes and vectors), and the service can show the files. A rerun copies only the files whose
fsspec ``ukey`` (content version: an ETag, a modification time) changed and drops the files gone from the URL, so
the incremental build sees only what changed. The URL is recorded in ``OUT/.source/.clipzoo-source.json``; an
index mirrors one URL only. The copy is written before the build takes the index's lock.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
from pathlib import Path

import fsspec

from ..constants import VIDEO_SUFFIXES
from ..embed.remote_inputs import is_url
from ..errors import ClipzooError
from ..files import atomic_write
from .folder import INDEX_SUFFIXES

__all__ = ["SOURCE_DIR", "SOURCE_RECORD", "local_folder", "mirror_folder"]

SOURCE_DIR = ".source"
"""The copy of a URL folder inside the index folder (hidden: the index's own files are not its business)."""
SOURCE_RECORD = ".clipzoo-source.json"
MIRRORED_SUFFIXES = frozenset((*INDEX_SUFFIXES, *VIDEO_SUFFIXES, ".txt"))


def local_folder(folder: "str | os.PathLike", out: "str | os.PathLike") -> Path:
    """The local folder an index build of ``folder`` reads: a local path as it is (absolute), a ``file://`` URL's
    path, and any other fsspec URL's copy in ``out`` (:func:`mirror_folder`)."""
    text = os.fspath(folder)
    if not is_url(text):
        return Path(os.path.expanduser(text)).absolute()
    fs, path = _filesystem(text)
    if "file" in _protocols(fs):
        local = Path(path).absolute()
        if not local.is_dir():
            what = "is not a folder" if local.exists() else "does not exist"
            raise ClipzooError(f"folder {text!r} {what}; pass the URL of a folder of images to index")
        return local
    return mirror_folder(text, Path(os.path.expanduser(os.fspath(out))).absolute() / SOURCE_DIR)


def _filesystem(url: str):
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its package (s3fs, gcsfs, …) missing
        raise ClipzooError(f"cannot open folder URL {url!r} ({exc}); install the fsspec package for its "
                           "protocol, or pass a local folder") from None


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def mirror_folder(url: str, into: Path) -> Path:
    """Copy the files of the folder at ``url`` that an index build reads into ``into`` (only new or changed ones;
    files gone from the URL are removed). Returns ``into``."""
    fs, path = _filesystem(url)
    if not fs.isdir(path):
        what = "is not a folder" if fs.exists(path) else "does not exist"
        raise ClipzooError(f"folder {url!r} {what}; pass the URL of a folder of images to index")
    record_path = into / SOURCE_RECORD
    record = _read_record(record_path)
    if record.get("url") not in (None, url):
        raise ClipzooError(f"{str(into.parent)!r} indexes folder URL {record['url']!r}, not {url!r}; pass that URL, "
                           "or a new --out for this one")
    base = path.rstrip("/")
    wanted = {}
    for found in sorted(fs.find(path)):
        rel = posixpath.relpath(found, base)
        if any(part.startswith(".") for part in rel.split("/")) or \
                posixpath.splitext(rel)[1].lower() not in MIRRORED_SUFFIXES:
            continue
        wanted[rel] = found
    made = [p for p in (into.parent, into) if not p.exists()]  # removed again when the copy fails
    try:
        _copy(fs, wanted, dict(record.get("files", {})), into, url)
    except BaseException:
        for folder in reversed(made):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return into


def _copy(fs, wanted: dict[str, str], versions: dict[str, str], into: Path, url: str) -> None:
    """Bring ``into`` in line with ``wanted`` (relative path -> path on ``fs``), then record the versions."""
    into.mkdir(parents=True, exist_ok=True)
    for rel in sorted(set(versions) - set(wanted)):  # gone from the URL
        (into / rel).unlink(missing_ok=True)
        versions.pop(rel)
    for rel, found in wanted.items():
        key = str(fs.ukey(found))
        target = into / rel
        if versions.get(rel) == key and target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data = fs.cat_file(found)
        atomic_write(target, lambda f, data=data: f.write(data))
        versions[rel] = key
    _remove_empty_dirs(into)
    atomic_write(into / SOURCE_RECORD, lambda f: f.write(json.dumps({"url": url, "files": versions},
                                                                     indent=1).encode()))


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text("utf-8"))
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _remove_empty_dirs(root: Path) -> None:
    for dirpath, _, _ in os.walk(root, topdown=False):
        if Path(dirpath) != root and not any(Path(dirpath).iterdir()):
            shutil.rmtree(dirpath, ignore_errors=True)
