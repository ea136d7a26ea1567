"""An index's item rows as the SQLite ``items`` table holds them, read into dicts: one place for the columns,
the row dict and the chunked lookup by id, shared by the live store (:mod:`.embedding_store`) and a
published generation's read-only snapshot (:mod:`.generations`)."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .manifest import refused_write

__all__ = ["ITEM_COLUMNS", "row_dict", "items_by_id", "is_sqlite_integer", "connect_read_only"]

ITEM_COLUMNS = "id, relpath, size, mtime_ns, sha256, caption, partition, shard, row"
ID_CHUNK = 500  # ids per `IN (...)` query, under SQLite's bound-parameter limit


def is_sqlite_integer(value: int) -> bool:
    """Whether ``value`` fits SQLite's 64-bit integers: a bigger id (``2**70``) is no item, not an ``OverflowError``."""
    return -(1 << 63) <= value < 1 << 63


def row_dict(row: Sequence[Any]) -> dict[str, Any]:
    """One ``SELECT ITEM_COLUMNS`` row as the item dict callers see."""
    return {"id": row[0], "relpath": row[1], "size": row[2], "mtime": row[3] / 1e9, "mtime_ns": row[3],
            "sha256": row[4], "caption": row[5], "partition": row[6], "shard": row[7], "row": row[8]}


def items_by_id(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The items of ``ids`` found in ``conn``'s ``items`` table (unknown ids are left out); the caller holds
    the connection's lock."""
    ids = [i for i in (int(i) for i in ids) if is_sqlite_integer(i)]
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start:start + ID_CHUNK]
        q = f"SELECT {ITEM_COLUMNS} FROM items WHERE id IN ({','.join('?' * len(chunk))})"
        for row in conn.execute(q, chunk):
            out[row[0]] = row_dict(row)
    return out


def connect_read_only(db: Path, immutable: bool = False) -> sqlite3.Connection:
    """The SQLite file ``db`` opened for reading only: it needs no write permission, free space or writable folder
    (``clipzoo index verify`` of an index on a read-only disk, or of another user's). Where SQLite cannot even set up
    its WAL reader files (no permission to create ``-shm``), or with ``immutable``, the file is read as immutable:
    nobody is writing it."""
    if not immutable:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None,
                               timeout=30)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if not refused_write(exc):
                raise
    return sqlite3.connect(f"{db.as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False,
                           isolation_level=None)
