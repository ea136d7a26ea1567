"""The ``vectors/`` folder of an index: vector stores derived from the committed rows, and their record.

Layout::

    INDEX/vectors/
      vectors.json          {"generation", "count", "dim", "ids_sha256", "partitions": {name: info}, "all": info}
                            with info = {"file": …, **store.describe()}; "vector_store" names the store
                            when it is not the default (FAISS)
      all-<tag>.faiss       every item
      part<i>-<tag>.faiss   one partition's items (when there are several partitions, or items outside any)

The store files are written under new names first, then swapped in by the atomic rewrite of
``vectors.json``; files it no longer names are deleted. They are derived data: :func:`refresh_vectors`
rebuilds them whenever the recorded generation differs from the embedding store's.
Every store is built, saved and opened through the :class:`~clipzoo.index.stores.VectorStore` protocol.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClipzooError, MissingExtraError
from ..files import atomic_write_text
from .embedding_store import POINTER as VECTORS_META
from .embedding_store import VECTORS_DIR, EmbeddingStore
from .import_record import import_command, imported_from, unfinished_import
from .stores import DEFAULT_STORE, StoreUnavailableError, VectorStore, get_store

__all__ = ["VECTORS_DIR", "VECTORS_META", "refresh_vectors", "read_record", "open_part", "stale_hint"]



def stale_hint(store: EmbeddingStore) -> str:
    """The commands that mend the index of ``store`` (end the errors about missing or corrupt vector files): the
    repair, which rebuilds them from the stored embeddings, or a whole build; quoted for a shell (a spec such as
    ``[clip - clipzoo - tiny-shapes]`` holds spaces)."""
    unfinished = unfinished_import(store)
    if unfinished is not None:  # a repair would publish a mix of two imports: only the import mends it
        return unfinished
    out = shlex.quote(str(store.path))
    if imported_from(store) is not None:  # imported from embeddings: a folder build over them was no rebuild
        return f"run `clipzoo index repair {out}` (or import it again: `{import_command(store)}`)"
    root = shlex.quote(str(store.get_meta("root") or "DIR"))
    spec = shlex.quote(str(store.get_meta("model_spec") or "MODEL"))
    return f"run `clipzoo index repair {out}` (or rebuild it: `clipzoo index build {root} --model {spec} --out {out}`)"


# ------------------------------------------------------------------ writing
def _current(vdir: Path, generation: int) -> dict[str, Any] | None:
    """The record in ``vdir`` if it describes ``generation`` and all its files exist, else None."""
    try:
        meta = json.loads((vdir / VECTORS_META).read_text("utf-8"))
        if meta.get("generation") == generation and all((vdir / p["file"]).exists() for p in
                                                        [meta["all"], *meta.get("partitions", {}).values()]):
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def refresh_vectors(store: EmbeddingStore, force: bool = False, **options: Any) -> dict[str, Any]:
    """Rebuild the vector store files from the committed rows unless ``vectors.json`` already matches the
    embedding store's generation; returns the vectors record. ``options`` go to the vector store's ``build``
    (:meth:`clipzoo.index.stores.faiss.FaissStore.build`), but ``vector_store``: its name in
    :data:`~clipzoo.index.stores.STORES` (default FAISS)."""
    vdir = store.path / VECTORS_DIR
    meta_path = vdir / VECTORS_META
    generation = store.generation
    if meta_path.exists() and not force:
        meta = _current(vdir, generation)
        if meta is not None:
            return meta
    store_name = options.pop("vector_store", DEFAULT_STORE)
    cls = get_store(store_name)
    vdir.mkdir(parents=True, exist_ok=True)
    ids, x = store.all_vectors()
    dim = store.dim or (x.shape[1] if x.ndim == 2 else 0)
    if x.shape[1] != dim:
        x = np.zeros((0, dim), np.float32)
    tag = f"g{generation}-{os.getpid()}-{time.time_ns() % 10**9}"
    record: dict[str, Any] = {"generation": generation, "count": int(len(ids)), "dim": int(dim),
                              "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(), "partitions": {}}
    if store_name != DEFAULT_STORE:
        record["vector_store"] = store_name
    record["all"] = _save(cls.build(ids, x, **options), vdir / f"all-{tag}{cls.suffix}")
    partitions = store.partitions()
    if len(partitions) > 1 or (partitions and store.has_root_items()):
        for i, name in enumerate(partitions):
            pids, px = store.all_vectors(name)
            record["partitions"][name] = _save(cls.build(pids, px, **options), vdir / f"part{i}-{tag}{cls.suffix}")
    elif partitions:
        record["partitions"][partitions[0]] = dict(record["all"])
    atomic_write_text(meta_path, json.dumps(record, indent=1, ensure_ascii=False))
    keep = {record["all"]["file"], *(p["file"] for p in record["partitions"].values()), VECTORS_META}
    for p in vdir.iterdir():
        if p.name not in keep:
            p.unlink(missing_ok=True)
    return record


def _save(vectors: VectorStore, path: Path) -> dict[str, Any]:
    return {"file": vectors.save(path).name, **vectors.describe()}


# ------------------------------------------------------------------ reading
def read_record(store: EmbeddingStore) -> dict[str, Any]:
    """The vectors record of ``store``'s index; a ClipzooError naming the file and the fix when it is
    missing, corrupt, or out of date with the committed rows (a build that was interrupted)."""
    meta_path = store.path / VECTORS_DIR / VECTORS_META
    if not meta_path.is_file():
        raise ClipzooError(f"index file {str(meta_path)!r} is missing (was the build interrupted?); "
                           f"{stale_hint(store)}")
    try:
        record = json.loads(meta_path.read_text("utf-8"))
        record["all"]["file"], record["count"]  # noqa: B018 - shape check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClipzooError(f"index file {str(meta_path)!r} is corrupt ({type(exc).__name__}); "
                           f"{stale_hint(store)}") from None
    if record.get("generation") != store.generation or record["count"] != store.count():
        raise ClipzooError(f"the vectors of index {str(store.path)!r} are out of date with its items "
                           f"(was the build interrupted?); {stale_hint(store)}")
    return record


def open_part(store: EmbeddingStore, record: dict[str, Any], info: dict[str, Any], mmap: bool = True) -> VectorStore:
    """Open the vector store file that ``info`` (an entry of ``record``) names; a ClipzooError naming the
    file and the fix when it is missing or unreadable."""
    path = store.path / VECTORS_DIR / info["file"]
    if not path.is_file():
        raise ClipzooError(f"index file {str(path)!r} is missing; {stale_hint(store)}")
    cls = get_store(record.get("vector_store", DEFAULT_STORE))
    try:
        return cls.open(path, info, mmap=mmap)
    except (MissingExtraError, StoreUnavailableError):  # a database down or in use: no repair mends that
        raise
    except ClipzooError as exc:
        raise ClipzooError(f"{exc}; {stale_hint(store)}") from None
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError for any unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClipzooError(f"index file {str(path)!r} is corrupt ({first}); {stale_hint(store)}") from None
