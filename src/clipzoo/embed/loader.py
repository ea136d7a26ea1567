"""The image loader: decode workers decode and preprocess images while the model encodes the previous batch, so
a folder of images goes through the model without waiting on decoding — a DataLoader's worker processes, or,
beside a model that runs in an engine of its own on the CPU, threads of this process
(:mod:`clipzoo.embed.thread_loader`, :func:`decode_in_threads`).

Fast decoding (``draft_size``) goes through :mod:`clipzoo.embed.decode` (libjpeg-turbo via simplejpeg when
installed, DCT scaling only while the sides stay >= twice the model's input); a worker stacks its batch in shared
memory (:func:`clipzoo.embed.handover.stack_shared`), so the parent receives a handle, not a copy."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ClipzooError
from ..inputs import open_image
from ..processes import fork_safe_workers
from .decode import decode_file
from .handover import stack_shared
from .thread_loader import ThreadedLoader

__all__ = ["default_workers", "ImageFiles", "collate_images", "image_loader", "draft_size_for",
           "decode_in_threads"]


def default_workers() -> int:
    """Decode workers for the image DataLoader: the CPU count, capped at 8."""
    return max(0, min(8, os.cpu_count() or 1))


class ImageFiles:
    """A map-style dataset of image files -> ``(index, pixels or None, error or None)``.

    Decode errors are returned, not raised, so that a worker process hands back a clean message
    (naming the file) instead of a wrapped traceback.
    """

    def __init__(self, paths: Sequence[str], transform: Callable, draft_size: int | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.draft_size = draft_size  # fast JPEG decoding for this input size (embed.decode); None: PIL, full

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            if not isinstance(path, str):  # a webdataset tar member
                image = path.open_rgb(self.draft_size)
            else:
                image = decode_file(path, self.draft_size) if self.draft_size else open_image(path)
            return index, self.transform(image), None
        except ClipzooError as exc:
            return index, None, str(exc)
        except Exception as exc:  # a transform that fails on this image
            return index, None, f"image {path!r} cannot be preprocessed ({type(exc).__name__}: {exc})"


def collate_images(items: list) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """``[(index, pixels|None, error|None)]`` -> ``(indices, stacked pixels or None, [(index, error)])``."""
    good = [(i, x) for i, x, err in items if err is None]
    errors = [(i, err) for i, _, err in items if err is not None]
    pixels = stack_shared([x for _, x in good]) if good else None
    return [i for i, _ in good], pixels, errors


def image_loader(paths: Sequence, transform: Callable, batch_size: int = 64, workers: int | None = None,
                 pin_memory: bool = False, draft_size: int | None = None, *, dataset: type = ImageFiles,
                 collate: Callable = collate_images, threads: bool = False):
    """A DataLoader over image files (or tar members), in order, decoding and preprocessing in ``workers``
    processes (0: in this process) while the model encodes earlier batches; ``draft_size``: reduced-size
    JPEG decoding (:func:`clipzoo.inputs.load_rgb`). ``dataset`` / ``collate``: an :class:`ImageFiles`
    subclass and its collate function (the index build's, which also hashes the files). ``threads``: decode
    in ``workers`` threads of this process instead, one batch ahead (:mod:`clipzoo.embed.thread_loader`;
    see :func:`decode_in_threads`)."""
    from torch.utils.data import DataLoader

    workers = default_workers() if workers is None else int(workers)
    if threads:
        return ThreadedLoader(dataset(paths, transform, draft_size), batch_size, workers, collate)
    workers = min(fork_safe_workers(workers), max(1, -(-len(paths) // batch_size))) if workers else 0
    return DataLoader(dataset(paths, transform, draft_size), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def decode_in_threads(comparator) -> bool:
    """Whether ``comparator``'s images are best decoded in threads of this process (:class:`ThreadedLoader`)
    rather than worker processes: when its towers run on the CPU in an engine of their own (ONNX Runtime, JAX,
    MindSpore: a :class:`~clipzoo.comparator.ForeignComparator`, which names it in ``ENGINE``), one call a batch
    that releases the GIL, where worker processes would compete with the engine's threads for the cores
    (:mod:`clipzoo.embed.thread_loader`). A PyTorch model keeps worker processes: its forward pass takes the GIL
    between its operators, and decode threads beside it measured slower than the processes
    (``benchmarks/results/decode_share.json``). The class is told by its ``ENGINE`` rather than imported: that
    would import torch at ``import clipzoo.embed``."""
    device = str(getattr(comparator, "device", "cpu")).split(":")[0]
    return device == "cpu" and getattr(comparator, "ENGINE", None) is not None


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
