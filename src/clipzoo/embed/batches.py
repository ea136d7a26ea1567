"""Batches through the model: images from the DataLoader, texts in chunks; each yields
``(names, float32 rows, skipped)`` and advances the progress bar."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import BadImageError
from ..inputs import check_batch_size
from ..progress import progress as progress_bar
from .distributed import DistributedInfo
from .gpu import GpuEmbedder, prefetch
from .handover import Uint8Crop, normalize_uint8, split_transform
from .loader import decode_in_threads, draft_size_for, image_loader

__all__ = ["check_batch_size", "image_batches", "text_batches"]


def image_batches(comparator, items: list, batch_size: int, workers, normalize: bool, progress: bool,
                  skip_bad: bool, fast_decode: bool, info: DistributedInfo) -> Iterator[tuple[list[str], Any, list]]:
    """Image files / tar members -> batches of rows; a bad image raises unless ``skip_bad``."""
    import torch

    device = torch.device(comparator.device)
    split = split_transform(comparator.transform)  # uint8 crops in shared memory, normalised here (embed.handover)
    draft = draft_size_for(comparator) if fast_decode else None
    transform = Uint8Crop(split, fast=fast_decode) if split else comparator.transform
    loader = image_loader(items, transform, batch_size, workers, pin_memory=device.type == "cuda", draft_size=draft,
                          threads=decode_in_threads(comparator))
    label = f"embedding {len(items)} images" + (f" (rank {info.rank}/{info.world_size})" if info.active else "")
    gpu = GpuEmbedder(comparator) if split is not None and device.type == "cuda" else None  # embed.gpu
    with progress_bar(len(items), label, enabled=progress, unit="images") as advance:
        for indices, pixels, errors in (prefetch(loader, device) if gpu is not None else loader):
            if errors and not skip_bad:
                raise BadImageError(f"{errors[0][1]} (to leave such images out: --skip-bad, skip_bad=True)")
            skipped = [{"input": str(items[i]), "error": err} for i, err in errors]
            if pixels is not None and gpu is not None:  # on the GPU already: normalise, channels-last, graph
                feats = gpu.encode(gpu.pixels(pixels), normalize=normalize)
                yield [str(items[i]) for i in indices], feats.cpu().numpy(), skipped
            elif pixels is not None:
                pixels = pixels.to(device, non_blocking=True)
                if split is not None:
                    pixels = normalize_uint8(pixels, split)
                feats = comparator.encode_image(pixels, normalize=normalize)
                yield [str(items[i]) for i in indices], feats.float().cpu().numpy(), skipped
            else:
                yield [], None, skipped
            advance(len(indices) + len(errors))


def text_batches(comparator, texts: list[str], batch_size: int, normalize: bool, progress: bool,
                 truncate: bool) -> Iterator[tuple[list[str], Any, list]]:
    """Texts -> batches of rows; a text longer than the context raises unless ``truncate``."""
    with progress_bar(len(texts), f"embedding {len(texts)} texts", enabled=progress, unit="texts") as advance:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            feats = comparator.encode_text(chunk, normalize=normalize, batch_size=batch_size, truncate=truncate)
            yield chunk, feats.float().cpu().numpy(), []
            advance(len(chunk))
