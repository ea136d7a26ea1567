"""One training run per ``--output`` at a time: an exclusive ``flock`` on ``OUTPUT/.clipzoo_train.lock``.

Two runs on one OUTPUT each reported success while their checkpoints overwrote each other and ``metrics.jsonl``
held both runs' steps interleaved. Rank 0 of a run takes the lock when the run is set up (a local OUTPUT; an
object store has no locks); a second run fails at once naming the holder's pid. The lock goes with the process's
file descriptor, so a killed run never leaves it held.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .result import TrainingError

__all__ = ["RUN_LOCK", "hold_output"]

RUN_LOCK = ".clipzoo_train.lock"


def hold_output(folder: "Path | None", shown: str) -> "int | None":
    """Lock the local run folder ``folder`` (created when missing) for this process; the lock's file descriptor
    (kept open for the run), or None for a remote OUTPUT. A :class:`TrainingError` when another run holds it."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise TrainingError(f"--output {shown} is in use by another training run (pid {holder or '?'}); wait for "
                            "it to finish, or pass another --output") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
