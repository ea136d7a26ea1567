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

__all__ = ["ArraysOnlyUnpickler", "NUMPY_GLOBALS", "SAFE_GLOBALS", "read_params"]

NUMPY_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                 for n in ("_reconstruct", "scalar")}
NUMPY_GLOBALS |= {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
"""The globals a pickle of numpy arrays needs (numpy 1 and 2 spell the core module differently)."""
SAFE_GLOBALS = NUMPY_GLOBALS | {("jax._src.array", "_reconstruct_array"), ("flax.core.frozen_dict", "FrozenDict"),
                                ("collections", "OrderedDict")}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy (JAX, flax) arrays, refusing every other global (an UnpicklingError naming
    it); an array the pickle allocates empty — ``numpy.ndarray(shape)``, ``_reconstruct(…, shape, …)`` — may hold
    no more bytes than the file (a 125-byte pickle asked for 8 TB: a MemoryError, or gigabytes of uninitialised
    memory returned as weights)."""

    allowed = SAFE_GLOBALS

    def __init__(self, file, limit: int):
        super().__init__(file)
        self.limit = limit

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        found = super().find_class(module, name)
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayCall(self.limit)
        if name == "_reconstruct":
            return _bounded_reconstruct(found, self.limit)
        return found


class _NdarrayCall:
    """``numpy.ndarray`` as a pickle may call it, its size bounded; ``_reconstruct``'s type argument too."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, shape, dtype=float, *args, **kwargs):
        _check_size(shape, dtype, self.limit)
        return np.ndarray(shape, dtype, *args, **kwargs)


def _bounded_reconstruct(reconstruct, limit: int):
    def bounded(subtype, shape, dtype):
        _check_size(shape, dtype, limit)
        return reconstruct(np.ndarray if isinstance(subtype, _NdarrayCall) else subtype, shape, dtype)
    return bounded


def _check_size(shape, dtype, limit: int) -> None:
    try:
        count = int(np.prod(np.asarray(shape, dtype=np.int64).reshape(-1), dtype=np.float64))
        size = count * np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype).itemsize
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"the pickle asks for an array of shape {shape!r} ({exc})") from None
    if size > limit:
        raise CheckpointError(f"the pickle asks for an array of {size:,} bytes, more than its {limit:,}-byte file "
                              "holds; it is not a parameter file")


def read_params(path: "str | os.PathLike", trust_pickle: bool = False) -> dict:
    """An open_clip_jax ``.pkl`` -> ``{'params': {...}}`` of numpy arrays (and ``'batch_stats'`` if it has them)."""
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh) if trust_pickle else ArraysOnlyUnpickler(fh, os.fstat(fh.fileno()).st_size).load()
    except CheckpointError as exc:
        raise CheckpointError(f"cannot read JAX parameters from {path}: {exc}") from None
    except MemoryError:
        raise CheckpointError(f"cannot read JAX parameters from {path}: it asks for more memory than there is; "
                              "it is not a parameter file") from None
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
