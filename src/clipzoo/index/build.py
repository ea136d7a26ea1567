"""``build_index``: a folder of images -> an index folder (embedding store + vector stores), incremental
and crash-safe.

Steps of a run:

1. open (or create) the store; refuse a different model or folder; delete orphan shards and temporary
   files that a killed run left;
2. walk the folder (jpg, jpeg, png, webp, gif, bmp; hidden files and the index folder itself skipped;
   :mod:`.folder`) and compare with the store: same (size, mtime) -> unchanged; otherwise the SHA-256
   decides; files gone from the folder are dropped;
3. new and changed files are read, hashed and decoded in DataLoader worker processes and embedded in
   batches; every ``shard_rows`` rows (or ``flush_seconds``) become one shard + one transaction;
   files that cannot be decoded are skipped, counted and listed (never fatal);
4. a new generation (a snapshot of the rows, their vectors, the vector stores: all items, and one per
   partition = first-level subfolder) is published when the store changed or the published files do not
   match their manifest, and switched in atomically via ``vectors/vectors.json`` (:mod:`.generations`).

One writer at a time (:mod:`.lock`: a second build fails naming the holder's pid, or waits with
``wait=True``). A failed build leaves no debris: temporary and unpublished files are deleted, a first build
that committed nothing removes the folder it created, and rows it did commit are reused by the rerun; a
full disk is one line, ``no space left on DEVICE writing FILE``, with the published index unchanged.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import load
from ..cards import IMAGE
from ..embed import decode_in_threads, draft_size_for, image_loader
from ..embed.remote_inputs import is_url
from ..errors import ClipzooError
from ..inputs import check_long_text
from ..progress import progress as progress_bar
from ..runtime.auto_sample import sample_options
from .embedding_store import EmbeddingStore, ItemRow
from .folder import INDEX_SUFFIXES, IndexFiles, caption_of, collate_index_batch, partition_of, sha256_file, walk_images
from .generations import VECTORS_DIR, collect, publish, read_pointer
from .lock import IndexLock
from .manifest import bad_shards, check_files, disk_full, is_disk_full, write_failed
from .model_record import check_weights, model_identity
from .remote_folder import SOURCE_DIR, local_folder
from .stores import DEFAULT_STORE, check_store
from .videos import SEGMENT_META, embed_videos, is_video_key, plan_videos, split_key, video_rows_to_keep, walk_videos

__all__ = ["BuildReport", "build_index", "load_model", "default_vector_options", "reembed"]

MILVUS_LITE_FILE = "index.milvus.db"
"""The Milvus Lite database inside the index folder: ``--store milvus`` without ``--uri``."""


def folder_vector_options(index: Path, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` with the defaults that depend on the index folder ``index`` (the store it already uses; Milvus:
    the published store to sync in place and its URI, else a Milvus Lite file in the folder). What a build checks
    before any work (:func:`~clipzoo.index.stores.check_store`: a Lite file open in another process)."""
    options = dict(options or {})
    old = read_pointer(index) or {}
    options.setdefault("vector_store", old.get("vector_store", DEFAULT_STORE))
    if options.get("vector_store") == "milvus":
        options.setdefault("default_uri", str(index / MILVUS_LITE_FILE))
        if old.get("vector_store") == "milvus" and "all" in old:
            options.setdefault("previous", str(index / VECTORS_DIR / old["all"]["file"]))
    return options


def default_vector_options(store: EmbeddingStore, options: dict[str, Any] | None) -> dict[str, Any]:
    """:func:`folder_vector_options` of ``store``'s folder, and for Milvus its item records."""
    options = folder_vector_options(store.path, options)
    if options.get("vector_store") == "milvus":
        options.setdefault("rows", store.items)
    return options


@dataclass
class BuildReport:
    """What one ``build_index`` run did."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    total: int = 0  # rows: an image is one, a video one plus one per segment
    videos: int = 0  # of the total, the videos indexed (their rows: video_rows)
    video_rows: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    index_kind: str = ""
    recall_at_10: float | None = None
    repaired: int = 0  # rows re-embedded because their stored vectors were lost or corrupt

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [list(s) for s in self.skipped]
        return d


# ------------------------------------------------------------------ model identity
def load_model(model: Any, runtime: str = "eager", sample: "list[str] | None" = None, origin: str = "the folder"):
    """``model`` loaded with ``runtime`` if it is a spec (``runtime="auto"`` measures on ``sample``, the images
    about to be embedded: :mod:`clipzoo.runtime.auto_sample`); a Comparator as it is."""
    if isinstance(model, (str, os.PathLike)):
        return load(os.fspath(model), runtime=runtime, **sample_options(runtime, images=sample, origin=origin))
    return model


# ------------------------------------------------------------------ build
def build_index(folder: "str | os.PathLike", out: "str | os.PathLike", model: Any = None, batch_size: int = 64,
                workers: int | None = None, progress: bool = False, *, shard_rows: int = 4096,
                flush_seconds: float = 10.0, vector_options: dict[str, Any] | None = None,
                fast_decode: bool = True, runtime: str = "eager", wait: bool = False,
                long_text: str | None = None, embedder: Any = None, video_segments: float | None = None) -> BuildReport:
    """Index the images under ``folder`` into the index folder ``out`` with ``model`` (spec or Comparator).

    ``fast_decode``: decode large JPEGs at reduced size (see :func:`clipzoo.inputs.load_rgb`); False
    gives vectors equal to ``model.encode_image(path)``. ``runtime``: how a model given as a spec runs
    (see :mod:`clipzoo.runtime`; the index records the spec, and queries run eager). ``vector_options``:
    ``vector_store`` (a name in :data:`clipzoo.index.stores.STORES`, default FAISS) and that store's ``build``
    options (FAISS: ``kind``, ``memory_budget``, ``latency_target_ms``, …).
    A rerun embeds only new or changed files and drops deleted ones; a run killed at any moment leaves
    an index that the next run completes. ``model`` may be omitted on a rerun (the recorded one is used).
    ``wait``: when another writer holds the index, wait for it instead of failing with its pid.
    ``long_text``: recorded in the index; text queries then follow it (``"chunks"``: a long query is split and its
    pieces' features averaged; otherwise a long query is cut, the index's default).
    ``embedder``: decodes and embeds elsewhere (:class:`clipzoo.index.ray_build.RayIndexEmbedder`: ``--engine ray``).
    Video files (mp4, webm, mkv, avi, …) are indexed too: one row per video, plus one per ``video_segments`` seconds
    with its start time (:mod:`clipzoo.index.videos`).
    """
    t0 = time.perf_counter()
    if int(batch_size) < 1:
        raise ClipzooError(f"batch size must be at least 1, got {batch_size}")
    if workers is not None and int(workers) < 0:
        raise ClipzooError(f"workers must be 0 or more, got {workers}")
    url = is_url(os.fspath(folder))  # an fsspec URL: read once the store is checked (index/remote_folder.py)
    root = Path(os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(folder)))))  # "a/../a/x" is a/x
    if not url and not root.exists():
        raise ClipzooError(f"folder {os.fspath(folder)!r} does not exist; pass the folder of images to index")
    if not url and not root.is_dir():
        raise ClipzooError(f"{os.fspath(folder)!r} is not a folder; pass the folder of images to index")
    out_path = Path(os.path.expanduser(os.fspath(out))).absolute()
    checked = folder_vector_options(out_path, vector_options)  # the store OUT uses, e.g. its Milvus Lite file
    check_store(checked["vector_store"], checked)  # before any work: unreachable, or open in another process
    settings = _Settings(int(batch_size), workers, progress, int(shard_rows), flush_seconds, dict(vector_options or {}),
                         fast_decode, runtime, long_text=long_text, embedder=embedder, video_segments=video_segments)
    created = not out_path.exists()
    fresh = created or (out_path.is_dir() and not (out_path / "index.sqlite").exists())  # no index yet
    root = local_folder(folder, out_path) if url else root  # file://: its path; others copied into OUT/.source
    try:
        with IndexLock(out_path, wait=wait, on_wait=_waiting(out_path) if progress else None):
            return _locked_build(out_path, fresh, root, model, settings, t0)
    except BaseException:
        if created and out_path.is_dir() and not any(out_path.iterdir()):
            out_path.rmdir()
        raise


def _locked_build(out_path: Path, fresh: bool, root: Path, model: Any, settings: "_Settings",
                  t0: float) -> BuildReport:
    store = None
    try:
        store = EmbeddingStore(out_path, create=True)
        return _build(store, root, model, settings, t0)
    except BaseException as exc:
        if store is not None:
            store.close()
            store = None
        if fresh:  # a first build leaves nothing behind, whatever stopped it (a full disk left its files)
            _remove_if_empty(out_path)
        if isinstance(exc, sqlite3.OperationalError):
            if is_disk_full(exc, out_path):
                raise disk_full(out_path / "index.sqlite") from None
            raise write_failed(out_path / "index.sqlite", exc) from None
        raise
    finally:
        if store is not None:
            store.close()


def _waiting(out: Path):
    def say(pid: int | None) -> None:
        print(f"waiting for {f'pid {pid}' if pid else 'another writer'} to finish writing {out} …", file=sys.stderr,
              flush=True)
    return say


def _remove_if_empty(out: Path) -> None:
    """A first build that failed before committing a row: remove the files it created (and nothing else)."""
    if read_pointer(out) is not None:
        return
    try:
        with EmbeddingStore(out) as store:
            if store.count():
                return
    except ClipzooError:  # its tables never got written (a full disk): this build's own file, created this run
        pass
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if names <= {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "shards", VECTORS_DIR, ".lock", SOURCE_DIR}:
        shutil.rmtree(out / SOURCE_DIR, ignore_errors=True)
        shutil.rmtree(out / "shards", ignore_errors=True)
        shutil.rmtree(out / VECTORS_DIR, ignore_errors=True)
        for name in names - {".lock", "shards", VECTORS_DIR, SOURCE_DIR}:
            (out / name).unlink(missing_ok=True)


@dataclass
class _Settings:
    """How one build runs (the keyword arguments of :func:`build_index`)."""

    batch_size: int
    workers: int | None
    show_progress: bool
    shard_rows: int
    flush_seconds: float
    vector_options: dict[str, Any]
    fast_decode: bool
    runtime: str
    long_text: str | None = None
    embedder: Any = None  # (paths, comparator, draft_size) -> (good, features, errors) batches: --engine ray
    video_segments: float | None = None  # seconds per segment row of a video (index/videos.py)


def _build(store: EmbeddingStore, root: Path, model: Any, settings: _Settings, t0: float) -> BuildReport:
    model, spec, alias = _check_target(store, root, model)
    if settings.long_text is not None:
        store.set_meta(long_text=check_long_text(settings.long_text))
    store.cleanup()

    report = BuildReport()
    relpaths = walk_images(root, exclude=store.path, skipped=report.skipped)  # links out of root: skipped
    videos = walk_videos(root, exclude=store.path, skipped=report.skipped)
    known = store.files()
    if not relpaths and not videos and store.dim is None:
        raise ClipzooError(f"folder {str(root)!r} holds no images ({', '.join(INDEX_SUFFIXES)}); check the path")
    present = set(relpaths) | set(videos)
    report.removed = store.remove(p for p in known if p not in present and split_key(p)[0] not in present)
    to_embed = _compare(store, root, relpaths + videos, known, report)
    present |= video_rows_to_keep(known, set(videos), set(to_embed))
    lost = _lost_rows(store, present, set(to_embed))  # a rebuild also repairs: rows whose shard is bad
    report.repaired, report.unchanged = len(lost), report.unchanged - len(lost)
    to_embed, video_embed = plan_videos(store, known, videos, to_embed + lost, settings.video_segments, report)

    embedded = 0
    t_embed = time.perf_counter()
    if to_embed:
        comparator = load_model(model, settings.runtime, [str(root / r) for r in to_embed], f"folder {str(root)!r}")
        embedded = _embed(store, root, to_embed, known, comparator, spec, settings, report)
    if video_embed:  # runtime auto measures on images: a video-only build runs eager
        comparator = comparator if to_embed else load_model(model, "eager" if settings.runtime == "auto" else
                                                            settings.runtime)
        embedded += embed_videos(store, root, video_embed, known, comparator, spec, settings.video_segments, report,
                                 settings.show_progress)
    embed_seconds = time.perf_counter() - t_embed
    store.set_skipped([(os.path.relpath(p, root), r) for p, r in report.skipped])
    store.compact()
    record = read_pointer(store.path)
    if (record is None or "files" not in record or record.get("generation") != store.generation
            or check_files(store.path / VECTORS_DIR, record["files"], full=True)):
        record = publish(store, **default_vector_options(store, settings.vector_options))
    else:
        collect(store.path)  # files a killed run left
    report.total = store.count()
    if videos:  # what the summary calls the rows (no video file: no video rows either)
        keys = [k for k in store.files() if is_video_key(k)]
        report.videos, report.video_rows = len({split_key(k)[0] for k in keys}), len(keys)
    report.seconds = time.perf_counter() - t0
    report.images_per_s = embedded / embed_seconds if embedded and embed_seconds > 0 else 0.0
    report.index_kind = record["all"]["kind"]
    report.recall_at_10 = record["all"].get("recall_at_10")
    return report


def reembed(store: EmbeddingStore, relpaths: list[str], model: Any = None, progress: bool = False,
            workers: int | None = 0) -> BuildReport:
    """Embed the files ``relpaths`` (under the store's recorded folder) again with ``model`` (default: the
    recorded one), replacing their rows in place (same ids); files that cannot be read are removed.
    :func:`clipzoo.index.repair.repair_index` uses it for rows whose vectors were lost."""
    report = BuildReport()
    if not relpaths:
        return report
    root = Path(store.get_meta("root") or ".")
    model, spec, _ = _check_target(store, root, model)
    settings = _Settings(64, workers, progress, 4096, 10.0, {}, True, "eager")
    comparator, images = load_model(model), [r for r in relpaths if not is_video_key(r)]
    if images:
        _embed(store, root, images, store.files(), comparator, spec, settings, report)
    videos = sorted({split_key(r)[0] for r in relpaths if is_video_key(r)})  # a segment row: its whole video
    if videos:
        embed_videos(store, root, videos, store.files(), comparator, spec, store.get_meta(SEGMENT_META), report)
    return report


def _lost_rows(store: EmbeddingStore, present: set[str], embedding: set[str]) -> list[str]:
    """Files still in the folder (and not already to embed) whose stored vector is lost: its shard is
    missing, corrupt (SHA-256) or holds non-finite values."""
    bad = {name for name, _ in bad_shards(store, full=True)}
    if not bad:
        return []
    return [m["relpath"] for m in store.iter_items()
            if m["shard"] in bad and m["relpath"] in present and m["relpath"] not in embedding]


def _check_target(store: EmbeddingStore, root: Path, model: Any) -> tuple[Any, str, str | None]:
    """Refuse another folder or model than the index was built from; record both on the first build.
    Returns ``(model, its spec, its alias or None)`` (``model`` None: the recorded spec)."""
    old_root = store.get_meta("root")
    if old_root is not None and Path(old_root) != root:
        raise ClipzooError(f"index {str(store.path)!r} indexes folder {old_root!r}, not {str(root)!r}; pass that "
                           f"folder, or a new --out for this one")
    if model is None:
        model = store.get_meta("model_spec")
        if model is None:
            raise ClipzooError("no model given: pass --model (the first build of an index needs one)")
    spec, alias = model_identity(model)
    store.check_model(spec, alias)
    check_weights(store, spec)
    if old_root is None:
        store.set_meta(root=str(root))
    return model, spec, alias


def _compare(store: EmbeddingStore, root: Path, relpaths: list[str], known: dict, report: BuildReport) -> list[str]:
    """The files to embed (new, or changed content); counts the unchanged ones in ``report`` and refreshes
    their size, mtime and caption in the store."""
    to_embed: list[str] = []
    touched: list[tuple[str, int, int, str | None]] = []
    for rel in relpaths:
        path = root / rel
        try:
            st = path.stat()
        except OSError:
            continue
        old = known.get(rel)
        if old is None:
            to_embed.append(rel)
            continue
        _, size, mtime_ns, sha, caption = old
        if (size, mtime_ns) != (st.st_size, st.st_mtime_ns):
            try:
                same = sha256_file(path) == sha
            except OSError:
                same = False
            if not same:
                to_embed.append(rel)
                continue
        new_caption = caption_of(path, root) if (caption is not None or path.with_suffix(".txt").exists()) else None
        report.unchanged += 1
        if (size, mtime_ns, caption) != (st.st_size, st.st_mtime_ns, new_caption):
            touched.append((rel, st.st_size, st.st_mtime_ns, new_caption))
    store.touch(touched)
    return to_embed


class _Pending:
    """Rows and vectors not yet committed: one shard + one transaction every ``shard_rows`` rows or
    ``flush_seconds`` seconds."""

    def __init__(self, store: EmbeddingStore, shard_rows: int, flush_seconds: float):
        self.store, self.shard_rows, self.flush_seconds = store, shard_rows, flush_seconds
        self.rows: list[ItemRow] = []
        self.vectors: list[np.ndarray] = []
        self.last_flush = time.monotonic()

    def add(self, row: ItemRow, vector: np.ndarray) -> None:
        self.rows.append(row)
        self.vectors.append(vector[None])

    def flush_if_due(self) -> None:
        if len(self.rows) >= self.shard_rows or time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.store.add(self.rows, np.concatenate(self.vectors))
            self.rows.clear()
            self.vectors.clear()
        self.last_flush = time.monotonic()


def _embed(store: EmbeddingStore, root: Path, relpaths: list[str], known: dict, comparator: Any, spec: str,
           settings: _Settings, report: BuildReport) -> int:
    """Decode, embed and commit ``relpaths``; unreadable files go to ``report.skipped``. Returns how many
    files were embedded."""
    import torch

    comparator.require(IMAGE)
    store.check_model(spec, comparator.card.alias, comparator.embed_dim)
    paths = [str(root / r) for r in relpaths]
    draft_size = draft_size_for(comparator) if settings.fast_decode else None
    loader = image_loader(paths, comparator.transform, settings.batch_size, settings.workers, draft_size=draft_size,
                          dataset=IndexFiles, collate=collate_index_batch, threads=decode_in_threads(comparator))
    pending = _Pending(store, settings.shard_rows, settings.flush_seconds)
    embedded = 0
    failed_known: list[str] = []
    with progress_bar(len(paths), f"indexing {len(paths)} images", enabled=settings.show_progress,
                      unit="images") as advance:
        batches = loader if settings.embedder is None else settings.embedder(paths, comparator, draft_size)
        for good, pixels, errors in batches:  # with an embedder, "pixels" are the features already
            for i, reason in errors:
                report.skipped.append((paths[i], reason))
                if relpaths[i] in known:
                    failed_known.append(relpaths[i])  # changed into something unreadable: its old row is stale
            if pixels is not None:
                feats = pixels  # from the embedder
                if settings.embedder is None:
                    with torch.no_grad():
                        feats = comparator.encode_image(pixels, normalize=True).float().cpu().numpy()
                for (i, sha, size, mtime_ns), vec in zip(good, feats):
                    rel = relpaths[i]
                    if not np.all(np.isfinite(vec)):  # never enters the index (scores must stay cosines)
                        report.skipped.append((paths[i], "the model gave non-finite values (NaN or infinity)"))
                        continue
                    pending.add(ItemRow(rel, size, mtime_ns, sha, caption_of(root / rel, root), partition_of(rel)), vec)
                    if rel in known:
                        report.updated += 1
                    else:
                        report.added += 1
                embedded += len(good)
            advance(len(good) + len(errors))
            pending.flush_if_due()
    pending.flush()
    report.removed += store.remove(failed_known)
    return embedded
