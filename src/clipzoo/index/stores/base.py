"""The :class:`VectorStore` protocol: what the index build and search need from a vector database.

A vector store maps item ids (the embedding store's SQLite ids) to L2-normalised vectors and answers
top-k inner-product (= cosine) queries. :func:`clipzoo.index.vector_files.refresh_vectors` builds one per
partition from the committed rows and saves it under ``INDEX/vectors/``; :class:`clipzoo.index.SearchIndex`
opens them and searches through :meth:`VectorStore.search` only. The store's :meth:`~VectorStore.describe`
record goes into ``vectors.json`` beside the file and is handed back to :meth:`~VectorStore.open`.

Three optional members: a classmethod ``check(**options)`` that fails in one line before a build does any work
(Milvus: an unreachable or locked URI), ``partition_store(name)`` on a built store that holds the partitions itself
(Milvus partitions): :func:`clipzoo.index.generations.publish` then saves that view instead of building one
store per partition, and a classmethod ``verify_rows(path, count)`` for a store whose rows live outside the index
folder (the manifest's hashes cannot cover them): ``clipzoo index verify`` calls it with the published count and
reports the line it returns (None: they match).

Also here: the two helpers every store shares, :func:`normalize` and :func:`recall_at_k`, and
:class:`StoreUnavailableError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ...errors import ClipzooError

__all__ = ["VectorStore", "StoreUnavailableError", "normalize", "recall_at_k"]


class StoreUnavailableError(ClipzooError):
    """The store's database cannot be reached now (a server down, a Milvus Lite file open in another process, a
    file that is no database): nothing is wrong with the index, so the index's readers pass the line on as it is
    rather than calling the file corrupt and asking for a repair."""


@runtime_checkable
class VectorStore(Protocol):
    """Item ids -> vectors, searched by inner product. Implementations: :mod:`clipzoo.index.stores`."""

    name: ClassVar[str]
    """The store's key in :data:`clipzoo.index.stores.STORES` (``"faiss"``)."""
    suffix: ClassVar[str]
    """The suffix of the file :meth:`save` writes (``".faiss"``)."""
    kind: str
    """What sort of index this is (FAISS: ``flat``, ``hnsw``, ``ivf_flat``, ``opq_ivf_pq``)."""
    recall_at_10: float | None
    """Recall@10 against exact search measured when it was built (None when not measured)."""

    @classmethod
    def build(cls, ids: Any, vectors: Any, **options: Any) -> VectorStore:
        """A store over ``vectors`` [n, d] (normalised here) with item ``ids`` [n], set up for their number."""
        ...

    @classmethod
    def open(cls, path: str | os.PathLike, info: dict[str, Any] | None = None, *, mmap: bool = True) -> VectorStore:
        """Read a store written by :meth:`save`; ``info``: its :meth:`describe` record, when kept."""
        ...

    def add(self, ids: Any, vectors: Any) -> None:
        """Add ``vectors`` [m, d] (normalised here) under item ``ids`` [m]."""
        ...

    def remove(self, ids: Any) -> int:
        """Remove the vectors of item ``ids``; returns how many were removed."""
        ...

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Queries [m, d] -> (cosine scores [m, k], item ids [m, k]; -1 where fewer than k), best first."""
        ...

    def save(self, path: str | os.PathLike) -> Path:
        """Write the store to ``path`` atomically (whole or absent); returns the path."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the store (kind, count, dim, parameters, recall), kept in vectors.json."""
        ...

    def __len__(self) -> int:
        """The number of vectors held."""
        ...


TINY_NORM = 1e-12
"""Below this a float32 row norm is recomputed in float64 (:func:`normalize`); zero rows stay zero."""


def normalize(x: Any) -> np.ndarray:
    """Rows as contiguous float32, L2-normalised (zero rows stay zero). A row whose float32 norm overflows (values
    near 1e38) or underflows (values below 1e-19) is normalised in float64: its direction is kept, not
    turned into zeros."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None]
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        out = np.ascontiguousarray(x / np.maximum(norms, TINY_NORM), dtype=np.float32)
    extreme = ~np.isfinite(norms[:, 0]) | ((norms[:, 0] < TINY_NORM) & np.any(x, axis=1))
    if extreme.any():
        rows = x[extreme].astype(np.float64)
        out[extreme] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


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
