"""Decoding in threads of this process, one batch ahead of the model (issue 22 §1/§4).

When the model runs on the CPU in an engine of its own (ONNX Runtime, JAX, MindSpore), it already keeps every
core busy, and decode worker *processes* compete with its threads: ONNX Runtime splits each operator across its
threads and waits for the slowest, so a core lent to a worker for a moment stalls the whole operator. Such an
engine runs a batch in one call that releases the GIL, and the decode (libjpeg-turbo, torch's resize) releases
it too, so threads decode in parallel beside it. ``benchmarks/decode_share.py`` measures both handovers side by
side (ViT-B/32, 256 photo-like 640×480 JPEGs, 2 cores; ``results/decode_share.json``): static int8 end to end
with two decode threads against two worker processes. A PyTorch model keeps the processes
(:func:`clipzoo.embed.loader.decode_in_threads`): its forward pass takes the GIL between operators, and threads
beside it measured slower there. The batch being decoded is the only one held besides the model's, so memory
stays at two batches whatever the folder's size, and no process is forked (so it also runs beside JAX).

:class:`ThreadedLoader` iterates like the DataLoader it replaces (the same dataset items and collate
function, in order) and has its ``num_workers``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["ThreadedLoader"]

THREAD_PREFIX = "clipzoo-decode"


class ThreadedLoader:
    """Batches of ``dataset[i]`` for i in order, collated by ``collate``; the next batch's items are decoded by
    ``num_workers`` threads while the caller works on the current one (0 threads: decoded when asked for)."""

    def __init__(self, dataset, batch_size: int, num_workers: int, collate: Callable[[list], Any]):
        self.dataset, self.batch_size, self.num_workers, self.collate = dataset, batch_size, num_workers, collate

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        starts = range(0, len(self.dataset), self.batch_size)
        if not self.num_workers:
            for start in starts:
                yield self.collate([self.dataset[i] for i in self._indices(start)])
            return
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix=THREAD_PREFIX) as pool:
            pending: list[Future] = self._submit(pool, 0)
            try:
                for start in starts:
                    current, pending = pending, self._submit(pool, start + self.batch_size)
                    yield self.collate([f.result() for f in current])
            finally:  # the caller stopped early or failed: drop what has not started
                for f in pending:
                    f.cancel()

    def _indices(self, start: int) -> range:
        return range(start, min(start + self.batch_size, len(self.dataset)))

    def _submit(self, pool: ThreadPoolExecutor, start: int) -> list[Future]:
        return [pool.submit(self.dataset.__getitem__, i) for i in self._indices(start)]
