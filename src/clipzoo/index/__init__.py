"""Search collections of images: a crash-safe embedding store, vector stores (FAISS), queries, classification.

::

    from clipzoo.index import build_index, open_index, classify_images, load_vocabulary
    report = build_index("photos/", "photos.index", model="openai/ViT-B-32", progress=True)
    idx = open_index("photos.index")
    for hit in idx.search_text("a dog on a beach", k=5):
        print(hit.score, hit.path, hit.caption)

Modules: :mod:`.embedding_store` (shards + SQLite, crash-safe), :mod:`.folder` (walk, hash, decode),
:mod:`.build` (embed, incremental), :mod:`.vector_files` (the ``vectors/`` folder and its record),
:mod:`.stores` (the :class:`~clipzoo.index.stores.VectorStore` protocol; :mod:`.stores.faiss`: the FAISS
store, chosen by size, tuned, recall measured), :mod:`.search` (:class:`SearchIndex`), :mod:`.classify`
(image -> text over a vocabulary). FAISS is imported only when an index is built or read.
"""
from __future__ import annotations

from .build import BuildReport, build_index
from .classify import classify_images, load_vocabulary
from .search import Hit, SearchIndex, open_index
from .stores import VectorStore

__all__ = ["build_index", "open_index", "SearchIndex", "Hit", "BuildReport", "classify_images", "load_vocabulary",
           "VectorStore"]
