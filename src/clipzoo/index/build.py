"""``build_index``: a folder of images -> an index folder (store + FAISS), incremental and crash-safe.

Steps of a run:

1. open (or create) the store; refuse a different model or folder; delete orphan shards and temporary
   files that a killed run left;
2. walk the folder (jpg, jpeg, png, webp, gif, bmp; hidden files and the index folder itself skipped)
   and compare with the store: same (size, mtime) -> unchanged; otherwise the SHA-256 decides; files
   gone from the folder are dropped;
3. new and changed files are read, hashed and decoded in DataLoader worker processes and embedded in
   batches; every ``shard_rows`` rows (or ``flush_seconds``) become one shard + one transaction;
   files that cannot be decoded are skipped, counted and listed (never fatal);
4. the FAISS indexes (all items, and one per partition = first-level subfolder) are rebuilt from the
   committed rows when the store changed, then swapped in atomically via ``vectors/vectors.json``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embedding import ImageFiles
from ..errors import ClipzooError
from ..files import atomic_write
from .store import EmbeddingStore, ItemRow
from .vectors import build_vectors

__all__ = ["BuildReport", "build_index", "INDEX_SUFFIXES", "walk_images", "refresh_vectors", "model_identity",
           "VECTORS_DIR", "VECTORS_META"]

INDEX_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
VECTORS_DIR = "vectors"
VECTORS_META = "vectors.json"


@dataclass
class BuildReport:
    """What one ``build_index`` run did."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    total: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    index_kind: str = ""
    recall_at_10: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [list(s) for s in self.skipped]
        return d


# ------------------------------------------------------------------ model identity
def model_identity(model: Any) -> tuple[str, str | None]:
    """``(spec to reload it, card alias or None)`` of a spec string or a Comparator, loading nothing.

    A spec string that names an existing file or folder becomes its absolute path; its alias is only
    known once loaded (or resolved, see :meth:`EmbeddingStore.check_model`)."""
    if isinstance(model, (str, os.PathLike)):
        spec = os.fspath(model)
        if os.path.exists(os.path.expanduser(spec)):
            spec = os.path.abspath(os.path.expanduser(spec))
        return spec, None
    card = getattr(model, "card", None)
    if card is None:
        raise ClipzooError(f"model must be a spec string or a clipzoo Comparator, not a {type(model).__name__}")
    if card.source.path:
        spec = os.path.abspath(card.source.path)
    elif getattr(model, "spec", None):
        spec = str(model.spec)
    else:
        spec = card.alias
    return spec, card.alias


def _load(model: Any, runtime: str = "eager"):
    if isinstance(model, (str, os.PathLike)):
        import clipzoo

        return clipzoo.load(os.fspath(model), runtime=runtime)
    return model


# ------------------------------------------------------------------ walking
def walk_images(root: "str | os.PathLike", exclude: "str | os.PathLike | None" = None) -> list[str]:
    """Relative POSIX paths of the image files under ``root`` (sorted; hidden entries and ``exclude`` skipped)."""
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (skip is None or (here / d).resolve() != skip))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in INDEX_SUFFIXES:
                out.append((here / name).relative_to(root).as_posix())
    out.sort()
    return out


def _partition(relpath: str) -> str | None:
    parts = relpath.split("/")
    return parts[0] if len(parts) > 1 else None


def _caption(path: Path) -> str | None:
    txt = path.with_suffix(".txt")
    try:
        return txt.read_text(encoding="utf-8", errors="replace").strip() or None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ the decoding dataset
class IndexFiles(ImageFiles):
    """Map-style dataset: file -> ``(index, pixels|None, error|None, sha256, size, mtime_ns)``.

    The bytes are read once: hashed and decoded from the same buffer, so the stored hash always
    describes the pixels that were embedded.
    """

    def __getitem__(self, index: int):
        from ..inputs import load_rgb

        path = self.paths[index]
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return index, None, f"cannot be read ({exc.strerror or exc})", "", 0, 0
        sha = hashlib.sha256(data).hexdigest()
        meta = (sha, st.st_size, st.st_mtime_ns)
        if not data:
            return (index, None, "empty file (0 bytes)", *meta)
        try:
            rgb = load_rgb(io.BytesIO(data), self.draft_size)
        except Exception as exc:  # noqa: BLE001 - any decoder failure (incl. decompression bombs) skips the file
            return (index, None, _decode_reason(exc), *meta)
        try:
            return (index, self.transform(rgb), None, *meta)
        except Exception as exc:  # noqa: BLE001
            return (index, None, f"cannot be preprocessed ({type(exc).__name__}: {exc})", *meta)


def _decode_reason(exc: Exception) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image (corrupt, or not jpg/png/webp/gif/bmp data)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused as a decompression bomb ({exc})"
    return f"cannot be decoded ({type(exc).__name__}: {exc})"


def _collate(items: list):
    import torch

    good = [it for it in items if it[2] is None]
    bad = [it for it in items if it[2] is not None]
    pixels = torch.stack([it[1] for it in good]) if good else None
    return ([(it[0], it[3], it[4], it[5]) for it in good], pixels, [(it[0], it[2]) for it in bad])


# ------------------------------------------------------------------ progress
class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled and total > 0
        self.total = total
        self._bar = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                ProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            class Rate(ProgressColumn):
                def render(self, task):
                    speed = task.finished_speed or task.speed
                    return Text("" if speed is None else f"{speed:,.1f} images/s")

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task(f"indexing {self.total} images", total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


# ------------------------------------------------------------------ vectors
def refresh_vectors(store: EmbeddingStore, force: bool = False, **options: Any) -> dict[str, Any]:
    """Rebuild the FAISS files from the committed rows unless ``vectors.json`` already matches the
    store's generation; returns the vectors record. ``options`` go to :func:`build_vectors`."""
    vdir = store.path / VECTORS_DIR
    meta_path = vdir / VECTORS_META
    generation = store.generation
    if meta_path.exists() and not force:
        try:
            meta = json.loads(meta_path.read_text("utf-8"))
            if meta.get("generation") == generation and all((vdir / p["file"]).exists() for p in
                                                            [meta["all"], *meta.get("partitions", {}).values()]):
                return meta
        except (OSError, ValueError, KeyError, TypeError):
            pass
    vdir.mkdir(parents=True, exist_ok=True)
    ids, x = store.all_vectors()
    dim = store.dim or (x.shape[1] if x.ndim == 2 else 0)
    if x.shape[1] != dim:
        x = np.zeros((0, dim), np.float32)
    tag = f"g{generation}-{os.getpid()}-{time.time_ns() % 10**9}"
    record: dict[str, Any] = {"generation": generation, "count": int(len(ids)), "dim": int(dim),
                              "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(), "partitions": {}}
    vi = build_vectors(ids, x, **options)
    record["all"] = {"file": vi.save(vdir / f"all-{tag}.faiss").name, **vi.describe()}
    partitions = store.partitions()
    with store._lock:
        has_root_items = store.conn.execute("SELECT 1 FROM items WHERE partition IS NULL LIMIT 1").fetchone()
    if len(partitions) > 1 or (partitions and has_root_items):
        for i, name in enumerate(partitions):
            pids, px = store.all_vectors(name)
            pvi = build_vectors(pids, px, **options)
            record["partitions"][name] = {"file": pvi.save(vdir / f"part{i}-{tag}.faiss").name, **pvi.describe()}
    elif partitions:
        record["partitions"][partitions[0]] = dict(record["all"])
    atomic_write(meta_path, lambda f: f.write(json.dumps(record, indent=1, ensure_ascii=False).encode("utf-8")))
    keep = {record["all"]["file"], *(p["file"] for p in record["partitions"].values()), VECTORS_META}
    for p in vdir.iterdir():
        if p.name not in keep:
            p.unlink(missing_ok=True)
    return record


# ------------------------------------------------------------------ build
def build_index(folder: "str | os.PathLike", out: "str | os.PathLike", model: Any = None, batch_size: int = 64,
                workers: int | None = None, progress: bool = False, *, shard_rows: int = 4096,
                flush_seconds: float = 10.0, vector_options: dict[str, Any] | None = None,
                fast_decode: bool = True, runtime: str = "eager") -> BuildReport:
    """Index the images under ``folder`` into the index folder ``out`` with ``model`` (spec or Comparator).

    ``fast_decode``: decode large JPEGs at reduced size (see :func:`clipzoo.inputs.load_rgb`); False
    gives vectors equal to ``model.encode_image(path)``. ``runtime``: how a model given as a spec runs
    (see :mod:`clipzoo.runtime`; the index records the spec, and queries run eager).
    A rerun embeds only new or changed files and drops deleted ones; a run killed at any moment leaves
    an index that the next run completes. ``model`` may be omitted on a rerun (the recorded one is used).
    """
    t0 = time.perf_counter()
    if int(batch_size) < 1:
        raise ClipzooError(f"batch size must be at least 1, got {batch_size}")
    if workers is not None and int(workers) < 0:
        raise ClipzooError(f"workers must be 0 or more, got {workers}")
    root = Path(os.path.expanduser(os.fspath(folder))).absolute()
    if not root.exists():
        raise ClipzooError(f"folder {os.fspath(folder)!r} does not exist; pass the folder of images to index")
    if not root.is_dir():
        raise ClipzooError(f"{os.fspath(folder)!r} is not a folder; pass the folder of images to index")
    store = EmbeddingStore(out, create=True)
    try:
        return _build(store, root, model, int(batch_size), workers, progress, int(shard_rows), flush_seconds,
                      vector_options or {}, t0, fast_decode, runtime)
    finally:
        store.close()


def _build(store: EmbeddingStore, root: Path, model: Any, batch_size: int, workers: int | None, progress: bool,
           shard_rows: int, flush_seconds: float, vector_options: dict[str, Any], t0: float,
           fast_decode: bool = True, runtime: str = "eager") -> BuildReport:
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
    if old_root is None:
        store.set_meta(root=str(root))
    store.cleanup()

    report = BuildReport()
    relpaths = walk_images(root, exclude=store.path)
    known = store.files()
    if not relpaths and store.dim is None:
        raise ClipzooError(f"folder {str(root)!r} holds no images ({', '.join(INDEX_SUFFIXES)}); check the path")
    present = set(relpaths)
    report.removed = store.remove(p for p in known if p not in present)

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
                same = _sha256_file(path) == sha
            except OSError:
                same = False
            if not same:
                to_embed.append(rel)
                continue
        new_caption = _caption(path) if (caption is not None or path.with_suffix(".txt").exists()) else None
        report.unchanged += 1
        if (size, mtime_ns, caption) != (st.st_size, st.st_mtime_ns, new_caption):
            touched.append((rel, st.st_size, st.st_mtime_ns, new_caption))
    store.touch(touched)

    embedded = 0
    t_embed = time.perf_counter()
    if to_embed:
        embedded = _embed(store, root, to_embed, known, _load(model, runtime), spec, alias, batch_size, workers,
                          progress, shard_rows, flush_seconds, report, fast_decode)
    embed_seconds = time.perf_counter() - t_embed
    store.set_skipped([(os.path.relpath(p, root), r) for p, r in report.skipped])
    store.compact()
    record = refresh_vectors(store, **vector_options)
    report.total = store.count()
    report.seconds = time.perf_counter() - t0
    report.images_per_s = embedded / embed_seconds if embedded and embed_seconds > 0 else 0.0
    report.index_kind = record["all"]["kind"]
    report.recall_at_10 = record["all"].get("recall_at_10")
    return report


def _embed(store: EmbeddingStore, root: Path, relpaths: list[str], known: dict, comparator, spec: str, alias: str,
           batch_size: int, workers: int | None, progress: bool, shard_rows: int, flush_seconds: float,
           report: BuildReport, fast_decode: bool = True) -> int:
    import torch

    from ..cards import IMAGE
    from ..embedding import draft_size_for, image_loader

    comparator._require(IMAGE)
    store.check_model(spec, comparator.card.alias, comparator.embed_dim)
    paths = [str(root / r) for r in relpaths]
    loader = image_loader(paths, comparator.transform, batch_size, workers,
                          draft_size=draft_size_for(comparator) if fast_decode else None, dataset=IndexFiles,
                          collate=_collate)
    pending_rows: list[ItemRow] = []
    pending_vecs: list[np.ndarray] = []
    last_flush = time.monotonic()
    embedded = 0
    failed_known: list[str] = []

    def flush() -> None:
        nonlocal last_flush
        if pending_rows:
            store.add(pending_rows, np.concatenate(pending_vecs))
            pending_rows.clear()
            pending_vecs.clear()
        last_flush = time.monotonic()

    with _Progress(len(paths), progress) as bar:
        for good, pixels, errors in loader:
            for i, reason in errors:
                report.skipped.append((paths[i], reason))
                if relpaths[i] in known:
                    failed_known.append(relpaths[i])  # changed into something unreadable: its old row is stale
            if pixels is not None:
                with torch.no_grad():
                    feats = comparator.encode_image(pixels, normalize=True).float().cpu().numpy()
                for (i, sha, size, mtime_ns), vec in zip(good, feats):
                    rel = relpaths[i]
                    pending_rows.append(ItemRow(rel, size, mtime_ns, sha, _caption(root / rel), _partition(rel)))
                    pending_vecs.append(vec[None])
                    if rel in known:
                        report.updated += 1
                    else:
                        report.added += 1
                embedded += len(good)
            bar.advance(len(good) + len(errors))
            if len(pending_rows) >= shard_rows or time.monotonic() - last_flush >= flush_seconds:
                flush()
    flush()
    report.removed += store.remove(failed_known)
    return embedded
