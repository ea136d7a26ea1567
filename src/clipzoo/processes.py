"""Processes: how many decode workers may start (the embedding pipeline's and the data sets' loaders), and whether
the process that wrote a temporary file still runs."""
from __future__ import annotations

import os
import sys


def fork_safe_workers(workers: int) -> int:
    """``workers``, or 0 (decode in this process) when JAX is loaded here: JAX is multithreaded and a forked
    child can deadlock, and a spawned one would need every caller's script to guard its ``__main__``."""
    return 0 if "jax" in sys.modules else workers


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine; another user's process counts (signalling it is refused, not
    unknown), and so does a number no process can have (nothing is removed on a guess)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
