"""What a Milvus collection of the index holds, row by row: its schema, the rows built from the item records,
our partitions as Milvus partitions, and the difference between a collection and the rows it should hold.

Fields: ``id`` (the item id, primary key), ``vector`` (COSINE), ``partition`` (the item's partition, ``""`` for
items outside any), ``path`` (its path relative to the indexed folder), ``caption`` (nullable) and ``sha256``
(the content hash; for a row indexed from embeddings, the hash of its vector). Each of our partitions is a
Milvus partition (``p_<hash of its name>``: Milvus allows only letters, digits and ``_`` in the name) while there
are at most :data:`MAX_MILVUS_PARTITIONS`; beyond that (Milvus caps partitions per collection) every row stays in
``_default`` and a partition is searched through a filter on the ``partition`` field instead. A store without
item records (``rows=None``) keeps empty metadata.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pymilvus

__all__ = ["MAX_MILVUS_PARTITIONS", "DEFAULT_PARTITION", "VARCHAR_MAX", "collection_schema", "milvus_partition",
           "partition_filter", "item_records", "entity", "fingerprint", "read_fingerprints", "other_ids", "chunks"]

MAX_MILVUS_PARTITIONS = 1000
"""Our partitions mapped one to one onto Milvus partitions up to this many (Milvus's own cap is 1024 by default)."""
DEFAULT_PARTITION = "_default"
VARCHAR_MAX = 65_535
"""Milvus's longest VARCHAR, in bytes: a longer path or caption is cut there (the index's SQLite keeps it whole)."""
PARTITION_MAX = 1_024
HASH_LEN = 64
QUERY_BATCH = 4_096
NOT_IN_MAX = 200_000
RESULT_WINDOW = 16_384  # Milvus returns at most this many rows per query

Records = Callable[[list[int]], dict[int, dict[str, Any]]]
"""ids -> {id: {"relpath", "caption", "sha256", "partition", …}}: the item records (``EmbeddingStore.items``)."""


def collection_schema(dim: int) -> Any:
    """The collection's schema for ``dim``-dim vectors."""
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
    schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=int(dim))
    schema.add_field("partition", pymilvus.DataType.VARCHAR, max_length=PARTITION_MAX)
    schema.add_field("path", pymilvus.DataType.VARCHAR, max_length=VARCHAR_MAX)
    schema.add_field("caption", pymilvus.DataType.VARCHAR, max_length=VARCHAR_MAX, nullable=True)
    schema.add_field("sha256", pymilvus.DataType.VARCHAR, max_length=HASH_LEN)
    return schema


def milvus_partition(name: str | None) -> str:
    """The Milvus partition of our partition ``name`` (``_default`` for items outside any)."""
    if not name:
        return DEFAULT_PARTITION
    return "p_" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def partition_filter(name: str) -> str:
    """The filter expression that selects partition ``name`` by the ``partition`` field."""
    return f"partition == {json.dumps(_cut(name, PARTITION_MAX), ensure_ascii=False)}"


def _cut(text: str | None, limit: int) -> str | None:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary)."""
    if text is None:
        return None
    data = text.encode("utf-8", "surrogatepass")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def item_records(rows: Records | None, ids: np.ndarray, x: np.ndarray) -> dict[int, tuple[str, str, str | None, str]]:
    """``{id: (partition, path, caption, sha256)}`` of ``ids`` (vectors ``x``) as the collection stores them: empty
    metadata for ids without a record; a row with no content hash (indexed from embeddings: no file was read) gets
    ``emb:`` + the hash of its vector, so a changed vector is a changed row."""
    found = rows([int(i) for i in ids]) if rows is not None and len(ids) else {}
    out = {}
    for k, i in enumerate(ids.tolist()):
        r = found.get(int(i)) or {}
        sha = str(r.get("sha256") or "") or "emb:" + hashlib.sha256(x[k].tobytes()).hexdigest()[:HASH_LEN - 4]
        out[int(i)] = (_cut(r.get("partition") or "", PARTITION_MAX), _cut(r.get("relpath") or "", VARCHAR_MAX),
                       _cut(r.get("caption"), VARCHAR_MAX), sha[:HASH_LEN])
    return out


def entity(item_id: int, vector: np.ndarray, record: tuple[str, str, str | None, str]) -> dict[str, Any]:
    """One row of the collection."""
    partition, path, caption, sha = record
    return {"id": int(item_id), "vector": vector.tolist(), "partition": partition, "path": path, "caption": caption,
            "sha256": sha}


def fingerprint(hit: dict[str, Any]) -> tuple[str, str, str | None, str]:
    """The metadata of a stored row, comparable with an :func:`item_records` value."""
    return hit.get("partition") or "", hit.get("path") or "", hit.get("caption"), hit.get("sha256") or ""


def read_fingerprints(client: Any, collection: str, ids: list[int]) -> dict[int, tuple[str, str, str | None, str]]:
    """The stored metadata of those of ``ids`` that ``collection`` holds (what a sync compares; no vectors read)."""
    out: dict[int, tuple[str, str, str | None, str]] = {}
    for chunk in chunks(ids, QUERY_BATCH):
        hits = client.query(collection, filter=f"id in {chunk}",
                            output_fields=["id", "partition", "path", "caption", "sha256"])
        out.update((int(h["id"]), fingerprint(h)) for h in hits)
    return out


def other_ids(client: Any, collection: str, ids: list[int]) -> list[int]:
    """The ids ``collection`` holds that are not among ``ids`` (a filter up to :data:`NOT_IN_MAX` ids, else a scan)."""
    if len(ids) <= NOT_IN_MAX:
        return [int(h["id"]) for h in client.query(collection, filter=f"id not in {ids}", output_fields=["id"],
                                                  limit=RESULT_WINDOW)]
    wanted, out = set(ids), []
    it = client.query_iterator(collection, batch_size=QUERY_BATCH, filter="", output_fields=["id"])
    try:
        while batch := it.next():
            out += [int(h["id"]) for h in batch if int(h["id"]) not in wanted]
    finally:
        it.close()
    return out


def chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """``items`` in lists of at most ``size``."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
