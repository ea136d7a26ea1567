"""Generations: what readers see of an index is a published, immutable snapshot, switched atomically.

A build (or a repair, or the service's ``POST /items``) writes its rows into the embedding store, then
:func:`publish` writes a new **generation** into ``INDEX/vectors/`` under new names (``<tag>`` =
``g<generation>-<pid>-<ns>``)::

    items-<tag>.sqlite    a snapshot of the store's rows and meta (SQLite's backup; opened read-only)
    vectors-<tag>.npy     every item's vector [count, dim], rows in id order
    all-<tag>.faiss …     the vector stores (one per partition when there are several)
    <tag>.readers         the readers' lock: a reader holds a shared flock on it while it uses the generation

each written, fsynced and hashed, and then **switches** by atomically replacing ``vectors.json`` — the
pointer and the manifest at once (``files``: size and SHA-256 of every file of the generation; ``tag``;
``ids_sha256``). A reader (:func:`open_generation`) takes the shared lock, then reads only that
generation's files, so it never sees a mixed view, and a running server follows the pointer. Older
generations are deleted (:func:`collect`) only once no reader holds their lock; files of an unfinished
publish never become visible and are deleted by the next writer.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClipzooError, NotFoundError
from .embedding_store import POINTER, VECTORS_DIR, EmbeddingStore
from .item_rows import connect_read_only, items_by_id
from .manifest import (
    DiskFullError,
    check_files,
    disk_full,
    durable_write,
    file_entry,
    fsync_dir,
    is_disk_full,
    repair_hint,
)
from .stores import DEFAULT_STORE, VectorStore, get_store

__all__ = ["publish", "GenerationView", "open_generation", "read_pointer", "collect", "collect_quietly", "POINTER",
           "VECTORS_DIR", "IndexCorruptError"]

_TAGGED = re.compile(r"^(?:all|part\d+|items|vectors)-(g\d+-\d+-\d+)\.|^(g\d+-\d+-\d+)\.readers$")


class IndexCorruptError(ClipzooError):
    """A file of the index does not match its manifest (or cannot be read)."""


def read_pointer(index: "str | os.PathLike") -> dict[str, Any] | None:
    """The published record (``vectors.json``) of ``index``; None when it has none, it is unreadable, or it is
    not a record (JSON of another shape: a string there was an AttributeError in build, repair and verify)."""
    path = Path(index) / VECTORS_DIR / POINTER
    try:
        record = json.loads(path.read_text("utf-8"))
    except PermissionError:  # not "missing": a reader would fall back to the live rows and report a write failure
        raise ClipzooError(f"cannot read index file {str(path)!r}: permission denied; ask its owner to make the "
                           "index readable (chmod -R a+rX), or rebuild it") from None
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if "files" in record and not (isinstance(record["files"], dict) and isinstance(record.get("tag"), str)
                                  and type(record.get("generation")) is int and isinstance(record.get("items"), str)
                                  and isinstance(record.get("all"), dict)):
        return None
    return record


# ------------------------------------------------------------------ writing
def publish(store: EmbeddingStore, **options: Any) -> dict[str, Any]:
    """Write a new generation of ``store``'s committed rows and switch to it; returns its record.
    ``options``: ``vector_store`` (default FAISS) and that store's ``build`` options."""
    vdir = store.path / VECTORS_DIR
    vdir.mkdir(parents=True, exist_ok=True)
    store_name = options.pop("vector_store", DEFAULT_STORE)
    cls = get_store(store_name)
    generation = store.generation
    tag = f"g{generation}-{os.getpid()}-{time.time_ns() % 10**12}"
    written: list[Path] = []
    try:
        ids, x = store.all_vectors()
        dim = int(store.dim or (x.shape[1] if x.ndim == 2 else 0))
        if not np.all(np.isfinite(x)):
            raise ClipzooError(f"index {str(store.path)!r} holds non-finite vectors; {repair_hint(store.path)}")
        record: dict[str, Any] = {"generation": generation, "tag": tag, "count": int(len(ids)), "dim": dim,
                                  "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(), "partitions": {}}
        if store_name != DEFAULT_STORE:
            record["vector_store"] = store_name
        record["items"] = _write(written, vdir / f"items-{tag}.sqlite", lambda p: _snapshot(store, p))
        record["vectors"] = _write(written, vdir / f"vectors-{tag}.npy",
                                   lambda p: durable_write(p, lambda f: np.save(f, x)))
        whole = cls.build(ids, x, **options)
        record["all"] = _save(written, whole, vdir / f"all-{tag}{cls.suffix}")
        partitions = store.partitions()
        if len(partitions) > 1 or (partitions and store.has_root_items()):
            for i, name in enumerate(partitions):
                if hasattr(whole, "partition_store"):  # partitions inside the one store (Milvus partitions)
                    part = whole.partition_store(name)
                else:
                    pids, px = store.all_vectors(name)
                    part = cls.build(pids, px, **options)
                record["partitions"][name] = _save(written, part, vdir / f"part{i}-{tag}{cls.suffix}")
        elif partitions:
            record["partitions"][partitions[0]] = dict(record["all"])
        _write(written, vdir / f"{tag}.readers", lambda p: durable_write(p, lambda f: None))
        record["files"] = {p.name: file_entry(p) for p in written}
        durable_write(vdir / POINTER, lambda f: f.write(json.dumps(record, indent=1, ensure_ascii=False).encode()))
    except BaseException as exc:
        for p in written:
            p.unlink(missing_ok=True)
        if written and not isinstance(exc, DiskFullError) and (
                is_disk_full(exc) or (isinstance(exc, RuntimeError) and "no space" in str(exc).lower())):
            raise disk_full(written[-1]) from None
        raise
    collect_quietly(store.path)
    return record


def collect_quietly(index: "str | os.PathLike") -> None:
    """:func:`collect` after a switch: the new generation is published, so a file it cannot delete (a folder's
    permissions) is left for a later writer rather than failing a build that succeeded."""
    try:
        collect(index)
    except (OSError, ClipzooError):
        pass


def _write(written: list[Path], path: Path, write) -> str:
    written.append(path)
    write(path)
    return path.name


def _save(written: list[Path], vectors: VectorStore, path: Path) -> dict[str, Any]:
    written.append(path)
    vectors.save(path)
    with open(path, "rb+") as f:  # durable before the switch
        os.fsync(f.fileno())
    fsync_dir(path.parent)
    return {"file": path.name, **vectors.describe()}


def _snapshot(store: EmbeddingStore, path: Path) -> None:
    """A self-contained, fsynced copy of the store's SQLite (rows, meta) at ``path``."""
    tmp = path.with_name(path.name + ".part")
    try:
        dst = sqlite3.connect(str(tmp))
        try:
            with store._lock:  # noqa: SLF001 - the store's own connection, under its lock
                store.conn.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
            dst.commit()
        finally:
            dst.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def collect(index: "str | os.PathLike") -> int:
    """Delete the files of generations other than the published one that no reader holds, and debris
    (``*.part``, files no generation names). Returns how many files were deleted."""
    vdir = Path(index) / VECTORS_DIR
    record = read_pointer(index) or {}
    current = record.get("tag")
    keep = {POINTER, *record.get("files", {})}
    if "files" not in record and "all" in record:  # a legacy record: its files
        keep |= {record["all"]["file"], *(p["file"] for p in record.get("partitions", {}).values())}
    removed = 0
    if not vdir.is_dir():
        return 0
    by_tag: dict[str, list[Path]] = {}
    for p in vdir.iterdir():
        m = _TAGGED.match(p.name)
        if p.name in keep or (m and (m.group(1) or m.group(2)) == current):
            continue
        if m:
            by_tag.setdefault(m.group(1) or m.group(2), []).append(p)
        elif not p.is_dir():  # a folder no generation names (Jupyter's .ipynb_checkpoints) is not ours: left alone
            p.unlink(missing_ok=True)
            removed += 1
    for tag, paths in by_tag.items():
        removed += _drop_generation(vdir, tag, paths)
    return removed


def _drop_generation(vdir: Path, tag: str, paths: list[Path]) -> int:
    lock = vdir / f"{tag}.readers"
    fd = None
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a reader still uses it: kept until a later writer finds it free
            os.close(fd)
            return 0
    try:
        for p in sorted(paths, key=lambda q: q == lock):  # the lock file last
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return len(paths)
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# ------------------------------------------------------------------ reading
class GenerationView:
    """The rows of one published generation, read-only: what :class:`~clipzoo.index.SearchIndex` reads items,
    meta and vectors from (the same methods as :class:`~clipzoo.index.embedding_store.EmbeddingStore`)."""

    def __init__(self, index: Path, record: dict[str, Any], lock_fd: int):
        self.path = index
        self.record = record
        self.generation = int(record["generation"])
        self.tag = str(record["tag"])
        vdir = index / VECTORS_DIR
        self._lock = threading.RLock()
        reading = vdir / record["items"]
        conn = None
        try:  # a file of the right size whose bytes are bad (a flipped header) is corrupt, in one line
            conn = connect_read_only(reading, immutable=True)
            self._meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            self._ids = np.fromiter((r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")), np.int64)
            reading = vdir / record["vectors"]
            self._vectors = np.load(reading, mmap_mode="r", allow_pickle=False)
        except (sqlite3.Error, ValueError, TypeError, OSError, EOFError) as exc:
            if conn is not None:
                conn.close()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
            raise IndexCorruptError(f"index file {str(reading)!r} is corrupt ({first}); "
                                    f"{repair_hint(index, record.get('vector_store'))}") from None
        self.conn = conn
        # registered only now: when a read above raises, open_generation closes the lock's fd (a finalizer
        # registered before closed that number a second time, maybe another thread's new file by then)
        self._closer = weakref.finalize(self, _release, self.conn, lock_fd)

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self._meta.get(key, default)

    @property
    def dim(self) -> int | None:
        return int(self.record["dim"])

    def count(self) -> int:
        return int(len(self._ids))

    def item(self, item_id: int) -> dict[str, Any]:
        found = self.items([item_id]).get(int(item_id))
        if found is None:
            raise NotFoundError(f"no item with id {item_id} in index {str(self.path)!r}")
        return found

    def items(self, ids) -> dict[int, dict[str, Any]]:
        with self._lock:
            return items_by_id(self.conn, ids)

    def vectors(self, ids) -> np.ndarray:
        ids = np.asarray([int(i) for i in ids], np.int64)
        rows = np.searchsorted(self._ids, ids)
        if len(ids) and (np.any(rows >= len(self._ids)) or np.any(self._ids[np.minimum(rows, len(self._ids) - 1)]
                                                                    != ids)):
            raise NotFoundError(f"no item with some of the ids {ids[:5].tolist()} in index {str(self.path)!r}")
        return np.asarray(self._vectors[rows], dtype=np.float32)

    def all_vectors(self, partition: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        if partition is None:
            return self._ids.copy(), np.asarray(self._vectors, dtype=np.float32)
        with self._lock:
            ids = np.fromiter((r[0] for r in self.conn.execute(
                "SELECT id FROM items WHERE partition=? ORDER BY id", (partition,))), np.int64)
        return ids, self.vectors(ids)

    def close(self) -> None:
        self._closer()


def _release(conn: sqlite3.Connection, lock_fd: int) -> None:
    conn.close()
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
    finally:
        os.close(lock_fd)


def _lock_current(index: Path, record: dict[str, Any]) -> int | None:
    """A shared lock on ``record``'s generation; None when it was collected meanwhile (read the pointer again)."""
    try:
        fd = os.open(index / VECTORS_DIR / f"{record['tag']}.readers", os.O_RDONLY)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    if os.fstat(fd).st_nlink == 0:  # deleted while we waited
        os.close(fd)
        return None
    return fd


def open_generation(index: Path, record: dict[str, Any], full: bool = False) -> GenerationView:
    """The published generation ``record`` (re-read when it was switched meanwhile), its files checked
    against the manifest (sizes; ``full``: SHA-256) and its ids against ``ids_sha256``."""
    for _ in range(50):
        fd = _lock_current(index, record)
        if fd is not None:
            break
        record = read_pointer(index) or record
    else:
        readers = index / VECTORS_DIR / f"{record.get('tag')}.readers"
        if record == read_pointer(index) and not readers.exists():  # not switched: its lock file is gone
            raise IndexCorruptError(f"index file {str(readers)!r} is missing; {repair_hint(index)}")
        raise IndexCorruptError(f"index {str(index)!r} switched generations too often while opening; retry")
    try:
        check_generation(index, record, full)
        view = GenerationView(index, record, fd)
    except BaseException:
        os.close(fd)
        raise
    if hashlib.sha256(view._ids.tobytes()).hexdigest() != record.get("ids_sha256") or \
            view._vectors.shape != (view.count(), view.dim):  # noqa: SLF001
        view.close()
        raise IndexCorruptError(f"index file {str(index / VECTORS_DIR / record['items'])!r} does not hold the ids "
                                f"of the manifest (ids_sha256 differs); "
                                f"{repair_hint(index, record.get('vector_store'))}")
    return view


def check_generation(index: Path, record: dict[str, Any], full: bool) -> None:
    """:class:`IndexCorruptError` (one line: the file, what is wrong, the repair command) for the first file
    of the generation that is missing or differs from the manifest."""
    problems = check_files(index / VECTORS_DIR, record.get("files", {}), full)
    if problems:
        path, what = problems[0]
        raise IndexCorruptError(f"index file {str(path)!r} is {what if what == 'missing' else 'corrupt: ' + what}"
                                f"; {repair_hint(index, record.get('vector_store'))}")
