"""``build_index_from_embeddings``: an index from a clip-retrieval embedding folder, without re-embedding.

Each row becomes an item: its ``image_path`` (texts: its caption) is the item's path, ``caption`` its caption,
and a first-level folder of a relative path its partition, as for a folder build. The model is the one the
folder records (``clipzoo.json``, written by ``clipzoo embed --format clip-retrieval``) or the one given; it is
recorded for queries and never loaded here. A rerun replaces the rows and drops the paths no longer there.
As for a folder build, one writer at a time holds the index (:mod:`.lock`) and the result is published as a
new generation with its manifest (:mod:`.generations`), so a running server switches to it.
"""
from __future__ import annotations

import os
import posixpath
import time
from pathlib import Path
from typing import Any

from ..embed.clip_retrieval import open_clip_retrieval
from ..errors import ClipzooError
from ..progress import progress as progress_bar
from .build import BuildReport, default_vector_options, folder_vector_options
from .embedding_store import EmbeddingStore, ItemRow
from .folder import partition_of
from .generations import publish
from .lock import IndexLock
from .model_record import model_identity
from .stores import check_store

__all__ = ["build_index_from_embeddings"]


def _row_path(value: Any, row: int) -> tuple[str, str | None]:
    """``(path, partition)`` of a row's ``image_path``: relative paths normalised (``a/../b.png`` → ``b.png``),
    one that leaves the folder (``../x.png``), an absolute one or a URL kept as given without a partition."""
    if value is None or (isinstance(value, float) and value != value) or str(value) == "":
        raise ClipzooError(f"row {row} has no image_path ({value!r}); every image row needs one")
    path = str(value)
    if "\0" in path:
        raise ClipzooError(f"row {row}'s image_path holds a NUL byte: {path!r}")
    if os.path.isabs(path) or "://" in path:
        return path, None
    path = posixpath.normpath(path)
    return path, (None if path == ".." or path.startswith("../") else partition_of(path))


def _rows(columns: dict[str, list], modality: str, start: int, count: int) -> list[ItemRow]:
    paths = columns.get("image_path") if modality == "image" else None
    captions = columns.get("caption")
    rows = []
    for j in range(count):
        rel, partition = _row_path(paths[j], start + j) if paths is not None else (f"{modality}/{start + j}", None)
        caption = None if captions is None or captions[j] is None else str(captions[j])
        rows.append(ItemRow(rel, 0, 0, "", caption, partition))
    return rows


def build_index_from_embeddings(embeddings: "str | os.PathLike", out: "str | os.PathLike", model: Any = None, *,
                                modality: str | None = None, vector_options: dict[str, Any] | None = None,
                                progress: bool = False) -> BuildReport:
    """Index the rows of the clip-retrieval folder ``embeddings`` into the index folder ``out``.

    ``model``: the spec that made the rows (default: the folder's record; needed if it has none);
    ``modality``: ``image`` or ``text`` (default: images when there are any)."""
    t0 = time.perf_counter()
    folder = open_clip_retrieval(embeddings)
    modality = folder.modality(modality)
    spec = model or folder.model
    if not spec:
        raise ClipzooError(f"{os.fspath(embeddings)!r} does not say which model made its embeddings; pass --model "
                           "MODEL (the one clip-retrieval ran, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k)")
    spec, alias = model_identity(spec)
    checked = folder_vector_options(Path(os.path.expanduser(os.fspath(out))).absolute(), vector_options)
    check_store(checked["vector_store"], checked)  # e.g. Milvus reachable, its Lite file not open in another process
    folder.check_shards(modality)  # a truncated shard: one line before anything is written
    with IndexLock(Path(out).absolute()):
        return _index_rows(folder, embeddings, out, spec, alias, modality, vector_options, progress, t0)


def _index_rows(folder: Any, embeddings: "str | os.PathLike", out: "str | os.PathLike", spec: str, alias: Any,
                modality: str, vector_options: dict[str, Any] | None, progress: bool, t0: float) -> BuildReport:
    store = EmbeddingStore(out, create=True)
    try:
        old_root = store.get_meta("root")
        root = str(Path(folder.root).absolute())
        if old_root is not None and old_root != root:
            raise ClipzooError(f"index {str(store.path)!r} indexes {old_root!r}, not {root!r}; pass a new --out")
        store.check_model(spec, alias)
        store.set_meta(root=root, source="clip-retrieval")
        report = BuildReport()
        known = set(store.files())
        seen: set[str] = set()
        start = 0
        with progress_bar(None, f"indexing {modality} embeddings", enabled=progress, unit="rows") as advance:
            for feats, columns in folder.iter_shards(modality):
                rows = _rows(columns, modality, start, len(feats))
                for r in rows:
                    if r.relpath in seen:
                        raise ClipzooError(f"{r.relpath!r} appears twice in {os.fspath(embeddings)!r}; each row's "
                                           "image_path must be unique")
                    seen.add(r.relpath)
                store.add(rows, feats)
                report.added += sum(r.relpath not in known for r in rows)
                report.updated += sum(r.relpath in known for r in rows)
                start += len(feats)
                advance(len(feats))
        report.removed = store.remove(p for p in known if p not in seen)
        store.compact()
        options = default_vector_options(store, vector_options)
        record = publish(store, **options)
        report.total = store.count()
        report.seconds = time.perf_counter() - t0
        report.index_kind = record["all"]["kind"]
        report.recall_at_10 = record["all"].get("recall_at_10")
        return report
    finally:
        store.close()
