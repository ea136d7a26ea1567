"""Rows streamed to a ``.npy`` file as they are computed, so memory stays flat however many inputs there are."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RowWriter", "COPY_ROWS"]

COPY_ROWS = 65536
"""Rows copied at a time when a file is trimmed or parts are merged."""


class RowWriter:
    """Rows appended to a memory-mapped ``.npy`` sized for ``capacity`` rows; :meth:`commit` trims it to
    the rows written and renames it into place, so ``path`` appears whole or not at all."""

    def __init__(self, path: Path, capacity: int):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.capacity = capacity
        self.rows = 0
        self.array = None

    def append(self, block) -> None:
        import numpy as np

        if self.array is None:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                   shape=(self.capacity, block.shape[1]))
        self.array[self.rows:self.rows + len(block)] = block
        self.rows += len(block)

    def commit(self, dim: int) -> None:
        import numpy as np

        if self.array is None:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(0, dim))
        self.array.flush()
        array, self.array = self.array, None
        if self.rows < self.capacity:  # some inputs were skipped: write the kept rows only
            trimmed = self.tmp.with_name(self.tmp.name + "-trim")
            out = np.lib.format.open_memmap(trimmed, mode="w+", dtype=np.float32, shape=(self.rows, array.shape[1]))
            for start in range(0, self.rows, COPY_ROWS):
                stop = min(start + COPY_ROWS, self.rows)
                out[start:stop] = array[start:stop]
            out.flush()
            del out, array
            os.replace(trimmed, self.tmp)
        else:
            del array
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.array = None
        for p in (self.tmp, self.tmp.with_name(self.tmp.name + "-trim")):
            p.unlink(missing_ok=True)
