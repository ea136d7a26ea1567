"""open_clip itself, held here under its own name.

Once a program aliases the shim (``sys.modules["open_clip"] = clipzoo.compat.open_clip``, or
:func:`clipzoo.compat.open_clip.install`), ``import open_clip`` gives the shim back; the shim reaches
open_clip only through :data:`REAL` and :data:`SUBMODULES`, bound here when the shim is first imported.
open_clip's ``__init__`` imports every one of its submodules, so they are all bound now.
"""
from __future__ import annotations

import sys
import types

import open_clip as REAL  # noqa: N812 - the one reference to the real package

if getattr(REAL, "IS_CLIPZOO_SHIM", False):  # the shim was aliased before this module first ran
    raise ImportError("clipzoo.compat.open_clip must be imported before sys.modules['open_clip'] is pointed "
                      "at it: import clipzoo.compat.open_clip first, then alias it")

SUBMODULES: dict[str, types.ModuleType] = {
    key[len(REAL.__name__) + 1:]: module for key, module in list(sys.modules.items())
    if key.startswith(f"{REAL.__name__}.") and "." not in key[len(REAL.__name__) + 1:]}


def submodule(name: str) -> types.ModuleType:
    """open_clip's own ``open_clip.<name>`` module."""
    return SUBMODULES[name]
