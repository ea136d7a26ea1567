"""open_clip_jax's parameter files (``.pkl``: a pickled ``{'params': {...}}``) read safely, without torch.

An unpickler that admits arrays (numpy's, JAX's, flax's FrozenDict) and nothing else, unless the caller trusts
the file (``trust_pickle=True``); the tree comes back as numpy arrays. The ``jax`` backend, the converter and
the ``compat.open_clip_jax`` drop-in all read through :func:`read_params`, so the drop-in loads no torch.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import numpy as np

from ..errors import CheckpointError, UnsafePickleError

__all__ = ["SAFE_GLOBALS", "read_params"]

SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("jax._src.array", "_reconstruct_array"), ("flax.core.frozen_dict", "FrozenDict"),
    ("collections", "OrderedDict"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def read_params(path: "str | os.PathLike", trust_pickle: bool = False) -> dict:
    """An open_clip_jax ``.pkl`` -> ``{'params': {...}}`` of numpy arrays (and ``'batch_stats'`` if it has them)."""
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh) if trust_pickle else _ArraysOnly(fh).load()
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"{path} is a pickle that holds more than arrays ({exc}); loading it can run "
                                "arbitrary code. If you trust its source, pass trust_pickle=True "
                                "(CLI: --trust-pickle)") from None
    except (OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read JAX parameters from {path}: {exc}") from None
    params = obj.get("params") if isinstance(obj, Mapping) else None
    if not isinstance(params, Mapping):
        raise CheckpointError(f"{path} is not an open_clip_jax parameter file (a pickled {{'params': {{...}}}})")
    stats = obj.get("batch_stats")  # clipzoo's ResNet tower: BatchNorm running averages
    if isinstance(stats, Mapping):
        return {"params": _numpy_tree(params), "batch_stats": _numpy_tree(stats)}
    return {"params": _numpy_tree(params)}


def _numpy_tree(tree: Mapping) -> dict:
    return {str(k): _numpy_tree(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}
