"""The Milvus vector store: one Milvus collection per built store, in Milvus Lite or a Milvus server.

``uri`` is a Milvus Lite database file (embedded, no server: ``clipzoo index build … --store milvus`` puts
``index.milvus.db`` inside the index folder) or a server's ``http://HOST:19530``. The collection holds
``id`` (the item id, primary key), ``vector`` (COSINE) and ``partition``; its index is chosen by size as
for FAISS: FLAT below :data:`~clipzoo.index.stores.faiss_kinds.FLAT_MAX` vectors, HNSW up to
:data:`~clipzoo.index.stores.faiss_kinds.HNSW_MAX`, IVF_FLAT above. Recall@10 against exact search is
measured on a sample when it is built.

What :meth:`MilvusStore.save` writes is a small JSON pointer (``*.milvus.json``: the URI, relative to the
pointer when it is a file beside it, and the collection); the rows live in Milvus. Saving renames the
collection after the pointer (``clipzoo_<hash of host and folder>_<pointer name>``) and drops the folder's
collections that no pointer names any more, so rebuilds do not pile up collections (the generation before
the current one stays until the next save: its pointers are removed only after the swap). ``pip install
'clipzoo[milvus]'`` (pymilvus, milvus-lite).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pymilvus

from ...errors import ClipzooError
from ...extras import require
from ...files import atomic_write
from .base import normalize, recall_at_k
from .faiss_kinds import FLAT_MAX, HNSW_MAX, nlist_for

__all__ = ["MilvusStore", "STORE", "INDEX_TYPES", "connect"]

INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf_flat": "IVF_FLAT"}
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF = 32, 200, 128
INSERT_ROWS = 5_000
_CLIENTS: dict[str, Any] = {}


def _is_server(uri: str) -> bool:
    return "://" in uri


def connect(uri: str) -> Any:
    """A MilvusClient for ``uri`` (one per URI in a process); one line naming the URI when it cannot be reached."""
    client = _CLIENTS.get(uri)
    if client is not None:
        return client
    if not _is_server(uri):
        require("milvus_lite", "Milvus Lite (--store milvus with a local .db file)")
    if not _is_server(uri) and not Path(uri).parent.is_dir():
        raise ClipzooError(f"cannot open Milvus Lite database {uri!r}: its folder does not exist; pass --uri "
                           "FILE.db in an existing folder, or http://HOST:19530 for a Milvus server")
    try:
        client = pymilvus.MilvusClient(uri=uri, timeout=10)
    except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException / grpc errors for any failure
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClipzooError(f"cannot reach Milvus at {uri!r} ({first}); start the server, or pass --uri FILE.db "
                           "for embedded Milvus Lite") from None
    _CLIENTS[uri] = client
    return client


def _owner_prefix(folder: Path) -> str:
    """``clipzoo_<hash>_``: the collections whose pointer files live in ``folder`` on this host."""
    owner = f"{socket.gethostname()}:{Path(folder).resolve()}"
    return f"clipzoo_{hashlib.sha256(owner.encode('utf-8')).hexdigest()[:12]}_"


def _choose_kind(n: int) -> str:
    return "flat" if n < FLAT_MAX else "hnsw" if n <= HNSW_MAX else "ivf_flat"


def _exact_top(x: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ x.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[top]


@dataclass
class MilvusStore:
    """A Milvus collection over item ids. A :class:`~clipzoo.index.stores.base.VectorStore`."""

    name: ClassVar[str] = "milvus"
    suffix: ClassVar[str] = ".milvus.json"

    client: Any
    uri: str
    collection: str
    kind: str
    count: int
    dim: int
    params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float | None = None
    build_seconds: float = 0.0

    # ------------------------------------------------------------------ building and opening
    @classmethod
    def build(cls, ids: Any, vectors: Any, *, uri: str, kind: str | None = None, collection: str | None = None,
              recall_sample: int = 200, seed: int = 0, **_ignored: Any) -> MilvusStore:
        """A new collection in the Milvus at ``uri`` holding ``vectors`` [n, d] (normalised here) under ``ids``."""
        t0 = time.perf_counter()
        x = normalize(vectors) if len(vectors) else np.zeros((0, np.asarray(vectors).shape[-1]), np.float32)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        n, d = x.shape
        if ids.shape[0] != n:
            raise ValueError(f"{ids.shape[0]} ids for {n} vectors")
        kind = kind or _choose_kind(n)
        if kind not in INDEX_TYPES:
            raise ClipzooError(f"unknown Milvus index kind {kind!r}; pass one of {', '.join(INDEX_TYPES)}")
        client = connect(uri)
        name = collection or f"clipzoo_{uuid.uuid4().hex[:16]}"
        params, build_params = cls._params(kind, n)
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=int(d))
        schema.add_field("partition", pymilvus.DataType.VARCHAR, max_length=512)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=INDEX_TYPES[kind], metric_type="COSINE",
                               params=build_params)
        client.create_collection(name, schema=schema, index_params=index_params)
        store = cls(client, uri, name, kind, 0, int(d), params)
        store.add(ids, x)
        if n:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, min(recall_sample, n), replace=False))
            _, found = store.search(x[sample], 10)
            store.recall_at_10 = round(recall_at_k(found, _exact_top(x, ids, x[sample], 10), 10), 4)
        store.build_seconds = time.perf_counter() - t0
        return store

    @staticmethod
    def _params(kind: str, n: int) -> tuple[dict[str, int], dict[str, int]]:
        """(search parameters, index build parameters) of ``kind`` for ``n`` vectors."""
        if kind == "hnsw":
            return {"ef": HNSW_EF}, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
        if kind == "ivf_flat":
            nlist = nlist_for(max(n, 1))
            return {"nprobe": max(16, nlist // 8)}, {"nlist": nlist}
        return {}, {}

    @classmethod
    def open(cls, path: str | os.PathLike, info: dict[str, Any] | None = None, *, mmap: bool = True) -> MilvusStore:
        """Connect to the collection that the pointer file ``path`` names."""
        path = Path(path)
        try:
            ref = json.loads(path.read_text("utf-8"))
            uri, name = ref["uri"], ref["collection"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClipzooError(f"Milvus pointer {str(path)!r} is unreadable ({type(exc).__name__})") from None
        if not _is_server(uri) and not os.path.isabs(uri):
            uri = os.path.normpath(path.parent / uri)
        client = connect(uri)
        if not client.has_collection(name):
            raise ClipzooError(f"Milvus at {uri!r} has no collection {name!r} (dropped, or another database?)")
        client.load_collection(name)
        store = cls(client, uri, name, ref.get("kind", "flat"), 0, int(ref.get("dim", 0)), dict(ref.get("params", {})),
                    ref.get("recall_at_10"))
        store.count = store._row_count()
        return store

    def _row_count(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    # ------------------------------------------------------------------ the VectorStore operations
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised queries [m, d] -> (cosine scores [m, k], item ids [m, k]; -1 where fewer than k)."""
        q = normalize(queries)
        if q.shape[1] != self.dim:
            raise ClipzooError(f"a query of {q.shape[1]} dims cannot search an index of {self.dim}-dim vectors")
        k = int(max(1, k))
        if self.count == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        res = self.client.search(self.collection, data=q.tolist(), limit=k, anns_field="vector", output_fields=["id"],
                                 search_params={"metric_type": "COSINE", "params": dict(self.params)})
        scores = np.full((len(q), k), -np.inf, np.float32)
        found = np.full((len(q), k), -1, np.int64)
        for i, hits in enumerate(res):
            for j, hit in enumerate(hits[:k]):
                scores[i, j], found[i, j] = hit["distance"], hit["id"]
        return scores, found

    def add(self, ids: Any, vectors: Any) -> None:
        """Insert (or replace) ``vectors`` [m, d] under item ``ids`` [m]; visible to the next search."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return
        x = normalize(vectors)
        if x.shape[1] != self.dim:
            raise ClipzooError(f"vectors of {x.shape[1]} dims cannot be added to an index of {self.dim}-dim vectors")
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"{ids.shape[0]} ids for {x.shape[0]} vectors")
        for lo in range(0, len(ids), INSERT_ROWS):
            rows = [{"id": int(i), "vector": v.tolist(), "partition": ""}
                    for i, v in zip(ids[lo:lo + INSERT_ROWS], x[lo:lo + INSERT_ROWS])]
            self.client.upsert(self.collection, rows)
        self.count = self._row_count()

    def remove(self, ids: Any) -> int:
        """Delete the vectors of item ``ids``; returns how many were removed."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        if not ids:
            return 0
        before = self.count
        self.client.delete(self.collection, ids=ids)
        self.count = self._row_count()
        return before - self.count

    def save(self, path: str | os.PathLike) -> Path:
        """Name the collection after ``path``, flush it and write its pointer file (whole or absent); then drop
        this folder's collections that no pointer file in it names any more (left by earlier rebuilds)."""
        path = Path(path)
        prefix = _owner_prefix(path.parent)
        target = prefix + re.sub(r"\W", "_", path.name.removesuffix(self.suffix))
        if self.collection != target:
            if self.client.has_collection(target):  # saved again under the same name
                self.client.drop_collection(target)
            self.client.rename_collection(self.collection, target)
            self.collection = target
        self.client.flush(self.collection)
        uri = self.uri
        if not _is_server(uri):
            uri = os.path.relpath(os.path.abspath(uri), os.path.abspath(path.parent))
        ref = {**self.describe(), "uri": uri, "collection": self.collection}
        atomic_write(path, lambda f: f.write(json.dumps(ref, indent=1).encode("utf-8")))
        self._drop_orphans(path.parent, prefix)
        return path

    def _drop_orphans(self, folder: Path, prefix: str) -> None:
        named = set()
        for p in folder.glob(f"*{self.suffix}"):
            try:
                named.add(json.loads(p.read_text("utf-8"))["collection"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        for name in self.client.list_collections():
            if name.startswith(prefix) and name not in named:
                self.client.drop_collection(name)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "dim": self.dim, "params": dict(self.params),
                "recall_at_10": self.recall_at_10, "build_seconds": round(self.build_seconds, 3),
                "collection": self.collection, "uri": self.uri if _is_server(self.uri) else os.path.basename(self.uri)}

    def __len__(self) -> int:
        return self.count


STORE = MilvusStore
