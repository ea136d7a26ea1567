"""``open_index`` -> :class:`SearchIndex`: text, image and vector queries over a built index.

Scores are cosine similarities (normalised embeddings, inner-product vector stores). A partition
(first-level subfolder) is searched through its own vector store; no partition searches all items.
``dedup=t`` drops a result whose embedding has cosine ≥ t with a higher-ranked kept result.
"""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api import load
from ..errors import BadTextError, ClipzooError, MissingExtraError, NotFoundError
from ..image_bytes import decode_image
from .embedding_store import EmbeddingStore
from .generations import VECTORS_DIR, GenerationView, IndexCorruptError, open_generation, read_pointer
from .manifest import repair_hint
from .model_record import check_recorded_weights
from .stores import DEFAULT_STORE, StoreUnavailableError, VectorStore, get_store, normalize
from .vector_files import open_part, read_record
from .videos import split_key

__all__ = ["Hit", "SearchIndex", "open_index", "image_from_bytes", "check_k"]


@dataclass
class Hit:
    """One search result: the item id, its cosine score, where the file is, its caption and partition; for a
    video row, ``timestamp``: where it starts in the file (seconds; 0.0 for the whole video)."""

    id: int
    score: float
    path: str
    relpath: str
    caption: str | None
    partition: str | None
    timestamp: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["timestamp"] is None:  # an image row: the fields it always had
            del d["timestamp"]
        return d


def image_from_bytes(data: bytes, name: str = "uploaded image"):
    """Encoded image bytes -> RGB PIL image; :class:`BadImageError` for empty, corrupt or bomb images
    (the service's upload decoder, :func:`clipzoo.image_bytes.decode_image`)."""
    return decode_image(data, name=name)


class SearchIndex:
    """A built index opened for queries. Thread-safe for concurrent searches.

    ``generation``: the published generation it reads (0 for an index written before generations, which
    reads the live rows; ``clipzoo index repair`` upgrades it); ``tag`` names that generation's files."""

    def __init__(self, store: "EmbeddingStore | GenerationView", record: dict[str, Any], model: Any = None,
                 mmap: bool = True):
        self.store = store
        self.generation = int(store.generation) if isinstance(store, GenerationView) else 0
        self.tag: str | None = record.get("tag")
        self.path = store.path
        self._record = record
        self._mmap = mmap
        self._model = model
        self._lock = threading.Lock()
        self._parts: dict[str | None, VectorStore] = {}
        self.model_spec: str = store.get_meta("model_spec") or ""
        self.model_alias: str = store.get_meta("model_alias") or ""
        self.long_text: str = store.get_meta("long_text") or "truncate"  # what a too-long text query gets
        self.root = Path(store.get_meta("root") or ".")
        self.dim = int(record.get("dim") or store.dim or 0)
        self._parts[None] = self._load_part(record["all"])
        self.count = int(record["count"])
        self.partitions: list[str] = sorted(record.get("partitions", {}))
        if self.tag is not None:  # a published generation: every file opened now, never at query time
            for name in self.partitions:
                self._part(name)
            if len(self._parts[None]) != self.count:
                raise IndexCorruptError(f"index file {str(self.path / VECTORS_DIR / record['all']['file'])!r} holds "
                                        f"{len(self._parts[None])} vectors, the manifest says {self.count}; "
                                        f"{repair_hint(self.path, self._record.get('vector_store'))}")
        if model is not None:
            self._check_model(model)

    # ------------------------------------------------------------------ parts
    def _load_part(self, info: dict[str, Any]) -> VectorStore:
        if self.tag is None:
            return open_part(self.store, self._record, info, mmap=self._mmap)
        path = self.path / VECTORS_DIR / info["file"]
        try:
            return get_store(self._record.get("vector_store", DEFAULT_STORE)).open(path, info, mmap=self._mmap)
        except (MissingExtraError, StoreUnavailableError):  # a database down or in use: not a corrupt file
            raise
        except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError for any unreadable file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = repair_hint(self.path, self._record.get("vector_store"))
            raise IndexCorruptError(f"index file {str(path)!r} is corrupt ({first}); {hint}") from None

    def _part(self, partition: str | None) -> VectorStore:
        if partition is None:
            return self._parts[None]
        if partition not in self._record.get("partitions", {}):
            listed = ", ".join(self.partitions) if self.partitions else "(none: the folder has no subfolders)"
            raise NotFoundError(f"unknown partition {partition!r}; partitions of this index: {listed}")
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                part = self._parts[partition] = self._load_part(self._record["partitions"][partition])
        return part

    def check_partition(self, partition: str | None) -> None:
        """:class:`~clipzoo.errors.NotFoundError` listing the partitions when ``partition`` is not one of them."""
        if partition is not None and partition not in self.partitions:
            self._part(partition)  # raises the error that lists the partitions

    @property
    def index_kind(self) -> str:
        return self._parts[None].kind

    @property
    def recall_at_10(self) -> float | None:
        return self._parts[None].recall_at_10

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "root": str(self.root), "model": self.model_spec, "count": self.count,
                "dim": self.dim, "partitions": list(self.partitions), "vectors": self._parts[None].describe()}

    # ------------------------------------------------------------------ model
    @property
    def model(self):
        """The Comparator that embeds queries: the one given, or the recorded spec loaded once, lazily."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self.check_weights()  # before loading them
                    model = load(self.model_spec)
                    self._check_model(model, recorded=True)
                    self._model = model
        return self._model

    def set_model(self, model: Any, recorded: bool = False) -> None:
        """Embed queries with ``model`` (a Comparator) instead of the recorded spec; refused when its
        embedding size differs from the index's. ``recorded``: it is the model the index records."""
        self._check_model(model, recorded)
        self._model = model

    def check_recorded_model(self, model: Any) -> None:
        """The model the index records (a Comparator, or the embedded model's numpy text tower) fits its vectors."""
        if model is not None:
            self._check_model(model, recorded=True)

    def check_weights(self) -> None:
        """The recorded model, when it is a local file or folder, still has the files the index was built with
        (their fingerprint, as the build checks it); else a one-line error."""
        check_recorded_weights(self.store, self.model_spec)

    def _check_model(self, model: Any, recorded: bool = False) -> None:
        """``model`` (anything with an ``embed_dim``) fits the index's vectors, else a one-line error; the recorded
        model (``recorded``, or loaded from the recorded path) must also have the recorded files."""
        source = getattr(getattr(getattr(model, "card", None), "source", None), "path", None)
        if recorded or (source and os.path.abspath(source) == self.model_spec):
            self.check_weights()
        dim = getattr(model, "embed_dim", None)
        if dim is None or not self.dim or int(dim) == self.dim:
            return
        if recorded:  # vectors given with another model's name (build-vectors / --from-embeddings --model)
            raise ClipzooError(f"index {str(self.path)!r} holds {self.dim}-dim vectors, but the model it records "
                               f"({self.model_spec}) gives {dim}-dim embeddings: its vectors were not made by that "
                               "model; build it again with --model naming the model that made them")
        raise ClipzooError(f"model {model.card.alias} gives {dim}-dim embeddings but index {str(self.path)!r} "
                           f"holds {self.dim}-dim ones (built with {self.model_spec}); use that model")

    # ------------------------------------------------------------------ queries
    def search_text(self, query: str, k: int = 10, partition: str | None = None,
                    dedup: float | None = None) -> list["Hit"]:
        if not isinstance(query, str) or not query.strip():
            raise BadTextError("the search text is empty; pass some words to search for")
        if self.long_text == "truncate":
            vec = self.model.encode_text([query], truncate=True)[0].float().cpu().numpy()
        else:
            vec = self.model.encode_text([query], long_text=self.long_text)[0].float().cpu().numpy()
        return self.search_embedding(vec, k, partition, dedup)

    def search_image(self, image: Any, k: int = 10, partition: str | None = None,
                     dedup: float | None = None) -> list["Hit"]:
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = image_from_bytes(bytes(image))
        vec = self.model.encode_image([image])[0].float().cpu().numpy()
        return self.search_embedding(vec, k, partition, dedup)

    def search_embedding(self, vector: Any, k: int = 10, partition: str | None = None,
                         dedup: float | None = None) -> list["Hit"]:
        k = check_k(k)
        q = _as_query(vector, self.dim)
        if dedup is not None and not (0.0 < float(dedup) <= 1.0):
            raise ClipzooError(f"dedup threshold must be in (0, 1], got {dedup}")
        part = self._part(partition)
        count = len(part)
        fetch = k if dedup is None else min(max(4 * k, k + 32), max(count, 1))
        while True:
            scores, ids = part.search(q, fetch)  # cosines: clipped to [-1, 1], non-finite ones dropped
            pairs = [(int(i), min(1.0, max(-1.0, float(s)))) for i, s in zip(ids[0], scores[0])
                     if i >= 0 and np.isfinite(s)]
            if dedup is None:
                pairs = pairs[:k]
                break
            kept = self._dedup(pairs, float(dedup), k)
            if len(kept) >= k or fetch >= count or len(pairs) < fetch:
                pairs = kept
                break
            fetch = min(fetch * 4, count)
        meta = self.store.items(i for i, _ in pairs)
        hits = []
        for item_id, score in pairs:
            m = meta.get(item_id)
            if m is None:  # an item removed since the vectors were built
                continue
            rel, start = split_key(m["relpath"])  # a video segment row: its file and start time
            hits.append(Hit(item_id, score, str(self.root / rel), rel, m["caption"], m["partition"], start))
        return hits

    def _dedup(self, pairs: list[tuple[int, float]], threshold: float, k: int) -> list[tuple[int, float]]:
        if not pairs:
            return pairs
        vecs = normalize(self.store.vectors([i for i, _ in pairs]))
        kept: list[int] = []
        for j in range(len(pairs)):
            if kept and float(np.max(vecs[kept] @ vecs[j])) >= threshold:
                continue
            kept.append(j)
            if len(kept) >= k:
                break
        return [pairs[j] for j in kept]

    # ------------------------------------------------------------------ items
    def item(self, item_id: int) -> dict[str, Any]:
        """Metadata of one item: id, path (absolute), relpath, size, mtime, sha256, caption, partition."""
        m = self.store.item(item_id)
        rel, start = split_key(m["relpath"])  # a video row: its file, and where it starts (``timestamp``)
        return {"id": m["id"], "path": str(self.root / rel), "relpath": rel, "size": m["size"],
                "mtime": m["mtime"], "sha256": m["sha256"], "caption": m["caption"], "partition": m["partition"],
                **({"timestamp": start} if start is not None else {})}

    def embedding(self, item_id: int) -> np.ndarray:
        """The stored (normalised, float32) embedding of one item [D]."""
        self.store.item(item_id)  # NotFoundError for unknown ids
        return np.array(self.store.vectors([int(item_id)])[0], dtype=np.float32)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "SearchIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SearchIndex({str(self.path)!r}, count={self.count}, kind={self.index_kind}, "
                f"model={self.model_spec!r})")


def check_k(k: Any) -> int:
    """``k`` as a positive int; a ClipzooError for anything else."""
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise ClipzooError(f"k must be a positive integer, got {k!r}") from None
    if k < 1:
        raise ClipzooError(f"k must be at least 1, got {k}")
    return k


def _as_query(vector: Any, dim: int) -> np.ndarray:
    try:
        if hasattr(vector, "detach"):
            vector = vector.detach().float().cpu().numpy()
        q = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise ClipzooError("the query embedding must be a sequence of numbers") from None
    if q.ndim == 2 and q.shape[0] == 1:
        q = q[0]
    if q.ndim != 1 or q.shape[0] != dim:
        raise ClipzooError(f"the query embedding must be a vector of {dim} numbers, got shape {tuple(q.shape)}")
    if not np.all(np.isfinite(q)):
        raise ClipzooError("the query embedding holds NaN or infinite values")
    if not np.any(q):
        raise ClipzooError("the query embedding is all zeros")
    return q[None]


def open_index(path: "str | os.PathLike", model: Any = None, mmap: bool = True) -> SearchIndex:
    """Open an index folder written by :func:`~clipzoo.index.build_index` for searching.

    ``model``: None loads the recorded model spec on first text/image query; a Comparator may be given.
    It reads the published generation (see :mod:`clipzoo.index.generations`), its files' sizes checked
    against the manifest; a missing or corrupt file raises :class:`~clipzoo.errors.ClipzooError` naming the
    file and the command that repairs it.
    """
    index = Path(os.path.expanduser(os.fspath(path))).absolute()
    pointer = read_pointer(index)
    if pointer is not None and "files" in pointer:  # a published generation (with its manifest)
        view = open_generation(index, pointer)
        try:
            if isinstance(model, (str, os.PathLike)):
                model = load(os.fspath(model))
            return SearchIndex(view, view.record, model=model, mmap=mmap)
        except BaseException:
            view.close()
            raise
    store = EmbeddingStore(path, read_only=True)  # an index from before generations: reads the live rows, as 0
    try:
        record = read_record(store)
        if isinstance(model, (str, os.PathLike)):
            model = load(os.fspath(model))
        return SearchIndex(store, record, model=model, mmap=mmap)
    except BaseException:
        store.close()
        raise
