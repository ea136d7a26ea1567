"""Integrity of an index's files: durable writes, the manifest (size + SHA-256 of every file), checks, and
the one-line "disk full" message.

- :func:`durable_write`: write to a temporary file beside the target, ``fsync`` it, rename it into place and
  ``fsync`` the folder — after it returns the file survives a crash or a SIGKILL; an interrupted write
  leaves the target as it was and no temporary file. ``ENOSPC`` becomes :class:`DiskFullError`.
- :func:`file_entry` / :func:`check_files`: the manifest's ``{"size", "sha256"}`` of a file, and the
  problems (one line each: missing, other size, other SHA-256) of files against their entries.
- :func:`disk_full`: ``no space left on DEVICE writing FILE`` (DEVICE: the mount point holding FILE).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..constants import ONDISK_STORE
from ..errors import ClipzooError, write_refused
from ..files import current_umask

__all__ = ["DiskFullError", "durable_write", "fsync_dir", "file_entry", "sha256_of", "check_files", "disk_full",
           "mount_point", "is_disk_full", "repair_hint", "bad_shards"]


class DiskFullError(ClipzooError):
    """The disk filled up while the index was written; the previous index is left as it was."""


def repair_hint(index: "str | os.PathLike", store: str | None = None) -> str:
    """The command that repairs ``index`` (ends the integrity errors); ``store``: its vector store's name (an
    index built from vectors has no embedding store to repair from: it is rebuilt)."""
    if store == ONDISK_STORE:
        return f"rebuild it with `clipzoo index build-vectors VECTORS --out {index}`"
    return f"run `clipzoo index repair {index}`"


def mount_point(path: "str | os.PathLike") -> str:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    p = Path(os.path.abspath(os.fspath(path)))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


LOW_SPACE_BYTES = 1 << 20
"""Below this much free space, SQLite's "disk I/O error" is taken for a full disk (it cannot grow its files)."""


def is_disk_full(exc: BaseException, path: "str | os.PathLike | None" = None) -> bool:
    """Whether ``exc`` says the disk is full: ``ENOSPC``/``EDQUOT``, SQLite's "disk is full", or SQLite's
    "disk I/O error" while the file system of ``path`` has (almost) no space left."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    if "disk is full" in str(exc):
        return True
    if "disk I/O error" in str(exc) and path is not None:
        try:
            st = os.statvfs(mount_point(path))
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES
    return False


def disk_full(path: "str | os.PathLike") -> DiskFullError:
    """``no space left on DEVICE writing FILE``: the one line a full disk gives."""
    return DiskFullError(f"no space left on {mount_point(path)} writing {os.fspath(path)}; free some space and "
                         "rerun (the previous index is unchanged)")


def refused_write(exc: BaseException) -> bool:
    """Whether SQLite says the file system refused it (cannot open, I/O error, read-only) rather than the file
    being bad."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        part in str(exc) for part in ("unable to open", "I/O", "readonly"))


def write_failed(path: "str | os.PathLike", exc: BaseException) -> ClipzooError:
    """The one line for a write the file system refused for another reason than space (``disk I/O error``: a file
    size limit, a failing or read-only disk) — never "corrupt … delete it": the index itself is intact."""
    return write_refused(os.fspath(path), exc, kept=" (the previous index is unchanged)")


def fsync_dir(folder: "str | os.PathLike") -> None:
    """Make a rename or a new file in ``folder`` durable."""
    fd = os.open(os.fspath(folder), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: "str | os.PathLike", write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it, rename it to ``path`` and fsync
    the folder. On any error the temporary file is removed and ``path`` is left as it was; a full disk
    raises :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # the mode a new file gets (mkstemp's 0600 hid the index from
                os.fchmod(f.fileno(), 0o666 & ~current_umask())  # another user: a service could not read it)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def sha256_of(path: "str | os.PathLike", chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: "str | os.PathLike") -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file, as the manifest keeps it."""
    return {"size": os.path.getsize(path), "sha256": sha256_of(path)}


def check_files(folder: Path, files: dict[str, dict[str, Any]], full: bool) -> list[tuple[Path, str]]:
    """``(path, problem)`` for each file of ``files`` (name -> manifest entry, relative to ``folder``) that is
    missing, of another size, or (``full``) of another SHA-256 than the manifest says."""
    problems: list[tuple[Path, str]] = []
    for name, entry in sorted(files.items()):
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            problems.append((path, "missing"))
            continue
        if size != entry.get("size"):
            problems.append((path, f"{size} bytes, the manifest says {entry.get('size')}"))
        elif full and sha256_of(path) != entry.get("sha256"):
            problems.append((path, "its SHA-256 differs from the manifest's (the file is corrupt)"))
    return problems


def bad_shards(store: Any, full: bool = True) -> list[tuple[str, str]]:
    """``(shard name, what is wrong)`` for each shard a row refers to that is missing, differs from its
    recorded size or SHA-256 (``full``), cannot be read, has another width, or holds non-finite values."""
    try:
        entries = store.shard_entries()
    except sqlite3.OperationalError:  # written before the shards table
        entries = {}
    out: list[tuple[str, str]] = []
    for name, rows in sorted(store.referenced_shards().items()):
        path = store.shard_dir / name
        if not path.is_file():
            out.append((name, "missing"))
            continue
        entry = entries.get(name)
        if entry is not None and path.stat().st_size != entry[0]:
            out.append((name, f"{path.stat().st_size} bytes, the store says {entry[0]}"))
            continue
        if full and entry is not None and sha256_of(path) != entry[1]:
            out.append((name, "its SHA-256 differs from the store's (the file is corrupt)"))
            continue
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.ndim != 2 or arr.shape[1] != (store.dim or arr.shape[1]) or arr.shape[0] < rows:
                out.append((name, f"holds an array of shape {tuple(arr.shape)}, not rows of {store.dim} values"))
            elif full and not np.all(np.isfinite(arr)):
                out.append((name, "holds non-finite values"))
        except (OSError, ValueError) as exc:
            out.append((name, f"unreadable ({type(exc).__name__})"))
    return out
