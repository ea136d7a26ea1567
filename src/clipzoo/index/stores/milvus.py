"""The Milvus vector store: one Milvus collection per index, in Milvus Lite or a Milvus server.

``uri`` is a Milvus Lite database file (embedded, no server: ``clipzoo index build … --store milvus`` puts
``index.milvus.db`` inside the index folder) or a server's ``http://HOST:19530``. The collection's fields are
``id`` (the item id, primary key), ``vector`` (COSINE), ``partition``, ``path``, ``caption`` and ``sha256`` (the
content hash), and the index's partitions are Milvus partitions (:mod:`.milvus_rows`): the store of one partition
(:meth:`MilvusStore.partition_store`) is a view of the same collection that searches its Milvus partition only. The
vector index is chosen by size as for FAISS (:func:`choose_kind`): FLAT below
:data:`~clipzoo.index.stores.faiss_kinds.FLAT_MAX` vectors, HNSW up to
:data:`~clipzoo.index.stores.faiss_kinds.HNSW_MAX`, IVF_FLAT above, and IVF_SQ8 where a ``memory_budget`` is too
small for the raw vectors (FAISS's OPQ+IVF+PQ; IVF_SQ8 also runs in Milvus Lite). Recall@10 against exact search
is measured on a sample when it is built.

**Synced, not rebuilt.** Given ``previous`` (the pointer of the index's published store) and the item records
(``rows``), :meth:`MilvusStore.build` updates that collection in place when it is still the right kind: new
rows and rows whose metadata (content hash, path, partition, caption) changed are written (upserted: a changed
row is replaced without a gap), then the rows gone are deleted, the rest stay — so the service's ``POST /items``
and ``DELETE /items/{id}`` write one row each to Milvus (after a metadata comparison of the rows) and are visible
to the next search (Strong consistency). A sync stopped midway leaves extra rows, never a published row missing;
``clipzoo index verify`` compares the row count with the manifest (:meth:`MilvusStore.verify_rows`).

What :meth:`MilvusStore.save` writes is a small JSON pointer (``*.milvus.json``: the URI, relative to the
pointer when it is a file beside it, the collection and, for a partition, its name); the rows live in Milvus.
The first save names a new collection after its pointer (``clipzoo_<hash of host and folder>_<pointer name>``)
and drops the folder's collections that no pointer names any more, so rebuilds do not pile up collections.
Opening a Milvus, and the one-line errors when it cannot be (a Milvus Lite file open in another process: one
process per ``.db``), is :mod:`.milvus_client`. ``pip install 'clipzoo[milvus]'`` (pymilvus, milvus-lite).
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
import pymilvus  # noqa: F401 - imported here too: without it, importing this module is the ImportError get_store names

from ...errors import ClipzooError
from ...files import atomic_write_text
from .base import StoreUnavailableError, normalize, recall_at_k
from .faiss_kinds import FLAT_MAX, HNSW_MAX, choose_index, nlist_for
from .milvus_client import CLIENTS, connect
from .milvus_client import is_server as _is_server
from .milvus_client import resolved as _resolved
from .milvus_rows import (
    MAX_MILVUS_PARTITIONS,
    Records,
    chunks,
    collection_schema,
    entity,
    item_records,
    milvus_partition,
    other_ids,
    partition_filter,
    read_fingerprints,
)

__all__ = ["MilvusStore", "STORE", "INDEX_TYPES", "connect", "choose_kind", "FLAT_MAX", "HNSW_MAX"]

INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf_flat": "IVF_FLAT", "ivf_sq8": "IVF_SQ8"}
_FROM_FAISS = {"flat": "flat", "hnsw": "hnsw", "ivf_flat": "ivf_flat", "opq_ivf_pq": "ivf_sq8"}
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF = 32, 200, 128
INSERT_ROWS = 5_000
NO_BUDGET = 1 << 62
_CLIENTS = CLIENTS  # the open clients (tests drop one to reconnect as a new process would)


def choose_kind(n: int, d: int, memory_budget: int | None = None) -> str:
    """The Milvus index for ``n`` vectors of ``d`` dims, by FAISS's rule (:func:`choose_index`): flat, hnsw,
    ivf_flat, or ivf_sq8 where ``memory_budget`` (bytes; default: no limit) is too small for the raw vectors."""
    kind, _ = choose_index(n, d, NO_BUDGET if memory_budget is None else int(memory_budget))
    return _FROM_FAISS[kind]


def _read_ref(path: str | os.PathLike) -> dict[str, Any]:
    """A pointer file's record with its URI resolved (a Lite file is relative to the pointer)."""
    path = Path(path)
    try:
        ref = json.loads(path.read_text("utf-8"))
        ref["uri"], ref["collection"]  # noqa: B018 - shape check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClipzooError(f"Milvus pointer {str(path)!r} is unreadable ({type(exc).__name__})") from None
    if not _is_server(ref["uri"]) and not os.path.isabs(ref["uri"]):
        ref["uri"] = os.path.normpath(path.parent / ref["uri"])
    return ref


def _previous(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The record of the pointer ``path``; None when there is none or it is unreadable (a repair rebuilds)."""
    try:
        return _read_ref(path) if path is not None and Path(path).is_file() else None
    except ClipzooError:
        return None


def _owner_prefix(folder: Path) -> str:
    """``clipzoo_<hash>_``: the collections whose pointer files live in ``folder`` on this host."""
    owner = f"{socket.gethostname()}:{Path(folder).resolve()}"
    return f"clipzoo_{hashlib.sha256(owner.encode('utf-8')).hexdigest()[:12]}_"


def _exact_top(x: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ x.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[top]


@dataclass
class MilvusStore:
    """A Milvus collection over item ids (or one partition of it). A
    :class:`~clipzoo.index.stores.base.VectorStore`."""

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
    partition: str | None = None  # a view of this partition of the collection
    mode: str = "partitions"  # our partitions as Milvus partitions, or ("filter") by the partition field
    fresh: bool = False  # created by this build under a temporary name: named after its pointer on save
    synced: dict[str, int] | None = None  # updated in place: rows written (new or changed), rows deleted

    # ------------------------------------------------------------------ building and opening
    @classmethod
    def build(cls, ids: Any, vectors: Any, *, uri: str | None = None, kind: str | None = None,
              memory_budget: int | None = None, collection: str | None = None, rows: Records | None = None,
              previous: str | os.PathLike | None = None, default_uri: str | None = None, recall_sample: int = 200,
              seed: int = 0, **_ignored: Any) -> MilvusStore:
        """A collection in the Milvus at ``uri`` holding ``vectors`` [n, d] (normalised here) under ``ids``.

        ``rows``: the item records (ids -> {id: record}) for the path, caption, content hash and partition
        fields. ``previous``: the pointer of the store this one replaces; its collection is synced in place
        when it is in the same Milvus and of the same kind (``uri`` then defaults to its URI; without either,
        to ``default_uri``)."""
        t0 = time.perf_counter()
        x = normalize(vectors) if len(vectors) else np.zeros((0, np.asarray(vectors).shape[-1]), np.float32)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        n, d = x.shape
        if ids.shape[0] != n:
            raise ValueError(f"{ids.shape[0]} ids for {n} vectors")
        prev = _previous(previous)
        uri = uri or (prev or {}).get("uri") or default_uri
        if not uri:
            raise ClipzooError("the Milvus store needs a URI; pass --uri FILE.db (Milvus Lite) or http://HOST:19530")
        kind = kind or choose_kind(n, d, memory_budget)
        if kind not in INDEX_TYPES:
            raise ClipzooError(f"unknown Milvus index kind {kind!r}; pass one of {', '.join(INDEX_TYPES)}")
        client = connect(uri)
        records = item_records(rows, ids, x)
        names = sorted({r[0] for r in records.values() if r[0]})
        mode = "partitions" if len(names) <= MAX_MILVUS_PARTITIONS else "filter"
        params, build_params = cls._params(kind, n)
        if (prev is not None and rows is not None and collection is None and _resolved(prev["uri"]) == _resolved(uri)
                and (prev.get("kind"), int(prev.get("dim", -1)), prev.get("mode", "partitions")) == (kind, d, mode)
                and prev.get("partition") is None and client.has_collection(prev["collection"])):
            store = cls(client, _resolved(uri), prev["collection"], kind, 0, d, dict(prev.get("params") or params),
                        mode=mode)
            client.load_collection(store.collection)
            store._sync(ids, x, records)
        else:
            name = collection or f"clipzoo_{uuid.uuid4().hex[:16]}"
            index_params = client.prepare_index_params()
            index_params.add_index(field_name="vector", index_type=INDEX_TYPES[kind], metric_type="COSINE",
                                   params=build_params)
            client.create_collection(name, schema=collection_schema(d), index_params=index_params,
                                     consistency_level="Strong")
            store = cls(client, _resolved(uri), name, kind, 0, int(d), params, mode=mode, fresh=collection is None)
            store._insert(ids, x, records)
        store.count = store._row_count()
        if n:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, min(recall_sample, n), replace=False))
            _, found = store.search(x[sample], 10)
            store.recall_at_10 = round(recall_at_k(found, _exact_top(x, ids, x[sample], 10), 10), 4)
        store.build_seconds = time.perf_counter() - t0
        return store

    @classmethod
    def check(cls, uri: str | None = None, default_uri: str | None = None, previous: str | os.PathLike | None = None,
              **_ignored: Any) -> None:
        """Fail in one line when the Milvus a build would write cannot be opened (a build checks before any work):
        ``uri``, else the one the index already uses (``previous``), else its default Lite file once it exists
        (unreachable, open in another process, or no Milvus Lite database)."""
        found = uri or (_previous(previous) or {}).get("uri") or default_uri
        if found and (uri or _is_server(found) or os.path.exists(_resolved(found))):
            connect(found)

    @classmethod
    def verify_rows(cls, path: str | os.PathLike, count: int) -> str | None:
        """What ``clipzoo index verify`` says of the collection behind the pointer ``path`` when its row count is
        not the manifest's ``count`` (a sync was stopped midway) or it is gone; None when they match. A Milvus that
        cannot be opened now (:class:`StoreUnavailableError`: down, or open in another process) is raised: that is
        no fault of the index."""
        try:
            store = cls.open(path)
        except StoreUnavailableError:
            raise
        except ClipzooError as exc:
            return f"its Milvus collection cannot be opened: {exc}"
        if store.count == int(count):
            return None
        return (f"Milvus collection {store.collection!r} holds {store.count} rows, the manifest says {count} (a build "
                "or repair stopped during its sync)")

    @staticmethod
    def _params(kind: str, n: int) -> tuple[dict[str, int], dict[str, int]]:
        """(search parameters, index build parameters) of ``kind`` for ``n`` vectors."""
        if kind == "hnsw":
            return {"ef": HNSW_EF}, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
        if kind in ("ivf_flat", "ivf_sq8"):
            nlist = nlist_for(max(n, 1))
            return {"nprobe": max(16, nlist // 8)}, {"nlist": nlist}
        return {}, {}

    def _insert(self, ids: np.ndarray, x: np.ndarray, records: dict[int, tuple], upsert: bool = False) -> None:
        """Insert rows (``upsert``: or replace those there), each into the Milvus partition of its partition
        (``_default`` in ``filter`` mode)."""
        groups: dict[str, list[int]] = {}
        for k, i in enumerate(ids.tolist()):
            groups.setdefault(milvus_partition(records[i][0] if self.mode == "partitions" else ""), []).append(k)
        known = set(self.client.list_partitions(self.collection)) if groups else set()
        write = self.client.upsert if upsert else self.client.insert
        for part, rows in groups.items():
            if part not in known:
                self.client.create_partition(self.collection, part)
            for chunk in chunks(rows, INSERT_ROWS):
                write(self.collection, [entity(ids[k], x[k], records[int(ids[k])]) for k in chunk], partition_name=part)

    def _sync(self, ids: np.ndarray, x: np.ndarray, records: dict[int, tuple]) -> None:
        """Make the collection hold exactly these rows, never fewer on the way: new and changed rows are written
        first (an upsert replaces a changed row without a gap; where Milvus keeps a moved row's copy in its old
        partition, that copy is deleted next), then the rows gone are deleted. A sync stopped midway leaves rows
        that the published items no longer name (searches skip them; the next build deletes them), never one of
        the published rows missing."""
        wanted = ids.tolist()
        stored = read_fingerprints(self.client, self.collection, wanted)
        todo = np.asarray([k for k, i in enumerate(wanted) if stored.get(i) != records[i]], np.int64)
        self._insert(ids[todo], x[todo], records, upsert=True)
        moved: dict[str, list[int]] = {}
        for i in (wanted[k] for k in todo.tolist()):
            if i in stored and stored[i][0] != records[i][0]:
                moved.setdefault(stored[i][0], []).append(i)
        for old, stale in moved.items():  # the moved rows' copies in their old partition, where Milvus keeps both
            for chunk in chunks(stale, INSERT_ROWS):
                self.client.delete(self.collection, filter=f"id in {chunk} and {partition_filter(old)}")
        gone = 0
        while self._row_count() > len(wanted):  # rows whose items are no longer in the index
            others = other_ids(self.client, self.collection, wanted)
            if not others:
                break
            gone += self._delete(others)
        self.synced = {"written": int(len(todo)), "deleted": gone}

    def _delete(self, ids: list[int]) -> int:
        for chunk in chunks(ids, INSERT_ROWS):
            self.client.delete(self.collection, ids=chunk)
        return len(ids)

    def partition_store(self, name: str) -> MilvusStore:
        """The store of partition ``name``: a view of this collection that searches that partition only."""
        view = MilvusStore(self.client, self.uri, self.collection, self.kind, 0, self.dim, dict(self.params),
                           self.recall_at_10, 0.0, partition=name, mode=self.mode)
        view.count = view._row_count()
        return view

    @classmethod
    def open(cls, path: str | os.PathLike, info: dict[str, Any] | None = None, *, mmap: bool = True) -> MilvusStore:
        """Connect to the collection (or the partition of it) that the pointer file ``path`` names."""
        ref = _read_ref(path)
        uri, name = ref["uri"], ref["collection"]
        client = connect(uri)
        if not client.has_collection(name):
            raise ClipzooError(f"Milvus at {uri!r} has no collection {name!r} (dropped, or another database?)")
        client.load_collection(name)
        store = cls(client, _resolved(uri), name, ref.get("kind", "flat"), 0, int(ref.get("dim", 0)),
                    dict(ref.get("params", {})), ref.get("recall_at_10"), partition=ref.get("partition"),
                    mode=ref.get("mode", "partitions"))
        store.count = store._row_count()
        return store

    def _row_count(self) -> int:
        where = "" if self.partition is None else partition_filter(self.partition)
        res = self.client.query(self.collection, filter=where, output_fields=["count(*)"])
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
        where: dict[str, Any] = {}
        if self.partition is not None and self.mode == "partitions":
            where["partition_names"] = [milvus_partition(self.partition)]
        elif self.partition is not None:
            where["filter"] = partition_filter(self.partition)
        res = self.client.search(self.collection, data=q.tolist(), limit=k, anns_field="vector", output_fields=["id"],
                                 search_params={"metric_type": "COSINE", "params": dict(self.params)}, **where)
        scores = np.full((len(q), k), -np.inf, np.float32)
        found = np.full((len(q), k), -1, np.int64)
        for i, hits in enumerate(res):
            for j, hit in enumerate(hits[:k]):
                scores[i, j], found[i, j] = hit["distance"], hit["id"]
        return scores, found

    def add(self, ids: Any, vectors: Any) -> None:
        """Insert (or replace) ``vectors`` [m, d] under item ``ids`` [m], in this store's partition, without item
        metadata (a build with ``rows`` fills it); visible to the next search."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return
        x = normalize(vectors)
        if x.shape[1] != self.dim:
            raise ClipzooError(f"vectors of {x.shape[1]} dims cannot be added to an index of {self.dim}-dim vectors")
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"{ids.shape[0]} ids for {x.shape[0]} vectors")
        records = {i: (self.partition or "", *r[1:]) for i, r in item_records(None, ids, x).items()}
        self._delete(ids.tolist())
        self._insert(ids, x, records)
        self.count = self._row_count()

    def remove(self, ids: Any) -> int:
        """Delete the vectors of item ``ids``; returns how many were removed."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        if not ids:
            return 0
        before = self.count
        self._delete(ids)
        self.count = self._row_count()
        return before - self.count

    def save(self, path: str | os.PathLike) -> Path:
        """Flush the collection and write its pointer file (whole or absent). A new collection is first named
        after ``path``; saving the whole store then drops this folder's collections that no pointer file in it
        names any more (left by earlier rebuilds)."""
        path = Path(path)
        prefix = _owner_prefix(path.parent)
        if self.fresh:
            target = prefix + re.sub(r"\W", "_", path.name.removesuffix(self.suffix))
            if self.client.has_collection(target):  # saved again under the same name
                self.client.drop_collection(target)
            self.client.rename_collection(self.collection, target)
            self.client.load_collection(target)  # a rename releases it
            self.collection, self.fresh = target, False
        self.client.flush(self.collection)
        uri = self.uri
        if not _is_server(uri):
            uri = os.path.relpath(os.path.abspath(uri), os.path.abspath(path.parent))
        ref = {**self.describe(), "uri": uri, "collection": self.collection}
        atomic_write_text(path, json.dumps(ref, indent=1))
        if self.partition is None:
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
        out = {"kind": self.kind, "count": self.count, "dim": self.dim, "params": dict(self.params),
               "recall_at_10": self.recall_at_10, "build_seconds": round(self.build_seconds, 3),
               "collection": self.collection, "mode": self.mode,
               "uri": self.uri if _is_server(self.uri) else os.path.basename(self.uri)}
        if self.partition is not None:
            out["partition"] = self.partition
        if self.synced is not None:
            out["synced"] = dict(self.synced)
        return out

    def __len__(self) -> int:
        return self.count


STORE = MilvusStore
