"""``build_index_from_embeddings``: an index from a clip-retrieval embedding folder, without re-embedding.

Each row becomes an item: its ``image_path`` as clip-retrieval means it (a relative path is relative to the working
folder; :mod:`.embedding_folder`), named by its path inside the deepest folder that holds every row (the index's
root, so no item is named by an absolute path) with its first folder the partition, as for a folder build; texts:
``text/ROW``. ``caption`` is its caption, and rows are normalised to unit length. The model is the one the folder
records (``clipzoo.json``, written by ``clipzoo embed --format clip-retrieval``), the one given, or on a rerun the
one the index records; it is never loaded here.

Every shard is read and checked first (widths, NaN, all-zero rows, each parquet readable and paired, unique paths),
so a refused import writes nothing. A rerun keeps unchanged rows, replaces changed ones, drops the paths no longer
there and deletes the shards no row uses any more. As for a folder build, one writer at a time holds the index
(:mod:`.lock`) and the result is published as a new generation with its manifest (:mod:`.generations`); an import
that fails removes the folder it created, and one killed midway leaves ``importing`` set (:mod:`.import_record`) so
that ``clipzoo index repair`` does not publish its mix of old and new rows: the rerun completes it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..cards import IMAGE
from ..errors import ClipzooError, warn_user
from ..progress import progress as progress_bar
from .build import BuildReport, default_vector_options, folder_vector_options
from .embedding_folder import PathPlan, check_rows, open_embeddings, read_columns, row_key, unit_rows
from .embedding_store import DB_NAME, EmbeddingStore, ItemRow
from .folder import partition_of
from .generations import VECTORS_DIR, collect, publish, read_pointer
from .import_record import EMBEDDINGS_META, IMPORTING_META, SOURCE, SOURCE_META, imported_from
from .lock import LOCK_NAME, IndexLock
from .manifest import check_files
from .model_record import check_weights, model_identity
from .stores import DEFAULT_STORE, check_store

__all__ = ["build_index_from_embeddings", "ADD_ROWS"]

ADD_ROWS = 65536
"""Rows written as one shard (and held in memory, float32) at a time."""


def build_index_from_embeddings(embeddings: "str | os.PathLike", out: "str | os.PathLike", model: Any = None, *,
                                modality: str | None = None, vector_options: dict[str, Any] | None = None,
                                progress: bool = False) -> BuildReport:
    """Index the rows of the clip-retrieval folder ``embeddings`` into the index folder ``out``.

    ``model``: the spec that made the rows (default: the folder's record, else on a rerun the index's; needed if
    neither has one); ``modality``: ``image`` or ``text`` (default: images when there are any)."""
    t0 = time.perf_counter()
    folder = open_embeddings(embeddings)
    modality = folder.modality(modality)
    out_path = Path(os.path.expanduser(os.fspath(out))).absolute()
    spec = model or folder.model or _recorded_model(out_path)
    if not spec:
        raise ClipzooError(f"{os.fspath(embeddings)!r} does not say which model made its embeddings; pass --model "
                           "MODEL (the one clip-retrieval ran, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k)")
    spec, alias = model_identity(spec)
    checked = folder_vector_options(out_path, vector_options)
    check_store(checked["vector_store"], checked)  # e.g. Milvus reachable, its Lite file not open in another process
    plan = _scan(folder, modality, os.fspath(embeddings))  # every shard checked before anything is written
    created = not out_path.exists()
    try:
        with IndexLock(out_path):
            try:
                return _index_rows(folder, plan, out_path, (spec, alias), modality, vector_options, progress, t0)
            except BaseException:
                if created:  # a first import that failed leaves nothing (its rows were no index to repair)
                    _remove_contents(out_path)
                raise
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_path.rmdir()  # empty once the lock file is gone
        raise


def _recorded_model(out: Path) -> str | None:
    """The model an existing index records: a rerun needs no --model (as a folder build's)."""
    if not (out / DB_NAME).is_file():
        return None
    try:
        with EmbeddingStore(out, read_only=True) as store:
            return store.get_meta("model_spec")
    except ClipzooError:  # no readable index there: the build says so
        return None


def _scan(folder: Any, modality: str, origin: str) -> PathPlan:
    """The first pass: every shard's rows and paths checked, and the folder the paths lie under."""
    plan = PathPlan(origin=origin)
    for npy, meta, feats in folder.shard_pairs(modality):
        if plan.dim is not None and feats.shape[1] != plan.dim:
            raise ClipzooError(f"{str(npy)!r} holds {feats.shape[1]}-dim rows but the shards before it "
                               f"{plan.dim}-dim ones; pass the embeddings of one model")
        plan.dim = int(feats.shape[1])
        check_rows(feats, npy)
        if modality == IMAGE:
            paths = read_columns(meta, ("image_path",)).get("image_path")
            if paths is not None:
                plan.add(paths, plan.count)
        plan.count += len(feats)
    if not plan.count:
        raise ClipzooError(f"{origin!r} holds no {modality} embeddings (its shards are empty)")
    return plan


def _remove_contents(out: Path) -> None:
    for p in out.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _check_source(store: EmbeddingStore, embeddings: str) -> None:
    """Refuse an index of a folder build, or one imported from another embedding folder."""
    old_root = store.get_meta("root")
    if old_root is not None and store.get_meta(SOURCE_META) != SOURCE:
        raise ClipzooError(f"index {str(store.path)!r} indexes the folder {old_root!r}, not an embedding folder; "
                           "pass a new --out")
    old = imported_from(store)
    if old is not None and old != embeddings:
        raise ClipzooError(f"index {str(store.path)!r} was imported from {old!r}, not {embeddings!r}; pass a new --out")


def _index_rows(folder: Any, plan: PathPlan, out: Path, model: tuple[str, Any], modality: str,
                vector_options: dict[str, Any] | None, progress: bool, t0: float) -> BuildReport:
    store = EmbeddingStore(out, create=True)
    try:
        embeddings = os.path.abspath(folder.root)
        _check_source(store, embeddings)
        store.check_model(model[0], model[1], plan.dim)
        check_weights(store, model[0])
        store.cleanup()  # shards a killed run left
        root = plan.root or embeddings
        store.set_meta(**{SOURCE_META: SOURCE, EMBEDDINGS_META: embeddings, "root": root, IMPORTING_META: True})
        report, seen, missing = BuildReport(), set(), [0, ""]  # files not there: how many, the first
        known = store.files()
        with progress_bar(plan.count, f"indexing {modality} embeddings", enabled=progress, unit="rows") as advance:
            for rows, x in _batches(folder, modality, plan, missing):
                seen.update(r.relpath for r in rows)
                _apply(store, rows, x, known, report)
                advance(len(rows))
        if missing[0]:
            warn_user(f"{missing[0]} of the {plan.count} rows name an image file that is not there (such as "
                      f"{missing[1]!r}): a relative image_path is read against the working folder, as clip-retrieval "
                      "reads it: import from the folder the embedding ran in, so that hits and thumbnails find them")
        report.removed = store.remove(p for p in known if p not in seen)
        store.set_meta(**{IMPORTING_META: False})
        store.cleanup()  # the shards of replaced rows (every rerun leaked the whole index's)
        store.compact()
        record = _publish(store, vector_options)
        report.total = store.count()
        report.seconds = time.perf_counter() - t0
        report.index_kind = record["all"]["kind"]
        report.recall_at_10 = record["all"].get("recall_at_10")
        return report
    finally:
        store.close()


def _batches(folder: Any, modality: str, plan: PathPlan, missing: list):
    """``(rows, unit vectors)`` of at most :data:`ADD_ROWS` rows at a time, in shard order; the local files that are
    not there go to ``missing``."""
    start = 0
    for _, meta, feats in folder.shard_pairs(modality):
        columns = read_columns(meta, ("image_path", "caption") if modality == IMAGE else ("caption",))
        for a in range(0, len(feats), ADD_ROWS):
            b = min(len(feats), a + ADD_ROWS)
            yield _rows(columns, modality, plan, (start, a, b), missing), unit_rows(feats[a:b])
        start += len(feats)


def _rows(columns: dict[str, list], modality: str, plan: PathPlan, span: tuple[int, int, int],
          missing: list) -> list[ItemRow]:
    """The items of rows [a, b) of the shard whose first row is row ``start`` of the folder (``span``)."""
    start, a, b = span
    paths = columns.get("image_path") if modality == IMAGE else None
    captions = columns.get("caption")
    rows = []
    for j in range(a, b):
        if paths is None:
            rel, partition, size, mtime = f"{modality}/{start + j}", None, 0, 0
        else:
            key = row_key(paths[j], start + j, plan.cwd)
            rel = plan.relpath(key)
            partition = None if "://" in key else partition_of(rel)
            size, mtime = _stat(key)
            if not size and "://" not in key:
                missing[0] += 1
                missing[1] = missing[1] or str(paths[j])
        caption = None if captions is None or captions[j] is None else str(captions[j])
        rows.append(ItemRow(rel, size, mtime, "", caption, partition))
    return rows


def _stat(key: str) -> tuple[int, int]:
    """(size, mtime_ns) of a row's file when it is here (what thumbnails check the file against), else zeros."""
    if "://" in key:
        return 0, 0
    try:
        st = os.stat(key)
    except OSError:
        return 0, 0
    return st.st_size, st.st_mtime_ns


def _apply(store: EmbeddingStore, rows: list[ItemRow], x: np.ndarray, known: dict, report: BuildReport) -> None:
    """Add the new and changed rows of a batch; an unchanged row (same vector) keeps its shard, its caption and
    file details refreshed."""
    old = [known.get(r.relpath) for r in rows]
    ids = [o[0] for o in old if o is not None]
    try:
        stored = dict(zip(ids, store.vectors(ids))) if ids else {}
    except ClipzooError:  # a lost or corrupt shard: its rows are written again
        stored = {}
    changed: list[int] = []
    touched = []
    for i, (r, o) in enumerate(zip(rows, old)):
        before = None if o is None else stored.get(o[0])
        if before is not None and np.array_equal(before, x[i]):
            report.unchanged += 1
            if (o[1], o[2], o[4]) != (r.size, r.mtime_ns, r.caption):
                touched.append((r.relpath, r.size, r.mtime_ns, r.caption))
            continue
        changed.append(i)
        report.added += o is None
        report.updated += o is not None
    store.touch(touched)
    if changed:
        store.add([rows[i] for i in changed], x[changed])


def _publish(store: EmbeddingStore, vector_options: dict[str, Any] | None) -> dict[str, Any]:
    """A new generation when the rows changed, the store asked for is another, or the published files do not match
    their manifest; else the published record (and debris of killed runs collected)."""
    record = read_pointer(store.path)
    wanted = (vector_options or {}).get("vector_store")
    if (record is None or "files" not in record or record.get("generation") != store.generation
            or (wanted and wanted != record.get("vector_store", DEFAULT_STORE))
            or check_files(store.path / VECTORS_DIR, record["files"], full=True)):
        return publish(store, **default_vector_options(store, vector_options))
    collect(store.path)
    return record
