"""Vector stores behind the index: one module per implementation, imported when first used.

Each module defines a class that satisfies :class:`~clipzoo.index.stores.base.VectorStore` and names it
``STORE``. Adding a store (a Milvus one, say) is one module here plus one line in :data:`STORES`; an index
built with a store other than :data:`DEFAULT_STORE` (``build_index(…, vector_options={"vector_store": name})``)
records its name as ``"vector_store"`` in ``vectors.json``.
"""
from __future__ import annotations

import importlib
import importlib.util

from ...errors import ClipzooError
from ...extras import missing
from .base import StoreUnavailableError, VectorStore, normalize, recall_at_k

__all__ = ["STORES", "DEFAULT_STORE", "get_store", "check_store", "VectorStore", "StoreUnavailableError", "normalize",
           "recall_at_k"]

# store name -> (module, the import names whose absence means "install the extra")
STORES: dict[str, tuple[str, tuple[str, ...]]] = {
    "faiss": ("clipzoo.index.stores.faiss", ("faiss",)),
    "milvus": ("clipzoo.index.stores.milvus", ("pymilvus", "milvus_lite")),
    "faiss_ondisk": ("clipzoo.index.stores.faiss_ondisk", ("faiss",)),  # clipzoo index build-vectors
}
DEFAULT_STORE = "faiss"


def get_store(name: str = DEFAULT_STORE) -> type[VectorStore]:
    """The :class:`VectorStore` class of store ``name``; a missing optional package is a one-line error."""
    try:
        module_name, packages = STORES[name]
    except (KeyError, TypeError):
        raise ClipzooError(f"unknown vector store {name!r}; known stores: {', '.join(STORES)}") from None
    try:
        return importlib.import_module(module_name).STORE
    except ImportError as exc:
        root = (exc.name or "").split(".")[0]
        if root in packages:
            raise missing(root, f"vector store {name!r}") from None
        raise


def check_store(name: str = DEFAULT_STORE, options: dict | None = None) -> None:
    """Fail in one line, before a build does any work, when store ``name`` is unknown or the main package it
    needs is not installed (the first of its packages; e.g. Milvus Lite is needed only for a local file), or
    when the store's ``check(**options)`` fails (Milvus: a URI that cannot be reached)."""
    cls = get_store(name)
    package = STORES[name][1][0]
    if importlib.util.find_spec(package) is None:
        raise missing(package, f"vector store {name!r}")
    check = getattr(cls, "check", None)
    if check is not None and options:
        check(**{k: v for k, v in options.items() if k != "vector_store"})
