"""How many decode worker processes may start (the embedding pipeline's and the data sets' loaders)."""
from __future__ import annotations

import sys


def fork_safe_workers(workers: int) -> int:
    """``workers``, or 0 (decode in this process) when JAX is loaded here: JAX is multithreaded and a forked
    child can deadlock, and a spawned one would need every caller's script to guard its ``__main__``."""
    return 0 if "jax" in sys.modules else workers
