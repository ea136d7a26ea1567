"""The vector index: a FAISS index chosen by size and memory budget, tuned to a latency target.

The choice follows autofaiss's rules of thumb:

- fewer than :data:`FLAT_MAX` (10k) vectors: exact search (``Flat``);
- HNSW (``HNSW32``) while its graph and vectors fit in the memory budget and the set is small enough to
  build in minutes (:data:`HNSW_MAX`, 200k vectors);
- IVF-Flat (``IVF{nlist},Flat``, nlist ≈ 4√n) while the raw vectors fit in the budget;
- OPQ + IVF + PQ (``OPQ{m}_{4m},IVF{nlist},PQ{m}``) beyond: compressed codes, ~m bytes a vector.

Vectors are L2-normalised and searched by inner product, so scores are cosine similarities. After
building, the search parameter (``nprobe`` for IVF, ``efSearch`` for HNSW) is tuned: the largest value
raised until recall@10 reaches 0.95 and then while the median single-query latency stays within
``latency_target_ms`` (more probes, more recall), and
recall@10 against exact search is measured on a held-out sample of the indexed vectors (each query a
stored vector, itself left out of both result lists).

Every index maps FAISS ids to the store's item ids (``add_with_ids``); -1 marks "no result".
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClipzooError

__all__ = ["FLAT_MAX", "HNSW_MAX", "choose_index", "VectorIndex", "build_vectors", "load_vectors",
           "normalize", "exact_knn", "recall_at_k", "default_memory_budget", "estimate_memory"]

FLAT_MAX = 10_000
HNSW_MAX = 200_000
HNSW_M = 32
NPROBE_CANDIDATES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - a declared dependency
        from ..errors import BackendMissingError

        raise BackendMissingError("the vector index needs FAISS: pip install faiss-cpu") from None
    return faiss


def normalize(x: Any) -> np.ndarray:
    """Rows as contiguous float32, L2-normalised (zero rows stay zero)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def default_memory_budget() -> int:
    """Half the machine's physical memory (bytes), or 4 GiB where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30


def nlist_for(n: int) -> int:
    """IVF cells: ≈ 4√n, at least 1, and at most n/39 so that each cell trains on ~39 points."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def pq_m_for(d: int) -> int:
    """PQ sub-quantizers: d/8 rounded to a divisor of d (64 for 512-d), at least 1."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def estimate_memory(kind: str, n: int, d: int) -> int:
    """Bytes an index of ``kind`` takes in memory for ``n`` vectors of ``d`` dims (ids included)."""
    ids = 16 * n  # id map (both directions for IDMap2) / ivf ids
    if kind == "flat":
        return n * d * 4 + ids
    if kind == "hnsw":
        return n * (d * 4 + 2 * HNSW_M * 4 + 16) + ids
    nlist = nlist_for(n)
    if kind == "ivf_flat":
        return n * d * 4 + nlist * d * 4 + ids
    if kind == "opq_ivf_pq":
        m = pq_m_for(d)
        return n * m + nlist * d * 4 + d * d * 4 + ids
    raise ClipzooError(f"unknown index kind {kind!r}; use one of flat, hnsw, ivf_flat, opq_ivf_pq")


KINDS = ("flat", "hnsw", "ivf_flat", "opq_ivf_pq")


def choose_index(n: int, d: int, memory_budget: int | None = None) -> tuple[str, str]:
    """``(kind, faiss factory key)`` for ``n`` vectors of ``d`` dims within ``memory_budget`` bytes."""
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    if n < FLAT_MAX:
        return "flat", "Flat"
    if n <= HNSW_MAX and estimate_memory("hnsw", n, d) <= budget:
        return "hnsw", f"HNSW{HNSW_M}"
    nlist = nlist_for(n)
    if estimate_memory("ivf_flat", n, d) <= budget:
        return "ivf_flat", f"IVF{nlist},Flat"
    m = pq_m_for(d)
    return "opq_ivf_pq", f"OPQ{m}_{min(d, 4 * m)},IVF{nlist},PQ{m}"


def key_for(kind: str, n: int, d: int) -> str:
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_M}"
    if kind == "ivf_flat":
        return f"IVF{nlist_for(n)},Flat"
    if kind == "opq_ivf_pq":
        m = pq_m_for(d)
        return f"OPQ{m}_{min(d, 4 * m)},IVF{nlist_for(n)},PQ{m}"
    raise ClipzooError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")


# ------------------------------------------------------------------ exact search and recall
def exact_knn(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of queries ``q`` over rows of ``x``: (scores, row indices)."""
    faiss = _faiss()
    return faiss.knn(np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(x, dtype=np.float32),
                     int(min(k, x.shape[0])), metric=faiss.METRIC_INNER_PRODUCT)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean |found[:k] ∩ truth[:k]| / k over queries (-1 entries never match)."""
    hits = 0
    total = 0
    for f, t in zip(found, truth):
        t = [v for v in t[:k] if v >= 0]
        if not t:
            continue
        hits += len(set(int(v) for v in f[:k] if v >= 0) & set(int(v) for v in t))
        total += len(t)
    return hits / total if total else 1.0


def _loo_recall(index, ids: np.ndarray, x: np.ndarray, sample: np.ndarray, k: int = 10,
                truth: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Recall@k of ``index`` for queries = stored vectors ``x[sample]``, each query's own id left out."""
    q = x[sample]
    if truth is None:
        _, rows = exact_knn(x, q, k + 1)
        truth = np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1)
    _, found = index.search(q, k + 1)
    own = ids[sample][:, None]
    t = [[v for v in row if v != o][:k] for row, o in zip(truth, own[:, 0])]
    f = [[v for v in row if v != o][:k] for row, o in zip(found, own[:, 0])]
    return recall_at_k(np.array(f, dtype=object), np.array(t, dtype=object), k), truth


def _p50_latency_ms(index, q: np.ndarray, k: int = 10, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        for i in range(q.shape[0]):
            t0 = time.perf_counter()
            index.search(q[i:i + 1], k)
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


# ------------------------------------------------------------------ the index
@dataclass
class VectorIndex:
    """A FAISS index over item ids with its kind, factory key, search parameters and measured recall."""

    index: Any
    kind: str
    key: str
    count: int
    dim: int
    params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float | None = None
    latency_p50_ms: float | None = None
    build_seconds: float = 0.0

    def apply_params(self) -> None:
        faiss = _faiss()
        base = _unwrap(self.index)
        if "nprobe" in self.params:
            faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])
        if "efSearch" in self.params and isinstance(base, faiss.IndexHNSW):
            base.hnsw.efSearch = int(self.params["efSearch"])

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised queries [m, d] -> (cosine scores [m, k], item ids [m, k]; -1 where fewer than k)."""
        q = normalize(queries)
        if q.shape[1] != self.dim:
            raise ClipzooError(f"a query of {q.shape[1]} dims cannot search an index of {self.dim}-dim vectors")
        if self.count == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        return self.index.search(q, int(max(1, k)))

    def save(self, path: "str | os.PathLike") -> Path:
        """Write the FAISS file atomically (temporary file + rename)."""
        faiss = _faiss()
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


def _unwrap(index):
    faiss = _faiss()
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return index


def build_vectors(ids: Any, vectors: Any, *, kind: str | None = None, memory_budget: int | None = None,
                  latency_target_ms: float = 5.0, recall_target: float = 0.95, recall_sample: int = 200, tune: bool = True,
                  seed: int = 0) -> VectorIndex:
    """Build, tune and measure an index over ``vectors`` [n, d] (normalised here) with item ``ids`` [n].

    ``kind`` forces one of ``flat``, ``hnsw``, ``ivf_flat``, ``opq_ivf_pq``; by default it is chosen by
    :func:`choose_index` from the count and ``memory_budget`` (bytes; default half the machine's memory).
    """
    faiss = _faiss()
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

    if kind in ("flat", "hnsw"):
        index = faiss.IndexIDMap2(faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT))
        if n:
            index.add_with_ids(x, ids)
    else:
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
    vi = VectorIndex(index, kind, key, n, d)

    if kind != "flat" and n and tune:
        sample = rng.choice(n, min(recall_sample, n), replace=False)
        tune_rows, check_rows = sample[: len(sample) // 2], sample[len(sample) // 2:]
        vi.params, vi.latency_p50_ms, _ = _tune(vi, ids, x, tune_rows, latency_target_ms, recall_target)
        vi.apply_params()
        vi.recall_at_10, _ = _loo_recall(index, ids, x, check_rows)
    elif kind == "flat":
        vi.recall_at_10 = 1.0 if n else None
    vi.build_seconds = time.perf_counter() - t0
    return vi


def _tune(vi: VectorIndex, ids: np.ndarray, x: np.ndarray, rows: np.ndarray, latency_target_ms: float,
          recall_target: float = 0.95) -> tuple[dict[str, int], float, float]:
    """Raise the search parameter (``nprobe`` / ``efSearch``) step by step: until recall@10 reaches
    ``recall_target`` as long as p50 latency stays under 4× the target, then further while p50 stays
    within ``latency_target_ms`` (stopping at recall 0.999). Returns ``(params, p50 ms, recall)``."""
    faiss = _faiss()
    if vi.kind == "hnsw":
        name, candidates = "efSearch", EF_CANDIDATES
    else:
        name = "nprobe"
        nlist = faiss.extract_index_ivf(vi.index).nlist
        candidates = tuple(c for c in NPROBE_CANDIDATES if c < nlist) + (nlist,)
    q = x[rows]
    truth = None
    best: tuple[dict[str, int], float, float] | None = None
    for value in candidates:
        vi.params = {name: int(value)}
        vi.apply_params()
        recall, truth = _loo_recall(vi.index, ids, x, rows, truth=truth)
        _p50_latency_ms(vi.index, q[:5])  # warm-up
        latency = _p50_latency_ms(vi.index, q[: min(100, len(q))])
        if best is not None:
            limit = latency_target_ms if best[2] >= recall_target else 4 * latency_target_ms
            if latency > limit:
                break
        best = (dict(vi.params), latency, recall)
        if recall >= 0.999:
            break
    assert best is not None
    return best


def load_vectors(path: "str | os.PathLike", info: dict[str, Any], mmap: bool = True) -> VectorIndex:
    """Read a FAISS file written by :meth:`VectorIndex.save` (memory-mapped where FAISS allows)."""
    faiss = _faiss()
    path = os.fspath(path)
    index = None
    if mmap:
        try:
            index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            index = None
    if index is None:
        index = faiss.read_index(path)
    vi = VectorIndex(index, info["kind"], info["key"], int(info["count"]), int(info["dim"]),
                     dict(info.get("params") or {}), info.get("recall_at_10"), info.get("latency_p50_ms"),
                     float(info.get("build_seconds") or 0.0))
    if index.ntotal != vi.count or index.d != vi.dim:
        raise ClipzooError(f"vector index file {path!r} holds {index.ntotal} vectors of {index.d} dims, its "
                           f"record says {vi.count} of {vi.dim}")
    vi.apply_params()
    return vi
