"""What makes a shim submodule a pass-through: every name it does not define is open_clip's own."""
from __future__ import annotations

import types
from collections.abc import Callable

from ._real import submodule

_HELPERS = {"passthrough", "annotations"}


def passthrough(name: str, module_globals: dict) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for the shim's ``<name>`` submodule: a name it does not define
    is looked up on open_clip's ``open_clip.<name>``; ``__all__`` lists both (so ``import *`` works)."""
    real = submodule(name)
    own = {k for k, v in module_globals.items() if not k.startswith("_") and k not in _HELPERS
           and not isinstance(v, types.ModuleType)}
    public = sorted(own | {k for k in getattr(real, "__all__", None) or vars(real) if not k.startswith("_")})

    def __getattr__(attr: str):
        try:
            return getattr(real, attr)
        except AttributeError:
            raise AttributeError(f"module {module_globals['__name__']!r} has no attribute {attr!r}") from None

    def __dir__():
        return sorted(set(module_globals) | set(dir(real)))

    return __getattr__, __dir__, public
