"""The FAISS vector store: a FAISS index chosen by size and memory budget, tuned to a latency target.

:meth:`FaissStore.build` picks the kind by :func:`~clipzoo.index.stores.faiss_kinds.choose_index`
(Flat below 10k vectors, then HNSW, IVF-Flat, OPQ+IVF+PQ as memory requires), trains it, tunes its
search parameter (``nprobe`` / ``efSearch``, :mod:`~clipzoo.index.stores.faiss_tuning`) and measures
recall@10 against exact search on a held-out sample of the indexed vectors.

Vectors are L2-normalised and searched by inner product, so scores are cosine similarities. Every index
maps FAISS ids to the store's item ids (``add_with_ids``); -1 marks "no result". FAISS itself is imported
only when an index is built, read or written (``pip install 'clipzoo[search]'``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import ClipzooError, UnsupportedError
from .base import normalize, recall_at_k
from .faiss_kinds import (
    FLAT_MAX,
    HNSW_MAX,
    KINDS,
    choose_index,
    default_memory_budget,
    estimate_memory,
    import_faiss,
    key_for,
    nlist_for,
)
from .faiss_tuning import exact_knn, loo_recall, tune

# the store, and the FAISS helpers the tests and benchmarks reach through this module
__all__ = ["FaissStore", "STORE", "build_vectors", "load_vectors", "FLAT_MAX", "HNSW_MAX", "KINDS", "choose_index",
           "key_for", "nlist_for", "estimate_memory", "default_memory_budget", "normalize", "exact_knn",
           "recall_at_k"]


@dataclass
class FaissStore:
    """A FAISS index over item ids with its kind, factory key, search parameters and measured recall.

    A :class:`~clipzoo.index.stores.base.VectorStore`. ``recall_at_10`` describes the index as built;
    :meth:`add` and :meth:`remove` do not re-measure it.
    """

    name: ClassVar[str] = "faiss"
    suffix: ClassVar[str] = ".faiss"

    index: Any
    kind: str
    key: str
    count: int
    dim: int
    params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float | None = None
    latency_p50_ms: float | None = None
    build_seconds: float = 0.0
    read_only: bool = False  # memory-mapped from its file: FAISS aborts the process on a change

    # ------------------------------------------------------------------ building and reading
    @classmethod
    def build(cls, ids: Any, vectors: Any, *, kind: str | None = None, memory_budget: int | None = None,
              latency_target_ms: float = 5.0, recall_target: float = 0.95, recall_sample: int = 200,
              tune: bool = True, seed: int = 0) -> FaissStore:
        """Build, tune and measure an index over ``vectors`` [n, d] (normalised here) with item ``ids`` [n].

        ``kind`` forces one of ``flat``, ``hnsw``, ``ivf_flat``, ``opq_ivf_pq``; by default it is chosen by
        :func:`choose_index` from the count and ``memory_budget`` (bytes; default half the machine's memory).
        """
        t0 = time.perf_counter()
        x = normalize(vectors) if len(vectors) else np.zeros((0, np.asarray(vectors).shape[-1]), np.float32)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
        n, d = x.shape
        if ids.shape[0] != n:
            raise ValueError(f"{ids.shape[0]} ids for {n} vectors")
        if kind is None:
            kind, key = choose_index(n, d, memory_budget)
        else:
            key = key_for(kind, n, d)
        if n == 0 or (kind != "flat" and kind != "hnsw" and n < 2 * nlist_for(n)):
            kind, key = "flat", "Flat"
        rng = np.random.default_rng(seed)
        store = cls(_new_index(kind, key, ids, x, rng), kind, key, n, d)
        if kind != "flat" and n and tune:
            store._tune(ids, x, rng, recall_sample, latency_target_ms, recall_target)
        elif kind == "flat":
            store.recall_at_10 = 1.0 if n else None
        store.build_seconds = time.perf_counter() - t0
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, info: dict[str, Any] | None = None, *, mmap: bool = True) -> FaissStore:
        """Read a FAISS file written by :meth:`save` (memory-mapped, hence read-only, where FAISS allows).

        ``info``: the :meth:`describe` record kept in ``vectors.json``; without it the kind, key and search
        parameters are read from the index itself (and recall is unknown)."""
        faiss = import_faiss()
        path = os.fspath(path)
        index = None
        if mmap:
            try:
                index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:
                index = None
        read_only = index is not None
        if index is None:
            index = faiss.read_index(path)
        info = _read_info(index) if info is None else info
        store = cls(index, info["kind"], info["key"], int(info["count"]), int(info["dim"]),
                    dict(info.get("params") or {}), info.get("recall_at_10"), info.get("latency_p50_ms"),
                    float(info.get("build_seconds") or 0.0), read_only)
        if index.ntotal != store.count or index.d != store.dim:
            raise ClipzooError(f"vector index file {path!r} holds {index.ntotal} vectors of {index.d} dims, its "
                               f"record says {store.count} of {store.dim}")
        store.apply_params()
        return store

    def _tune(self, ids: np.ndarray, x: np.ndarray, rng: np.random.Generator, recall_sample: int,
              latency_target_ms: float, recall_target: float) -> None:
        sample = rng.choice(len(ids), min(recall_sample, len(ids)), replace=False)
        tune_rows, check_rows = sample[: len(sample) // 2], sample[len(sample) // 2:]
        self.params, self.latency_p50_ms, _ = tune(self, ids, x, tune_rows, latency_target_ms, recall_target)
        self.apply_params()
        self.recall_at_10, _ = loo_recall(self.index, ids, x, check_rows)

    def apply_params(self) -> None:
        """Set the recorded search parameters (``nprobe``, ``efSearch``) on the FAISS index."""
        faiss = import_faiss()
        base = _unwrap(self.index)
        if "nprobe" in self.params:
            faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])
        if "efSearch" in self.params and isinstance(base, faiss.IndexHNSW):
            base.hnsw.efSearch = int(self.params["efSearch"])

    # ------------------------------------------------------------------ the VectorStore operations
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised queries [m, d] -> (cosine scores [m, k'], item ids [m, k']; -1 where fewer than k'), k' = k
        up to the vectors held (a k of 2**31 made FAISS allocate that many columns: bad_alloc, the process gone)."""
        q = normalize(queries)
        if q.shape[1] != self.dim:
            raise ClipzooError(f"a query of {q.shape[1]} dims cannot search an index of {self.dim}-dim vectors")
        if self.count == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        return self.index.search(q, int(max(1, min(k, self.count))))

    def add(self, ids: Any, vectors: Any) -> None:
        """Add ``vectors`` [m, d] (normalised here) under item ``ids`` [m]."""
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(ids):
            return
        self._check_writable("add vectors to")
        x = normalize(vectors)
        if x.shape[1] != self.dim:
            raise ClipzooError(f"vectors of {x.shape[1]} dims cannot be added to an index of {self.dim}-dim vectors")
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"{ids.shape[0]} ids for {x.shape[0]} vectors")
        self.index.add_with_ids(x, ids)
        self.count = int(self.index.ntotal)

    def remove(self, ids: Any) -> int:
        """Remove the vectors of item ``ids`` (an HNSW index cannot); returns how many were removed."""
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(ids):
            return 0
        self._check_writable("remove vectors from")
        if self.kind == "hnsw":
            raise UnsupportedError("an HNSW index cannot remove vectors; build it again without them")
        removed = int(self.index.remove_ids(ids))
        self.count = int(self.index.ntotal)
        return removed

    def _check_writable(self, doing: str) -> None:
        if self.read_only:
            raise UnsupportedError(f"cannot {doing} a FAISS index opened memory-mapped (read-only); open it "
                                   "with mmap=False to change it")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the FAISS file atomically (temporary file + rename)."""
        faiss = import_faiss()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "count": self.count, "dim": self.dim, "params": dict(self.params),
                "recall_at_10": self.recall_at_10, "latency_p50_ms": self.latency_p50_ms,
                "build_seconds": round(self.build_seconds, 3)}

    def __len__(self) -> int:
        return self.count


STORE = FaissStore
build_vectors = FaissStore.build
""":meth:`FaissStore.build` as a function."""
load_vectors = FaissStore.open
""":meth:`FaissStore.open` as a function: ``load_vectors(path, info, mmap=True)``."""


def _new_index(kind: str, key: str, ids: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> Any:
    """The FAISS index of ``kind`` (factory ``key``), trained where it needs to be, holding ``x`` under ``ids``."""
    faiss = import_faiss()
    n, d = x.shape
    if kind in ("flat", "hnsw"):
        index = faiss.IndexIDMap2(faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT))
        if n:
            index.add_with_ids(x, ids)
        return index
    index = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    if kind == "opq_ivf_pq":  # fewer OPQ rotations than FAISS's default 50: most of the gain comes early
        opq = faiss.downcast_VectorTransform(index.chain.at(0))
        opq.niter = 12
        opq.max_train_points = min(opq.max_train_points, 32_768)
    nlist = nlist_for(n)
    n_train = int(min(n, max(64 * nlist, 10_000)))
    train = x[np.sort(rng.choice(n, n_train, replace=False))] if n_train < n else x
    index.train(train)
    index.add_with_ids(x, ids)
    return index


def _unwrap(index: Any) -> Any:
    faiss = import_faiss()
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return index


def _read_info(index: Any) -> dict[str, Any]:
    """The :meth:`FaissStore.describe` fields that a FAISS index itself holds (kind, key, count, dim, params)."""
    faiss = import_faiss()
    base = _unwrap(index)
    if isinstance(base, faiss.IndexHNSW):
        kind, key, params = "hnsw", f"HNSW{base.hnsw.nb_neighbors(1)}", {"efSearch": int(base.hnsw.efSearch)}
    elif isinstance(base, faiss.IndexFlat):
        kind, key, params = "flat", "Flat", {}
    else:
        ivf = faiss.extract_index_ivf(index)
        params = {"nprobe": int(ivf.nprobe)}
        if isinstance(index, faiss.IndexPreTransform):
            m, d_out = faiss.downcast_index(ivf).pq.M, index.chain.at(0).d_out
            kind, key = "opq_ivf_pq", f"OPQ{m}_{d_out},IVF{ivf.nlist},PQ{m}"
        else:
            kind, key = "ivf_flat", f"IVF{ivf.nlist},Flat"
    return {"kind": kind, "key": key, "count": int(index.ntotal), "dim": int(index.d), "params": params}
