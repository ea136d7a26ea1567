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

__all__ = ["ArraysOnlyUnpickler", "NUMPY_GLOBALS", "SAFE_GLOBALS", "TrustedUnpickler", "check_float_array",
           "read_params"]

NUMPY_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                 for n in ("_reconstruct", "scalar")}
NUMPY_GLOBALS |= {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
"""The globals a pickle of numpy arrays needs (numpy 1 and 2 spell the core module differently)."""
FROZEN_DICT = ("flax.core.frozen_dict", "FrozenDict")
"""Read as a plain dict: FrozenDict's constructor deep-copies the dicts it is given, so a pickle that hands it one
dict from many places (12 levels of 20) asked for 20**12 copies while it was unpickled."""
SAFE_GLOBALS = NUMPY_GLOBALS | {("jax._src.array", "_reconstruct_array"), ("flax.core.frozen_dict", "FrozenDict"),
                                ("collections", "OrderedDict")}


MAX_TREE_DEPTH = 64
"""Nesting of dicts a parameter file may have (open_clip_jax's trees are 7 deep): deeper is refused in one line, not
a RecursionError."""


class RefusedGlobalError(pickle.UnpicklingError):
    """A global the unpickler refuses: the file needs code to load (a truncated or garbage file is not this)."""


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
            raise RefusedGlobalError(f"it refers to {module}.{name}")
        if (module, name) == FROZEN_DICT:
            return dict
        found = super().find_class(module, name)
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayCall(self.limit)
        if name == "_reconstruct":
            return _bounded_reconstruct(found, self.limit)
        return found


class TrustedUnpickler(pickle.Unpickler):
    """Any pickle (``trust_pickle=True``), Flax's FrozenDicts read as dicts as :class:`ArraysOnlyUnpickler` reads
    them."""

    def find_class(self, module: str, name: str):
        return dict if (module, name) == FROZEN_DICT else super().find_class(module, name)


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
    obj = _unpickle(path, trust_pickle)
    params = obj.get("params") if isinstance(obj, Mapping) else None
    if not isinstance(params, Mapping):
        raise CheckpointError(f"{path} is not an open_clip_jax parameter file (a pickled {{'params': {{...}}}})")
    stats = obj.get("batch_stats")  # clipzoo's ResNet tower: BatchNorm running averages
    reader = _TreeReader(os.path.getsize(path))  # one reader for both trees: sharing between them is refused too
    try:
        if isinstance(stats, Mapping):
            return {"params": reader.read(params), "batch_stats": reader.read(stats, "batch_stats/")}
        return {"params": reader.read(params)}
    except CheckpointError as exc:
        raise CheckpointError(f"cannot read JAX parameters from {path}: {exc}") from None


def _unpickle(path: "str | os.PathLike", trust_pickle: bool):
    try:
        with open(path, "rb") as fh:
            unpickler = TrustedUnpickler(fh) if trust_pickle else ArraysOnlyUnpickler(fh, os.fstat(fh.fileno()).st_size)
            return unpickler.load()
    except RefusedGlobalError as exc:
        raise UnsafePickleError(f"{path} is a pickle that holds more than arrays ({exc}); loading it can run "
                                "arbitrary code. If you trust its source, pass trust_pickle=True "
                                "(CLI: --trust-pickle)") from None
    except CheckpointError as exc:
        raise CheckpointError(f"cannot read JAX parameters from {path}: {exc}") from None
    except MemoryError:
        raise CheckpointError(f"cannot read JAX parameters from {path}: it asks for more memory than there is; "
                              "it is not a parameter file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read JAX parameters from {path}: {exc}") from None
    # what a cut-off or garbage file raises while it is unpickled (a stack or memo it lacks, bad arguments)
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError) as exc:
        raise CheckpointError(f"cannot read JAX parameters from {path}: it is truncated or not a pickle "
                              f"({type(exc).__name__}: {exc}); write it again or download it again") from None


class _TreeReader:
    """Reads a tree into dicts of numpy arrays, in time and memory bounded by the file. A pickle can refer to one
    dict from many places (a 2 KB file of 20 references to one dict, 12 levels deep, stood for 20**12 paths): a
    dict met twice is refused; and, should some mapping hand out a new object for a shared one at each access,
    a tree of more entries than the file has bytes (each entry takes at least one)."""

    def __init__(self, file_size: int):
        self.budget = max(int(file_size), 1)
        self.seen: dict[int, Mapping] = {}  # id -> the dict, kept alive so that no id is reused

    def read(self, tree: Mapping, prefix: str = "", depth: int = 1) -> dict:
        where = prefix.rstrip("/")
        if tree and id(tree) in self.seen:  # (one empty dict under two keys repeats nothing)
            raise CheckpointError(f"{where or 'the tree'} repeats a sub-tree met before; it is not a parameter file")
        if depth > MAX_TREE_DEPTH:
            shown = where[:80].rstrip("/")
            raise CheckpointError(f"its dicts nest more than {MAX_TREE_DEPTH} deep at {shown}…; it is not a "
                                  "parameter file")
        self.seen[id(tree)] = tree
        self.budget -= len(tree)
        if self.budget < 0:
            raise CheckpointError(f"its tree has more entries than the file has bytes (at {where or 'the top'}): "
                                  "it repeats sub-trees; it is not a parameter file")
        out = {}
        for k, v in tree.items():
            path = f"{prefix}{k}"
            out[str(k)] = self.read(v, path + "/", depth + 1) if isinstance(v, Mapping) else \
                np.asarray(check_float_array(path, v))
        return out


def check_float_array(path: str, value):
    """``value`` if it is an array (numpy's, JAX's; a float is made one) of real floats — float16/32/64, bfloat16 —
    else a CheckpointError naming ``path``: a list, a string, an int or complex array is no parameter (and a list
    of lists repeating one list can stand for exponentially many elements)."""
    if isinstance(value, (np.generic, float)):
        value = np.asarray(value)
    dtype = getattr(value, "dtype", None)
    if not (hasattr(value, "__array__") and hasattr(value, "shape") and dtype is not None):
        raise CheckpointError(f"parameter {path} is a {type(value).__name__}, not an array")
    if np.dtype(dtype).kind != "f" and np.dtype(dtype).name != "bfloat16":
        raise CheckpointError(f"parameter {path} holds {dtype} values; parameters are arrays of real floats "
                              "(float32, bfloat16, …)")
    return value
