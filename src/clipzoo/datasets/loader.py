"""Records -> batches of pixels in DataLoader workers, shards split across workers and ranks.

Each worker reads whole shards (``shards[rank * workers + worker :: ranks * workers]``), decodes
and transforms images, and yields items tagged with ``(shard, position)`` so that the caller can put
the data set back in order. Bad images and unreadable shards come back as error items naming the
file, not as exceptions inside a worker (which PyTorch would wrap in its own traceback).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import IterableDataset

from ..errors import ClipzooError
from ..processes import fork_safe_workers
from .records import Record, decode_image

__all__ = ["RecordStream", "Batch", "record_batches"]


@dataclass
class Batch:
    """A collated batch: pixels of the good images and, for each, its order tag, label and captions."""

    order: list[tuple[int, int]]
    pixels: Any  # Tensor[B, 3, H, W] or None when every image in the batch failed
    labels: list["int | None"]
    captions: list[list[str]]
    keys: list[str]
    errors: list[tuple[tuple[int, int], str, str]] = field(default_factory=list)  # (order, source, message)
    shard_errors: list[str] = field(default_factory=list)


class RecordStream(IterableDataset):
    """An ``IterableDataset`` of ``(order, pixels | None, label, captions, key, source, error)``."""

    def __init__(self, shards: Sequence[Callable[[], Iterator[Record]]], transform: "Callable | None",
                 rank: int = 0, world_size: int = 1):
        self.shards = list(shards)
        self.transform = transform
        self.rank, self.world_size = int(rank), int(world_size)

    def _my_shards(self) -> list[int]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = self.rank * nw + wid, self.world_size * nw
        return list(range(slot, len(self.shards), slots))

    def __iter__(self):
        for si in self._my_shards():
            pos = -1
            try:
                for pos, rec in enumerate(self.shards[si]()):
                    yield self._item((si, pos), rec)
            except ClipzooError as err:
                yield (si, pos + 1), None, None, [], "", getattr(self.shards[si], "name", str(si)), f"SHARD:{err}"

    def _item(self, order, rec: Record):
        try:
            image = decode_image(rec)
            pixels = self.transform(image) if self.transform is not None else image
            return order, pixels, rec.label, rec.captions, rec.key, rec.source, None
        except ClipzooError as err:
            return order, None, rec.label, rec.captions, rec.key, rec.source, str(err)
        except Exception as err:  # a transform that fails on this image
            return (order, None, rec.label, rec.captions, rec.key, rec.source,
                    f"image {rec.source!r} cannot be preprocessed ({type(err).__name__}: {err})")


def _collate(items: list) -> Batch:
    import torch

    good = [it for it in items if it[6] is None]
    errors = [(it[0], it[5], it[6]) for it in items if it[6] is not None and not it[6].startswith("SHARD:")]
    shard_errors = [it[6][6:] for it in items if it[6] is not None and it[6].startswith("SHARD:")]
    pixels = torch.stack([it[1] for it in good]) if good else None
    return Batch([it[0] for it in good], pixels, [it[2] for it in good], [list(it[3]) for it in good],
                 [it[4] for it in good], errors, shard_errors)


def record_batches(shards: Sequence[Callable[[], Iterator[Record]]], transform: Callable, batch_size: int = 64,
                   workers: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> Iterator[Batch]:
    """Batches of decoded, transformed images from ``shards`` (workers split the shards between them)."""
    from torch.utils.data import DataLoader

    stream = RecordStream(shards, transform, rank, world_size)
    workers = max(0, min(fork_safe_workers(int(workers)), len(stream.shards)))
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                        pin_memory=pin_memory, prefetch_factor=2 if workers else None,
                        persistent_workers=False)
    yield from loader
