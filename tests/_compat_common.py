"""Helpers the drop-in tests share: quiet calls of the originals, the largest difference of two tensors, and the
tiny config registered with open_clip under a test module's own name (as a user's add_model_config)."""
from __future__ import annotations

import json
import warnings

from clipzoo.testing import tiny


def quiet(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with warnings silenced (the originals warn about pickles, QuickGELU, …)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def maxdiff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def register_tiny_config(open_clip_module, folder, name: str) -> str:
    """Write the tiny config as ``folder/name.json`` and register it with ``open_clip_module``; ``name``."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(tiny.TINY_CONFIG))
    open_clip_module.add_model_config(str(path))
    return name
