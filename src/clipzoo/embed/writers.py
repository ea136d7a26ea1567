"""Rows streamed to a ``.npy`` file as they are computed, so memory stays flat however many inputs there are."""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from ..files import remove_dead_temporaries

__all__ = ["RowWriter", "COPY_ROWS", "remove_stale_temporaries"]

COPY_ROWS = 65536
"""Rows copied at a time when a file is trimmed or parts are merged."""


class RowWriter:
    """Rows appended to a memory-mapped ``.npy`` sized for ``capacity`` rows; :meth:`commit` trims it to
    the rows written and renames it into place, so ``path`` appears whole or not at all. The temporary file is
    ``.NAME.tmp-PID`` beside ``path``; those a killed run left there (its process gone) are removed first."""

    def __init__(self, path: Path, capacity: int):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.capacity = capacity
        self.rows = 0
        self.array = None
        remove_stale_temporaries(path)

    def append(self, block) -> None:
        import numpy as np

        if self.array is None:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                   shape=(self.capacity, block.shape[1]))
        self.array[self.rows:self.rows + len(block)] = block
        self.rows += len(block)

    def commit(self, dim: int, before_replace: "Callable[[], object] | None" = None) -> None:
        """Trim and rename into place; ``before_replace`` runs just before the rename (the sidecar's write: when
        it fails, ``path`` is left as it was, so the previous pair stays a pair)."""
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
        if before_replace is not None:
            before_replace()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.array = None
        for p in (self.tmp, self.tmp.with_name(self.tmp.name + "-trim")):
            p.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files of :class:`RowWriter` s for ``path`` whose process is gone (a run killed by
    SIGKILL or the OOM killer left a full-size hidden ``.NAME.tmp-PID``): only names of exactly that pattern, for
    this output, whose PID is no running process here (:func:`clipzoo.files.remove_dead_temporaries`). Returns
    those removed."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+)(-trim)?")
    return remove_dead_temporaries(path.parent if str(path.parent) else ".", pattern)
