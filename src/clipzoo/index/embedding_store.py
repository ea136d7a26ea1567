"""The embedding store: float32 shards (``.npy``) + metadata in SQLite, crash-safe and incremental.

Layout of an index folder::

    INDEX/
      index.sqlite          items (id, relpath, size, mtime, sha256, caption, partition, shard, row),
                            skipped files, and meta (model spec, dim, root folder, generation)
      shards/<name>.npy     float32 [rows, dim], L2-normalised; written once, never modified
      vectors/…             the vector store files and vectors.json (see :mod:`clipzoo.index.vector_files`)

Write order makes a crash at any instant harmless:

1. a batch's embeddings go to a *new* shard file through an atomic rename;
2. its rows are inserted (or replace older rows of the same files) in *one* SQLite transaction that
   refers to ``(shard, row)``; the transaction also bumps ``generation``.

A shard that no committed row refers to is an orphan (a crash between 1 and 2, or rows since replaced)
and is deleted by :meth:`EmbeddingStore.cleanup`; a temporary ``*.part`` file likewise. The vector files
are derived data, published from the committed rows as a new generation whenever the store changed
(:func:`clipzoo.index.generations.publish`). Shards are fsynced and their size and SHA-256 kept in the
``shards`` table (``clipzoo index verify``); commits are fsynced (``synchronous=FULL``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClipzooError, NotFoundError
from ..registry import REGISTRY
from .item_rows import ITEM_COLUMNS, connect_read_only, is_sqlite_integer, items_by_id, row_dict
from .manifest import disk_full, durable_write, is_disk_full, refused_write, write_failed

__all__ = ["EmbeddingStore", "ItemRow", "DB_NAME", "SHARD_DIR", "SCHEMA_VERSION"]

DB_NAME = "index.sqlite"
SHARD_DIR = "shards"
VECTORS_DIR = "vectors"  # the published generations (:mod:`.generations`)
POINTER = "vectors.json"  # in VECTORS_DIR: which generation is published
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    relpath TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    caption TEXT,
    partition TEXT,
    shard TEXT NOT NULL,
    row INTEGER NOT NULL,
    UNIQUE (shard, row)
);
CREATE INDEX IF NOT EXISTS items_partition ON items(partition);
CREATE TABLE IF NOT EXISTS skipped (relpath TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, size INTEGER NOT NULL, sha256 TEXT NOT NULL);
"""


@dataclass
class ItemRow:
    """What the store keeps about one indexed file (its vector lives in a shard)."""

    relpath: str
    size: int
    mtime_ns: int
    sha256: str
    caption: str | None
    partition: str | None


def _rebuild_hint(path: Path) -> str:
    return f"rebuild it with `clipzoo index build DIR --model MODEL --out {path}` (a new --out, or delete {path})"


class EmbeddingStore:
    """Shards + SQLite at ``path``. Thread-safe (one connection behind a lock); ``read_only``: no writes (verify)."""

    def __init__(self, path: "str | os.PathLike", create: bool = False, read_only: bool = False):
        self.path = Path(os.path.expanduser(os.fspath(path))).absolute()
        self.db_path = self.path / DB_NAME
        self.shard_dir = self.path / SHARD_DIR
        self._lock = threading.RLock()
        self._shards: OrderedDict[str, np.ndarray] = OrderedDict()
        if create:
            if self.path.exists() and not self.path.is_dir():
                raise ClipzooError(f"index path {str(self.path)!r} is a file; pass a folder for --out")
            if self.path.is_dir() and not self.db_path.exists() and any(
                    p for p in self.path.iterdir() if not p.name.startswith(".")):
                raise ClipzooError(f"{str(self.path)!r} is a non-empty folder that holds no index "
                                   f"({DB_NAME} missing); pass a new or empty folder for --out")
            self.shard_dir.mkdir(parents=True, exist_ok=True)
        elif not self.db_path.is_file():
            if not self.path.exists():
                raise ClipzooError(f"index {str(self.path)!r} does not exist; build it with "
                                   f"`clipzoo index build DIR --model MODEL --out {self.path}`")
            raise ClipzooError(f"index file {str(self.db_path)!r} is missing; {_rebuild_hint(self.path)}")
        try:
            self.conn = connect_read_only(self.db_path) if read_only else sqlite3.connect(
                str(self.db_path), check_same_thread=False, isolation_level=None, timeout=30)
            if not read_only:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it returns
            if create:
                self._refuse_lost_tables()
                self.conn.executescript(_SCHEMA)
                if self.get_meta("schema") is None:
                    self.set_meta(schema=SCHEMA_VERSION, generation=0, created=time.time())
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"meta", "items", "skipped"} <= tables:
                raise sqlite3.DatabaseError("tables missing")
            self.conn.execute("SELECT count(*) FROM items").fetchone()
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc, self.db_path):
                raise disk_full(self.db_path) from None
            if refused_write(exc):  # a read-only or failing disk, a file size limit: not a bad file
                raise write_failed(self.db_path, exc) from None
            raise ClipzooError(f"index file {str(self.db_path)!r} is corrupt or not an index ({exc}); "
                               f"{_rebuild_hint(self.path)}") from None

    def _refuse_lost_tables(self) -> None:
        """Tables lost beside published generations (a 0-byte file): damage, not a new index to publish empty."""
        tables = self.conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        vectors = self.path / VECTORS_DIR
        if not tables and vectors.is_dir() and any(vectors.iterdir()):
            raise sqlite3.DatabaseError("it holds no tables, while the index has published generations in vectors/")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values: Any) -> None:
        with self._lock, self._transaction():
            self._set_meta_locked(values)

    def _set_meta_locked(self, values: dict[str, Any]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                              [(k, json.dumps(v)) for k, v in values.items()])

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    @property
    def dim(self) -> int | None:
        d = self.get_meta("dim")
        return None if d is None else int(d)

    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
            return False

    def _transaction(self) -> "_Tx":
        return self._Tx(self.conn)

    def _bump(self) -> None:
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")

    # ------------------------------------------------------------------ reading
    def count(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT count(*) FROM items").fetchone()[0])

    def partitions(self) -> list[str]:
        with self._lock:
            rows = self.conn.execute("SELECT DISTINCT partition FROM items WHERE partition IS NOT NULL "
                                     "ORDER BY partition").fetchall()
        return [r[0] for r in rows]

    def has_root_items(self) -> bool:
        """Whether some item sits in no partition (a file directly in the indexed folder)."""
        with self._lock:
            return self.conn.execute("SELECT 1 FROM items WHERE partition IS NULL LIMIT 1").fetchone() is not None

    def files(self) -> dict[str, tuple[int, int, int, str, str | None]]:
        """relpath -> (id, size, mtime_ns, sha256, caption) of every item."""
        with self._lock:
            rows = self.conn.execute("SELECT relpath, id, size, mtime_ns, sha256, caption FROM items").fetchall()
        return {r[0]: tuple(r[1:]) for r in rows}  # type: ignore[misc]

    def item(self, item_id: int) -> dict[str, Any]:
        """The metadata of one item; :class:`~clipzoo.errors.NotFoundError` for an unknown id."""
        try:
            item_id = int(item_id)
        except (TypeError, ValueError):
            raise NotFoundError(f"item id {item_id!r} is not an integer") from None
        with self._lock:
            row = self.conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id=?", (item_id,)).fetchone() \
                if is_sqlite_integer(item_id) else None
        if row is None:
            raise NotFoundError(f"no item with id {item_id} in index {str(self.path)!r}")
        return row_dict(row)

    def items(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        with self._lock:
            return items_by_id(self.conn, ids)

    def _shard(self, name: str) -> np.ndarray:
        with self._lock:
            arr = self._shards.get(name)
            if arr is None:
                path = self.shard_dir / name
                try:
                    arr = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise ClipzooError(f"embedding shard {str(path)!r} is missing or corrupt ({exc}); "
                                       f"{_rebuild_hint(self.path)}") from None
                self._shards[name] = arr
                while len(self._shards) > 64:
                    self._shards.popitem(last=False)
            else:
                self._shards.move_to_end(name)
            return arr

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids`` [len(ids), dim], in that order (NotFoundError for unknown ids)."""
        meta = self.items(ids)
        dim = self.dim or 0
        out = np.zeros((len(ids), dim), np.float32)
        for i, item_id in enumerate(ids):
            m = meta.get(int(item_id))
            if m is None:
                raise NotFoundError(f"no item with id {item_id} in index {str(self.path)!r}")
            out[i] = self._shard(m["shard"])[m["row"]]
        return out

    def all_vectors(self, partition: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n] int64, vectors [n, dim]) of every committed item (of one partition), ids ascending."""
        with self._lock:
            if partition is None:
                rows = self.conn.execute("SELECT id, shard, row FROM items ORDER BY id").fetchall()
            else:
                rows = self.conn.execute("SELECT id, shard, row FROM items WHERE partition=? ORDER BY id",
                                         (partition,)).fetchall()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        x = np.zeros((len(rows), self.dim or 0), np.float32)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, (_, shard, row) in enumerate(rows):
            by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            arr = np.load(self.shard_dir / shard, mmap_mode="r")
            dst = np.fromiter((p[0] for p in pairs), np.int64, len(pairs))
            src = np.fromiter((p[1] for p in pairs), np.int64, len(pairs))
            x[dst] = arr[src]
        return ids, x

    def skipped(self) -> list[tuple[str, str]]:
        with self._lock:
            return [tuple(r) for r in self.conn.execute("SELECT relpath, reason FROM skipped ORDER BY relpath")]  # type: ignore[misc]

    # ------------------------------------------------------------------ writing
    def check_model(self, spec: str, alias: str | None = None, dim: int | None = None) -> None:
        """Record the model on first use; refuse a different one (its vectors would not be comparable).

        Specs are compared first; a different spec string is accepted when it resolves to the same card."""
        old_spec, old_alias = self.get_meta("model_spec"), self.get_meta("model_alias")
        if old_spec is None:
            self.set_meta(model_spec=spec, **({"model_alias": alias} if alias else {}))
        elif spec != old_spec or (alias and old_alias and alias != old_alias):
            same = False
            if old_alias and spec != old_spec:
                if alias is None:
                    try:
                        alias = REGISTRY.resolve(spec).alias
                    except ClipzooError:
                        alias = None
                same = alias == old_alias
            if not same:
                raise ClipzooError(f"index {str(self.path)!r} was built with model {old_spec!r}, not {spec!r}; "
                                   "embeddings of different models cannot be mixed: pass a new --out (or the "
                                   "same model)")
        if alias and not old_alias:
            self.set_meta(model_alias=alias)
        if dim is not None:
            old_dim = self.dim
            if old_dim is None:
                self.set_meta(dim=int(dim))
            elif old_dim != int(dim):
                raise ClipzooError(f"index {str(self.path)!r} holds {old_dim}-dim embeddings but the model gives "
                                   f"{dim}; pass a new --out")

    def add(self, rows: Sequence[ItemRow], vectors: np.ndarray) -> list[int]:
        """Write ``vectors`` as a new shard, then insert ``rows`` (replacing rows of the same relpath)
        in one transaction. Returns the item ids (an updated file keeps its id)."""
        if len(rows) != len(vectors):
            raise ValueError(f"{len(rows)} rows for {len(vectors)} vectors")
        if not rows:
            return []
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = self.dim
        if dim is None:
            self.set_meta(dim=int(vectors.shape[1]))
        elif vectors.shape[1] != dim:
            raise ClipzooError(f"index {str(self.path)!r} holds {dim}-dim embeddings, got {vectors.shape[1]}")
        if not np.all(np.isfinite(vectors)):  # never enters an index: scores must stay cosines
            raise ClipzooError(f"refusing to add non-finite embeddings to index {str(self.path)!r}")
        name, entry = self._write_shard(vectors)                           # 1. the shard, whole or absent
        ids: list[int] = []
        with self._lock, self._transaction():                               # 2. its rows, all or none
            self.conn.execute("INSERT OR REPLACE INTO shards(name, size, sha256) VALUES (?,?,?)", (name, *entry))
            for i, r in enumerate(rows):
                cur = self.conn.execute(
                    "INSERT INTO items(relpath, size, mtime_ns, sha256, caption, partition, shard, row) "
                    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(relpath) DO UPDATE SET size=excluded.size, "
                    "mtime_ns=excluded.mtime_ns, sha256=excluded.sha256, caption=excluded.caption, "
                    "partition=excluded.partition, shard=excluded.shard, row=excluded.row RETURNING id",
                    (r.relpath, int(r.size), int(r.mtime_ns), r.sha256, r.caption, r.partition, name, i))
                ids.append(int(cur.fetchone()[0]))
            self.conn.executemany("DELETE FROM skipped WHERE relpath=?", [(r.relpath,) for r in rows])
            self._bump()
        return ids

    def _write_shard(self, vectors: np.ndarray) -> tuple[str, tuple[int, str]]:
        """A new shard file (fsynced) -> (its name, (size, sha256)) for the shards table."""
        buf = io.BytesIO()
        np.save(buf, vectors)
        data = buf.getvalue()
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}.npy"
        durable_write(self.shard_dir / name, lambda f: f.write(data))
        return name, (len(data), hashlib.sha256(data).hexdigest())

    def shard_entries(self) -> dict[str, tuple[int, str]]:
        """name -> (size, sha256) recorded for the shards (shards written before the table: absent)."""
        with self._lock:
            return {r[0]: (r[1], r[2]) for r in self.conn.execute("SELECT name, size, sha256 FROM shards")}

    def remove_ids(self, ids: Iterable[int]) -> int:
        """Remove items by id; returns how many existed."""
        ids = [int(i) for i in ids]
        with self._lock, self._transaction():
            n = sum(self.conn.execute("DELETE FROM items WHERE id=?", (i,)).rowcount for i in ids)
            self._bump()
        return n

    def remove(self, relpaths: Iterable[str]) -> int:
        if not (relpaths := list(relpaths)):
            return 0
        with self._lock, self._transaction():
            self.conn.executemany("DELETE FROM items WHERE relpath=?", [(p,) for p in relpaths])
            self._bump()
        return len(relpaths)

    def touch(self, updates: Iterable[tuple[str, int, int, str | None]]) -> None:
        """Refresh (size, mtime_ns, caption) of files whose content did not change: a new generation, so that the
        next publish carries them (an edited caption never reached search: the snapshot was not republished)."""
        updates = list(updates)
        if not updates:
            return
        with self._lock, self._transaction():
            self.conn.executemany("UPDATE items SET size=?, mtime_ns=?, caption=? WHERE relpath=?",
                                  [(s, m, c, p) for p, s, m, c in updates])
            self._bump()

    def set_skipped(self, skipped: Sequence[tuple[str, str]], replace: bool = True) -> None:
        with self._lock, self._transaction():
            if replace:
                self.conn.execute("DELETE FROM skipped")
            self.conn.executemany("INSERT OR REPLACE INTO skipped(relpath, reason) VALUES (?, ?)", list(skipped))

    # ------------------------------------------------------------------ maintenance
    def referenced_shards(self) -> dict[str, int]:
        with self._lock:
            return {r[0]: r[1] for r in self.conn.execute("SELECT shard, count(*) FROM items GROUP BY shard")}

    def cleanup(self) -> int:
        """Delete temporary files and shards no committed row refers to; returns how many were removed."""
        if not self.shard_dir.is_dir():
            return 0
        used = self.referenced_shards()
        removed = 0
        for p in self.shard_dir.iterdir():
            if p.name.endswith(".part") or (p.suffix == ".npy" and p.name not in used):
                with self._lock, self._transaction():
                    self._shards.pop(p.name, None)
                    self.conn.execute("DELETE FROM shards WHERE name=?", (p.name,))
                p.unlink(missing_ok=True)
                removed += 1
        return removed

    def compact(self, min_dead_fraction: float = 0.5, target_rows: int = 65536) -> bool:
        """Rewrite live rows into fresh shards when more than ``min_dead_fraction`` of stored rows are dead
        or shards are many and small; crash-safe like :meth:`add`. Returns whether it rewrote."""
        used = self.referenced_shards()
        if not used:
            self.cleanup()
            return False
        stored = 0
        for name in used:
            try:
                stored += int(np.load(self.shard_dir / name, mmap_mode="r").shape[0])
            except (OSError, ValueError):
                return False
        live = sum(used.values())
        small = len(used) > 16 and live / len(used) < target_rows / 8
        if (stored - live) / max(stored, 1) <= min_dead_fraction and not small:
            return False
        ids, x = self.all_vectors()
        for start in range(0, len(ids), target_rows):
            chunk_ids, chunk = ids[start:start + target_rows], x[start:start + target_rows]
            name, entry = self._write_shard(np.ascontiguousarray(chunk, dtype=np.float32))
            with self._lock, self._transaction():
                self.conn.execute("INSERT OR REPLACE INTO shards(name, size, sha256) VALUES (?,?,?)", (name, *entry))
                self.conn.executemany("UPDATE items SET shard=?, row=? WHERE id=?",
                                      [(name, i, int(item_id)) for i, item_id in enumerate(chunk_ids)])
        self.cleanup()
        return True

    def close(self) -> None:
        with self._lock:
            self._shards.clear()
            self.conn.close()

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def iter_items(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            rows = self.conn.execute(f"SELECT {ITEM_COLUMNS} FROM items ORDER BY id").fetchall()
        for row in rows:
            yield row_dict(row)
