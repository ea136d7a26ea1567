"""Exact search, recall and the tuning of a FAISS index's search parameter to a latency target.

After building, the search parameter (``nprobe`` for IVF, ``efSearch`` for HNSW) is tuned: the largest
value raised until recall@10 reaches 0.95 and then while the median single-query latency stays within
``latency_target_ms`` (more probes, more recall). Recall@10 against exact search is measured on a
held-out sample of the indexed vectors (each query a stored vector, itself left out of both result lists).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .base import recall_at_k
from .faiss_kinds import import_faiss

__all__ = ["NPROBE_CANDIDATES", "EF_CANDIDATES", "exact_knn", "loo_recall", "p50_latency_ms", "tune"]

NPROBE_CANDIDATES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def exact_knn(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of queries ``q`` over rows of ``x``: (scores, row indices)."""
    faiss = import_faiss()
    return faiss.knn(np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(x, dtype=np.float32),
                     int(min(k, x.shape[0])), metric=faiss.METRIC_INNER_PRODUCT)


def loo_recall(index: Any, ids: np.ndarray, x: np.ndarray, sample: np.ndarray, k: int = 10,
               truth: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Recall@k of the FAISS ``index`` for queries = stored vectors ``x[sample]``, each query's own id left
    out; returns ``(recall, exact item ids)`` (pass the latter back as ``truth`` to skip exact search)."""
    q = x[sample]
    if truth is None:
        _, rows = exact_knn(x, q, k + 1)
        truth = np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1)
    _, found = index.search(q, k + 1)
    own = ids[sample][:, None]
    t = [[v for v in row if v != o][:k] for row, o in zip(truth, own[:, 0])]
    f = [[v for v in row if v != o][:k] for row, o in zip(found, own[:, 0])]
    return recall_at_k(np.array(f, dtype=object), np.array(t, dtype=object), k), truth


def p50_latency_ms(index: Any, q: np.ndarray, k: int = 10, repeats: int = 1) -> float:
    """Median milliseconds of one single-query search of the FAISS ``index`` over the rows of ``q``."""
    times = []
    for _ in range(repeats):
        for i in range(q.shape[0]):
            t0 = time.perf_counter()
            index.search(q[i:i + 1], k)
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def tune(store: Any, ids: np.ndarray, x: np.ndarray, rows: np.ndarray, latency_target_ms: float,
         recall_target: float = 0.95) -> tuple[dict[str, int], float, float]:
    """Raise the search parameter (``nprobe`` / ``efSearch``) of ``store`` (a
    :class:`~clipzoo.index.stores.faiss.FaissStore`) step by step: until recall@10 reaches ``recall_target``
    as long as p50 latency stays under 4× the target, then further while p50 stays within
    ``latency_target_ms`` (stopping at recall 0.999). Returns ``(params, p50 ms, recall)``."""
    faiss = import_faiss()
    if store.kind == "hnsw":
        name, candidates = "efSearch", EF_CANDIDATES
    else:
        name = "nprobe"
        nlist = faiss.extract_index_ivf(store.index).nlist
        candidates = tuple(c for c in NPROBE_CANDIDATES if c < nlist) + (nlist,)
    q = x[rows]
    truth = None
    best: tuple[dict[str, int], float, float] | None = None
    for value in candidates:
        store.params = {name: int(value)}
        store.apply_params()
        recall, truth = loo_recall(store.index, ids, x, rows, truth=truth)
        p50_latency_ms(store.index, q[:5])  # warm-up
        latency = p50_latency_ms(store.index, q[: min(100, len(q))])
        if best is not None:
            limit = latency_target_ms if best[2] >= recall_target else 4 * latency_target_ms
            if latency > limit:
                break
        best = (dict(store.params), latency, recall)
        if recall >= 0.999:
            break
    assert best is not None
    return best
