"""Embedding runs: many images or texts into :class:`~clipzoo.embed.results.Embeddings` in memory
(:func:`embed_images`, :func:`embed_texts`), or streamed into a ``.npy`` file, also under torchrun
(:func:`embed_to_file`)."""
from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..cards import IMAGE, TEXT
from ..errors import BadImageError, BadOptionError, ClipzooError
from ..inputs import text_items
from .batches import check_batch_size, image_batches, text_batches
from .distributed import DistributedInfo, barrier, distributed_info, merge_parts, part_name, parts_dir, shard_bounds
from .results import Embeddings, check_outputs, write_sidecar
from .sources import expand_image_inputs
from .writers import RowWriter

__all__ = ["embed_images", "embed_texts", "embed_to_file", "check_workers", "read_paths"]


def _none_decoded(n: int, skipped: list[dict[str, str]]) -> BadImageError:
    return BadImageError(f"none of the {n} images could be decoded; first error: "
                         f"{skipped[0]['error'] if skipped else '(none)'}")


def embed_images(comparator, images: "str | os.PathLike | Iterable[str | os.PathLike]", *, batch_size: int = 64,
                 workers: int | None = None, normalize: bool = True, progress: bool = False,
                 skip_bad: bool = False, fast_decode: bool = True) -> Embeddings:
    """Embed image files, folders (recursively, sorted) and webdataset ``.tar`` shards with ``comparator``.

    Images are decoded and preprocessed in ``workers`` DataLoader processes (default: CPU count, at
    most 8) and encoded ``batch_size`` at a time. A file that cannot be decoded raises
    :class:`~clipzoo.errors.BadImageError` naming it, or is left out (and listed in ``skipped``)
    when ``skip_bad``. With ``fast_decode=False`` rows equal ``comparator.encode_image(paths)``; the
    default decodes JPEGs by libjpeg-turbo, at reduced size (DCT scaling) while both sides stay at least twice
    the model's input, and resizes with torch's antialiased uint8 kernel (:mod:`clipzoo.embed.handover`, within
    one level of PIL's pixels): rows within 0.9999 cosine of the exact ones (docs/embedding.md).
    To stream rows to disk, or run under torchrun, use :func:`embed_to_file`.
    """
    import numpy as np

    batch_size, workers = check_batch_size(batch_size), check_workers(workers)
    comparator.require(IMAGE)
    items = expand_image_inputs(images, skip_bad=skip_bad)
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
        raise _none_decoded(len(items), skipped)
    return Embeddings(np.concatenate(rows).astype(np.float32, copy=False), kept, IMAGE,
                      comparator.card.alias, normalize, skipped)


def embed_texts(comparator, texts: "str | Sequence[str]", *, batch_size: int = 256, normalize: bool = True,
                truncate: bool = False, progress: bool = False) -> Embeddings:
    """Embed texts (a list, or one string) in batches. A text longer than the model's context raises
    :class:`~clipzoo.errors.BadTextError` naming it, unless ``truncate``."""
    import numpy as np

    batch_size = check_batch_size(batch_size)
    comparator.require(TEXT)
    texts = text_items(texts)
    rows = [feats for _, feats, _ in text_batches(comparator, texts, batch_size, normalize, progress, truncate)]
    return Embeddings(np.concatenate(rows).astype(np.float32, copy=False), list(texts), TEXT,
                      comparator.card.alias, normalize)


def embed_to_file(comparator, out: "str | os.PathLike", *, images: Any = None, texts: Sequence[str] | None = None,
                  batch_size: int | None = None, workers: int | None = None, normalize: bool = True,
                  progress: bool = False, skip_bad: bool = False, truncate: bool = False, fast_decode: bool = True,
                  info: DistributedInfo | None = None) -> dict[str, Any]:
    """Embed ``images`` (files, folders, tar shards) or ``texts`` with ``comparator`` straight into
    ``out`` (``.npy`` + JSON sidecar). Under torchrun each rank embeds its share and rank 0 merges.

    Rows go to the output file as they are computed (a memory-mapped ``.npy`` written under a temporary
    name and renamed when complete, the sidecar just before), so memory stays flat however many inputs there are.
    ``images`` already expanded (:func:`~clipzoo.embed.sources.expand_image_inputs`) are taken as they are. Before
    any work, an output or sidecar that would replace one of the files read, or whose place is a folder, is a
    one-line :class:`~clipzoo.errors.ClipzooError` (:func:`~clipzoo.embed.results.check_outputs`); ``batch_size``
    below 1, no texts and ``workers`` below 0 are refused as ``clipzoo embed`` refuses them.
    Returns the sidecar's metadata (for a rank other than 0 in a distributed run: its part's).
    """
    if (images is None) == (texts is None):
        raise ClipzooError("pass exactly one of images= or texts=")
    info = info or distributed_info()
    modality = IMAGE if images is not None else TEXT
    batch_size = check_batch_size((64 if modality == IMAGE else 256) if batch_size is None else batch_size)
    workers = check_workers(workers)
    items = expand_image_inputs(images, skip_bad=skip_bad) if images is not None \
        else text_items(texts if isinstance(texts, (str, list, tuple)) else list(texts))  # [] is refused, as there
    comparator.require(modality)
    npy = check_outputs(out, read_paths(items) if modality == IMAGE else ())  # before any work
    start, stop = shard_bounds(len(items), info.rank, info.world_size)
    target = parts_dir(npy) / part_name(info.rank, info.world_size) if info.active else npy
    target.parent.mkdir(parents=True, exist_ok=True)
    if modality == IMAGE:
        batches = image_batches(comparator, items[start:stop], batch_size, workers, normalize, progress, skip_bad,
                                fast_decode, info)
    else:
        batches = text_batches(comparator, items[start:stop], batch_size, normalize, progress, truncate)
    # a rank of a distributed run may have no rows: only a whole run with none fails
    none_decoded = functools.partial(_none_decoded, len(items)) if modality == IMAGE and not info.active else None
    part = {"rank": info.rank, "world_size": info.world_size, "start": start, "stop": stop} if info.active else None
    meta = _write_rows(comparator, target, stop - start, batches, modality, normalize, none_decoded, part)
    if info.active:
        barrier(info)
        if info.rank == 0:
            return merge_parts(npy, info.world_size)
    return meta


def _write_rows(comparator, target, capacity: int, batches, modality: str, normalize: bool,
                none_decoded: "Callable[[list], Exception] | None" = None,
                part: "dict[str, int] | None" = None) -> dict[str, Any]:
    """Stream ``batches`` into ``target`` and its sidecar (each whole or not at all; the sidecar written just
    before the ``.npy`` is renamed into place, so a failed write leaves the previous pair as it was); returns the
    sidecar's metadata (with ``part``: a rank's share). With ``none_decoded``, no row at all raises what it makes
    of the skipped inputs, and ``target`` is left as it was (a previous run's good output was replaced by an empty
    one, then the run failed)."""
    writer = RowWriter(target, capacity)
    names: list[str] = []
    skipped: list[dict[str, str]] = []
    meta: dict[str, Any] = {}
    try:
        for batch_names, feats, batch_skipped in batches:
            if len(batch_names):
                writer.append(feats)
                names.extend(batch_names)
            skipped.extend(batch_skipped)
        if none_decoded is not None and not names:
            raise none_decoded(skipped)
        meta.update(model=comparator.card.alias, modality=modality, count=writer.rows, dim=int(comparator.embed_dim),
                    dtype="float32", normalized=normalize, inputs=names, skipped=skipped)
        if part is not None:
            meta["part"] = part
        writer.commit(int(comparator.embed_dim), before_replace=lambda: write_sidecar(target, meta))
    except BaseException:
        writer.abort()
        raise
    return meta


def check_workers(workers: Any) -> "int | None":
    """``workers`` if None (the default) or a whole number of at least 0; otherwise a one-line
    :class:`~clipzoo.errors.BadOptionError` naming it (-1 was torch's own ValueError)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral)
                                or workers < 0):
        raise BadOptionError(f"workers must be None or a whole number of 0 or more, got {workers!r}")
    return None if workers is None else int(workers)


def read_paths(items) -> list[str]:
    """The files an image run reads: its image files and the tar shards its members are in (each once)."""
    return list(dict.fromkeys(item if isinstance(item, str) else getattr(item, "tar", str(item)) for item in items))
