"""Embed many images or texts with a Comparator and keep the result as a ``.npy`` file.

Images stream through a :class:`torch.utils.data.DataLoader` whose worker processes decode and
preprocess them (PIL) while the model encodes the previous batch, so a folder of images goes through
the model without waiting on decoding. Texts are tokenized and encoded in batches.

The ``.npy`` file holds a float32 matrix (one row per input, in order); a JSON sidecar beside it
(``emb.npy`` -> ``emb.json``) lists the inputs and says which model made the rows::

    from clipzoo.embedding import embed_images, save_embeddings
    result = embed_images(model, ["photos/"], workers=4, progress=True)
    save_embeddings(result, "photos.npy")
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadImageError, BadTextError, ClipzooError
from .files import atomic_write
from .inputs import IMAGE_SUFFIXES

__all__ = ["Embeddings", "expand_image_paths", "read_texts", "ImageFiles", "image_loader", "embed_images",
           "embed_texts", "save_embeddings", "load_embeddings", "sidecar_path", "default_workers", "draft_size_for"]


@dataclass
class Embeddings:
    """Rows of features and what they are: ``features[i]`` embeds ``inputs[i]``."""

    features: Any  # numpy.ndarray (N, D), float32
    inputs: list[str]
    modality: str
    model: str = ""
    normalized: bool = True
    skipped: list[dict[str, str]] = field(default_factory=list)  # inputs left out: {"input", "error"}

    def metadata(self) -> dict[str, Any]:
        return {"model": self.model, "modality": self.modality, "count": int(self.features.shape[0]),
                "dim": int(self.features.shape[1]) if self.features.ndim == 2 else None,
                "dtype": str(self.features.dtype), "normalized": self.normalized,
                "inputs": list(self.inputs), "skipped": list(self.skipped)}


def default_workers() -> int:
    """Decode workers for the image DataLoader: the CPU count, capped at 8."""
    return max(0, min(8, os.cpu_count() or 1))


# ------------------------------------------------------------------ inputs
def expand_image_paths(paths: "str | os.PathLike | Iterable[str | os.PathLike]") -> list[str]:
    """Files stay as given; a folder becomes its image files (recursively, sorted, hidden files skipped).

    Raises :class:`~clipzoo.errors.BadImageError` naming a path that does not exist or a folder
    without images.
    """
    from .files import expand_files

    return expand_files(paths, IMAGE_SUFFIXES, BadImageError, "image")


def read_texts(path: "str | os.PathLike") -> list[str]:
    """One text per line of a UTF-8 file (line ends stripped, blank lines skipped)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ClipzooError(f"texts file {path!r} does not exist; pass a UTF-8 text file with one text per line")
    if os.path.isdir(path):
        raise ClipzooError(f"texts file {path!r} is a folder; pass a UTF-8 text file with one text per line")
    try:
        with open(path, encoding="utf-8") as f:
            texts = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as exc:
        raise BadTextError(f"texts file {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "save it as UTF-8 with one text per line") from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise BadTextError(f"texts file {path!r} holds no texts; write one text per line")
    return texts


# ------------------------------------------------------------------ the image DataLoader
class ImageFiles:
    """A map-style dataset of image files -> ``(index, pixels or None, error or None)``.

    Decode errors are returned, not raised, so that a worker process hands back a clean message
    (naming the file) instead of a wrapped traceback.
    """

    def __init__(self, paths: Sequence[str], transform: Callable, draft_size: int | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.draft_size = draft_size  # reduced-size JPEG decoding (see clipzoo.inputs.load_rgb); None: full

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from .inputs import open_image

        path = self.paths[index]
        try:
            if isinstance(path, str):
                image = open_image(path, self.draft_size)
            else:  # a webdataset tar member (clipzoo.embedding_files.TarMember)
                image = path.open_rgb(self.draft_size)
            return index, self.transform(image), None
        except ClipzooError as exc:
            return index, None, str(exc)
        except Exception as exc:  # a transform that fails on this image
            return index, None, f"image {path!r} cannot be preprocessed ({type(exc).__name__}: {exc})"


def collate_images(items: list) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """``[(index, pixels|None, error|None)]`` -> ``(indices, stacked pixels or None, [(index, error)])``."""
    import torch

    good = [(i, x) for i, x, err in items if err is None]
    errors = [(i, err) for i, _, err in items if err is not None]
    pixels = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], pixels, errors


def image_loader(paths: Sequence, transform: Callable, batch_size: int = 64, workers: int | None = None,
                 pin_memory: bool = False, draft_size: int | None = None, *, dataset: type = ImageFiles,
                 collate: Callable = collate_images):
    """A DataLoader over image files (or tar members), in order, decoding and preprocessing in ``workers``
    processes (0: in this process) while the model encodes earlier batches; ``draft_size``: reduced-size
    JPEG decoding (:func:`clipzoo.inputs.load_rgb`). ``dataset`` / ``collate``: an :class:`ImageFiles`
    subclass and its collate function (the index build's, which also hashes the files)."""
    from torch.utils.data import DataLoader

    workers = default_workers() if workers is None else int(workers)
    workers = min(workers, max(1, -(-len(paths) // batch_size))) if workers else 0
    return DataLoader(dataset(paths, transform, draft_size), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def draft_size_for(comparator) -> int | None:
    """The smallest side a decoded image may have for ``comparator`` without losing detail: the
    largest of its input size and the size its transform first resizes to (None when unknown)."""
    sizes = []
    size = getattr(comparator, "image_size", None)
    if size is not None:
        sizes.extend(size if isinstance(size, (tuple, list)) else [size])
    for step in getattr(getattr(comparator, "transform", None), "transforms", None) or []:
        if type(step).__name__ == "Resize":
            value = step.size
            sizes.extend(value if isinstance(value, (tuple, list)) else [value])
    sizes = [int(v) for v in sizes if isinstance(v, (int, float)) and v]
    return max(sizes) if sizes else None


# ------------------------------------------------------------------ embedding
@contextlib.contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        try:
            yield lambda n: bar.advance(task, n)
        except BaseException:
            bar.update(task, visible=False)  # an error gets its own line, not a half-drawn bar
            raise


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ClipzooError(f"batch size must be at least 1, got {batch_size}")
    return int(batch_size)


def embed_images(comparator, images: "str | os.PathLike | Iterable[str | os.PathLike]", *, batch_size: int = 64,
                 workers: int | None = None, normalize: bool = True, progress: bool = False,
                 skip_bad: bool = False, fast_decode: bool = True) -> Embeddings:
    """Embed image files, folders (recursively, sorted) and webdataset ``.tar`` shards with ``comparator``.

    Images are decoded and preprocessed in ``workers`` DataLoader processes (default: CPU count, at
    most 8) and encoded ``batch_size`` at a time. A file that cannot be decoded raises
    :class:`~clipzoo.errors.BadImageError` naming it, or is left out (and listed in ``skipped``)
    when ``skip_bad``. With ``fast_decode=False`` rows equal ``comparator.encode_image(paths)``; the
    default decodes JPEGs at least twice the model's input size at reduced size (PIL draft mode), which
    is several times faster and changes rows by a cosine of ~1e-3 at most (docs/embedding.md).
    To stream rows to disk, or run under torchrun, use :func:`clipzoo.embedding_files.embed_to_file`.
    """
    import numpy as np

    from .cards import IMAGE
    from .embedding_files import DistributedInfo, expand_image_inputs, image_batches

    batch_size = _check_batch_size(batch_size)
    comparator._require(IMAGE)
    items = expand_image_inputs(images)
    rows: list[np.ndarray] = []
    kept: list[str] = []
    skipped: list[dict[str, str]] = []
    for names, feats, batch_skipped in image_batches(comparator, items, batch_size, workers, normalize, progress,
                                                      skip_bad, fast_decode, DistributedInfo()):
        if names:
            rows.append(feats)
            kept.extend(names)
        skipped.extend(batch_skipped)
    if not rows:
        raise BadImageError(f"none of the {len(items)} images could be decoded; first error: "
                            f"{skipped[0]['error'] if skipped else '(none)'}")
    return Embeddings(np.concatenate(rows).astype(np.float32, copy=False), kept, IMAGE,
                      comparator.card.alias, normalize, skipped)


def embed_texts(comparator, texts: "str | Sequence[str]", *, batch_size: int = 256, normalize: bool = True,
                truncate: bool = False, progress: bool = False) -> Embeddings:
    """Embed texts (a list, or one string) in batches. A text longer than the model's context raises
    :class:`~clipzoo.errors.BadTextError` naming it, unless ``truncate``."""
    import numpy as np

    from .cards import TEXT
    from .embedding_files import text_batches
    from .inputs import text_items

    batch_size = _check_batch_size(batch_size)
    comparator._require(TEXT)
    texts = text_items(texts)
    rows = [feats for _, feats, _ in text_batches(comparator, texts, batch_size, normalize, progress, truncate)]
    return Embeddings(np.concatenate(rows).astype(np.float32, copy=False), list(texts), TEXT,
                      comparator.card.alias, normalize)


# ------------------------------------------------------------------ files
def sidecar_path(npy_path: "str | os.PathLike") -> Path:
    """``emb.npy`` -> ``emb.json``: the inputs and model behind the rows."""
    return Path(npy_path).with_suffix(".json")


def _npy_path(out: "str | os.PathLike") -> Path:
    out = Path(os.path.expanduser(os.fspath(out)))
    return out if out.suffix == ".npy" else out.with_name(out.name + ".npy")


def save_embeddings(embeddings: Embeddings, out: "str | os.PathLike") -> tuple[Path, Path]:
    """Write ``out`` (``.npy`` added if missing) and its JSON sidecar; each file appears whole or not at all."""
    import numpy as np

    npy = _npy_path(out)
    if npy.parent and not npy.parent.exists():
        npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(npy, lambda f: np.save(f, embeddings.features))
    return npy, write_sidecar(npy, embeddings.metadata())


def write_sidecar(npy_path: "str | os.PathLike", metadata: dict[str, Any]) -> Path:
    """Write the JSON sidecar of ``npy_path`` (whole or not at all)."""
    side = sidecar_path(npy_path)
    atomic_write(side, lambda f: f.write(json.dumps(metadata, indent=1, ensure_ascii=False).encode("utf-8")))
    return side


def load_embeddings(path: "str | os.PathLike") -> Embeddings:
    """Read a ``.npy`` written by :func:`save_embeddings` with its sidecar (inputs unknown if it is gone)."""
    import numpy as np

    npy = _npy_path(path)
    if not npy.exists():
        raise ClipzooError(f"embeddings file {os.fspath(npy)!r} does not exist")
    features = np.load(npy)
    side = sidecar_path(npy)
    meta = json.loads(side.read_text(encoding="utf-8")) if side.exists() else {}
    return Embeddings(features, meta.get("inputs", []), meta.get("modality", ""), meta.get("model", ""),
                      meta.get("normalized", True), meta.get("skipped", []))
