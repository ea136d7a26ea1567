"""Which FAISS index for how many vectors, and the one lazy import of FAISS.

The choice follows autofaiss's rules of thumb:

- fewer than :data:`FLAT_MAX` (10k) vectors: exact search (``Flat``);
- HNSW (``HNSW32``) while its graph and vectors fit in the memory budget and the set is small enough to
  build in minutes (:data:`HNSW_MAX`, 200k vectors);
- IVF-Flat (``IVF{nlist},Flat``, nlist ≈ 4√n) while the raw vectors fit in the budget;
- OPQ + IVF + PQ (``OPQ{m}_{4m},IVF{nlist},PQ{m}``) beyond: compressed codes, ~m bytes a vector.
"""
from __future__ import annotations

import math
import os
from types import ModuleType

from ...errors import ClipzooError
from ...extras import require

__all__ = ["FLAT_MAX", "HNSW_MAX", "HNSW_M", "KINDS", "import_faiss", "default_memory_budget", "nlist_for",
           "pq_m_for", "estimate_memory", "choose_index", "key_for"]

FLAT_MAX = 10_000
HNSW_MAX = 200_000
HNSW_M = 32
KINDS = ("flat", "hnsw", "ivf_flat", "opq_ivf_pq")


def import_faiss() -> ModuleType:
    """The ``faiss`` module; a one-line :class:`~clipzoo.errors.MissingExtraError` naming the extra if absent."""
    return require("faiss", "the vector index")


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
    """The FAISS factory key of an index of ``kind`` for ``n`` vectors of ``d`` dims."""
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
