"""A FAISS index built inside a memory budget from vectors streamed off disk, served memory-mapped.

The index parameters follow autofaiss's selection (``autofaiss/external/optimize.py``):

- ``get_optimal_index_keys_v2(..., should_be_memory_mappable=True)``: no HNSW (it cannot be memory-mapped);
  IVF-Flat while ``n`` < 1M and its size fits the budget, else quantization;
- ``get_optimal_quantization``: the largest PQ code size ``pq`` below ``d`` whose compression
  ``4·d / (pq + 8)`` reaches ``4·n·d / budget``: ``IVF{nlist},PQ{pq}``, from the same list (256 bytes down to 4). One
  departure, for build time on a few CPU cores: we leave out autofaiss's OPQ rotation (``OPQ{pq}_{y}``), whose
  training alone took minutes on 512-d vectors here; without it a code size must divide ``d``. (The list once
  started at 64 bytes, also for build time; at 10M vectors the 64-byte codes ranked a cluster's members so
  coarsely that re-scoring 800 candidates still missed a fifth of the top 10, and 128-byte codes train and add
  no slower: benchmarks/results/index_10m_full_pq64.json beside index_10m_full.json);
- ``get_optimal_nb_clusters``: nlist = 4·√n rounded to a power of two. autofaiss switches to 16k-64k cells
  (with an HNSW coarse quantizer) from 1M vectors; we keep the 4·√n rule there: k-means over 64k cells is
  hours of CPU on a small machine, and 4·√n is FAISS's own guideline;
- ``get_optimal_train_size``: 100 points per cell at most (we take 64), fewer when memory is short, never
  below 39 (FAISS's minimum); we halve nlist until that sample fits half the budget;
- ``get_optimal_batch_size``: vectors added in chunks of (an eighth of) the budget, at most 1 GB.

What this module differs in: the budget covers the whole build (the codes in memory at most half of it), and
the written index is an ordinary IVF file whose inverted lists FAISS memory-maps when it is read with
``IO_FLAG_MMAP`` (:meth:`~clipzoo.index.stores.faiss.FaissStore.open`), so serving needs only the pages a query
touches.
"""
from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...constants import ONDISK_STORE
from ...errors import ClipzooError, UnsupportedError
from ..vector_source import npy_layout, read_rows
from .base import normalize
from .faiss import FaissStore
from .faiss_kinds import import_faiss

__all__ = ["OnDiskFaissStore", "STORE", "RERANK", "RERANKS", "vectors_file_of", "PQ_VALUES", "IVF_FLAT_MAX",
           "MIN_POINTS_PER_CELL", "MAX_POINTS_PER_CELL", "BudgetPlan", "plan_index",
           "train_index", "add_chunks", "tune_nprobe", "NPROBES", "ChunkReader"]

PQ_VALUES = (256, 128, 64, 48, 32, 24, 16, 8, 4)  # autofaiss's get_optimal_quantization list
IVF_FLAT_MAX = 1_000_000  # autofaiss's ivf_flat_threshold
MIN_POINTS_PER_CELL = 39  # FAISS warns below this many training points per centroid
MAX_POINTS_PER_CELL = 64  # autofaiss's points_per_cluster is 100; 64 trains in 2/3 of the time
ID_BYTES = 8  # an id per vector in the inverted lists
MAX_CHUNK_BYTES = 1 << 30  # autofaiss's get_optimal_batch_size: more than 1 GB is not faster
NPROBES = (4, 8, 16, 32, 64, 128, 256)
RERANK = 100  # candidates the compressed index returns per query, re-scored exactly from the vectors file
RERANKS = (100, 200, 400, 800)  # tried in turn by tune_nprobe
KMEANS_ITERATIONS = 10
PQ_TRAIN_ROWS = 39 * 256

ChunkReader = Callable[[int, int], np.ndarray]
"""``read(start, stop)`` -> rows [start, stop) of the vectors as float32 (any order of calls)."""


@dataclass
class BudgetPlan:
    """The index chosen for ``n`` vectors of ``d`` dims within ``budget`` bytes, and how to build it."""

    n: int
    d: int
    budget: int
    kind: str
    key: str
    nlist: int
    pq: int | None
    train_rows: int
    chunk_rows: int
    index_bytes: int
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "nlist": self.nlist, "pq": self.pq, "train_rows": self.train_rows,
                "chunk_rows": self.chunk_rows, "index_bytes": self.index_bytes, "budget_bytes": self.budget}


def _nlist(n: int) -> int:
    return max(1, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))


def _quantized_bytes(n: int, d: int, pq: int, nlist: int) -> int:
    return n * (pq + ID_BYTES) + nlist * d * 4 + pq * 256 * (d // pq) * 4


def plan_index(n: int, d: int, budget: int) -> BudgetPlan:
    """The IVF-Flat or IVF-PQ index for ``n`` vectors of ``d`` dims that a build within ``budget`` bytes
    makes (autofaiss's rules, see the module doc); a ClipzooError when no index fits.

    The budget is shared out by phase: the training sample takes at most half of it (freed before vectors are
    added), the index being filled at most half, a chunk of added vectors an eighth."""
    if n < 2:
        raise ClipzooError(f"{n} vector(s) are too few to build an index from; pass at least 2")
    row_bytes = d * 4
    nlist = min(_nlist(n), max(1, n // MIN_POINTS_PER_CELL))
    while nlist > 1 and MIN_POINTS_PER_CELL * nlist * row_bytes > budget // 2:
        nlist //= 2
    train_rows = int(min(n, MAX_POINTS_PER_CELL * nlist, max(MIN_POINTS_PER_CELL * nlist, budget // 2 // row_bytes)))
    chunk_rows = int(max(256, min(n, min(budget // 8, MAX_CHUNK_BYTES) // row_bytes)))
    flat_bytes = n * (row_bytes + ID_BYTES) + nlist * row_bytes
    if n < IVF_FLAT_MAX and flat_bytes <= budget // 2:
        return BudgetPlan(n, d, budget, "ivf_flat", f"IVF{nlist},Flat", nlist, None, train_rows, chunk_rows,
                          flat_bytes)
    pq_rows = min(n, PQ_TRAIN_ROWS)  # 39 points for each of a codebook's 256 centroids
    if pq_rows * row_bytes > budget // 2:
        raise ClipzooError(f"--max-memory {budget:,} bytes is too small to train a compressed index of {d}-dim "
                           f"vectors (its sample needs {2 * pq_rows * row_bytes:,} bytes); raise --max-memory")
    train_rows = max(train_rows, pq_rows)
    for pq in PQ_VALUES:
        if pq >= d or d % pq:
            continue
        size = _quantized_bytes(n, d, pq, nlist)
        if size <= budget // 2:
            return BudgetPlan(n, d, budget, "ivf_pq", f"IVF{nlist},PQ{pq}", nlist, pq, train_rows, chunk_rows, size)
    need = _quantized_bytes(n, d, PQ_VALUES[-1], nlist) * 2
    raise ClipzooError(f"--max-memory {budget} bytes cannot hold an index of {n} vectors of {d} dims (the smallest "
                       f"codes need about {need / 2**20:.0f} MB); raise --max-memory")


def train_index(plan: BudgetPlan, sample: np.ndarray) -> Any:
    """A trained, empty FAISS index (inner product) of ``plan``'s kind, trained on ``sample`` [rows, d]."""
    faiss = import_faiss()
    index = faiss.index_factory(plan.d, plan.key, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    if plan.kind == "ivf_pq":
        ivfpq = faiss.downcast_index(ivf)
        ivfpq.pq.cp.niter = KMEANS_ITERATIONS
        ivfpq.do_polysemous_training = False  # minutes of annealing, for a search mode we do not use
    ivf.cp.niter = KMEANS_ITERATIONS
    ivf.cp.max_points_per_centroid = MAX_POINTS_PER_CELL
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def add_chunks(index: Any, plan: BudgetPlan, read: ChunkReader, ids: Callable[[int, int], np.ndarray],
               each: Callable[[int, int, np.ndarray], None] | None = None,
               advance: Callable[[int], None] | None = None) -> None:
    """Add every row, ``plan.chunk_rows`` at a time, under ``ids(start, stop)``; ``each(start, stop, rows)``
    sees each normalised chunk (to write it elsewhere) before it is freed."""
    for start, stop in chunks(plan.n, plan.chunk_rows):
        x = normalize(read(start, stop))
        index.add_with_ids(x, np.ascontiguousarray(ids(start, stop), dtype=np.int64))
        if each is not None:
            each(start, stop, x)
        if advance is not None:
            advance(stop - start)
        del x


def tune_nprobe(index: "OnDiskFaissStore", queries: np.ndarray, truth: np.ndarray, query_ids: np.ndarray,
                recall_target: float = 0.95, k: int = 10) -> tuple[int, float, float]:
    """``(nprobe, recall@k, p50 ms)``: the cheapest (re-ranked candidates, nprobe) of :data:`RERANKS` ×
    :data:`NPROBES` whose leave-one-out recall@k against ``truth`` (exact top-(k+1) ids of ``queries``, themselves
    indexed as ``query_ids``) reaches ``recall_target`` (else the best one); set on ``index``."""
    faiss = import_faiss()
    ivf = faiss.extract_index_ivf(index.index)
    best = (NPROBES[0], -1.0, 0.0, RERANKS[0])
    for rerank in RERANKS:
        index.params["rerank"] = rerank
        for nprobe in NPROBES:
            if nprobe > ivf.nlist and nprobe != NPROBES[0]:
                break
            ivf.nprobe = min(nprobe, ivf.nlist)
            times = []
            found = np.empty((len(queries), k + 1), np.int64)
            for i in range(len(queries)):
                t = time.perf_counter()
                found[i] = index.search(queries[i:i + 1], k + 1)[1][0]
                times.append((time.perf_counter() - t) * 1e3)
            recall = loo_recall(found, truth, query_ids, k)
            if recall > best[1] + 0.002:
                best = (int(ivf.nprobe), recall, float(np.median(times)), rerank)
            if recall >= recall_target:
                break
        if best[1] >= recall_target:
            break
    ivf.nprobe = index.params["nprobe"] = best[0]
    index.params["rerank"] = best[3]
    return best[:3]


def loo_recall(found: np.ndarray, truth: np.ndarray, query_ids: np.ndarray, k: int = 10) -> float:
    """Mean |found ∩ truth| / k over the queries, each query's own id dropped from both lists."""
    hits = 0
    for f, t, own in zip(found, truth, query_ids):
        t = [i for i in t if i != own][:k]
        f = [i for i in f if i != own][:k]
        hits += len(set(t) & set(f))
    return hits / (k * max(1, len(found)))


def vectors_file_of(index_file: "str | Path") -> Path:
    """``vectors/all-<tag>.faiss`` -> ``vectors/vectors-<tag>.npy``: the generation's vectors beside its index."""
    p = Path(index_file)
    return p.with_name("vectors-" + p.name.split("-", 1)[1]).with_suffix(".npy")


class OnDiskFaissStore(FaissStore):
    """A FAISS IVF index memory-mapped from its file, whose candidates are re-scored exactly against the
    generation's float16 vectors (memory-mapped too): what ``build-vectors`` writes. Read-only.

    Item ids are row numbers + 1 of the vectors file (as ``build-vectors`` assigns them)."""

    name: ClassVar[str] = ONDISK_STORE
    vectors: Any = None  # an open descriptor of the vectors file
    layout: Any = None  # its (offset, shape, dtype)

    @classmethod
    def open(cls, path: "str | os.PathLike", info: dict[str, Any] | None = None, *,
             mmap: bool = True) -> "OnDiskFaissStore":
        base = FaissStore.open(path, info, mmap=True)
        store = cls(base.index, base.kind, base.key, base.count, base.dim, base.params, base.recall_at_10,
                    base.latency_p50_ms, base.build_seconds, True)
        store.attach(vectors_file_of(path))
        return store

    def attach(self, vec_path: Path) -> None:
        """Re-score candidates against the ``.npy`` file ``vec_path``, read row by row (``pread``: no pages stay
        mapped in this process)."""
        try:
            self.layout = npy_layout(vec_path)
            fd = os.open(vec_path, os.O_RDONLY)
        except (OSError, ValueError) as exc:
            raise ClipzooError(f"index file {str(vec_path)!r} is unreadable ({type(exc).__name__})") from None
        self.vectors = fd
        self._closer = weakref.finalize(self, os.close, fd)
        if self.layout[1] != (self.count, self.dim):
            raise ClipzooError(f"index file {str(vec_path)!r} holds an array of shape {self.layout[1]}, the "
                               f"index {self.count} vectors of {self.dim} dims")

    @classmethod
    def build(cls, ids: Any, vectors: Any, **options: Any) -> "OnDiskFaissStore":
        raise UnsupportedError("an on-disk index is built by `clipzoo index build-vectors`, not from rows")

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The compressed index's top :data:`RERANK` candidates re-scored exactly; (scores [m, k], ids [m, k])."""
        q = normalize(queries)
        k = int(max(1, k))
        _, cand = super().search(q, max(k, int(self.params.get("rerank", RERANK))))
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for i in range(len(q)):
            c = cand[i][cand[i] >= 0]
            if not len(c):
                continue
            order = np.argsort(c)
            c = c[order]
            s = np.asarray(read_rows(self.vectors, c - 1, self.layout), dtype=np.float32) @ q[i]
            top = np.argsort(-s, kind="stable")[:k]
            scores[i, :len(top)], ids[i, :len(top)] = s[top], c[top]
        return scores, ids

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rerank": int(self.params.get("rerank", RERANK))}


STORE = OnDiskFaissStore
