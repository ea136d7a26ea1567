"""Runtimes: how a loaded Comparator executes (``clipzoo.load(spec, runtime=…)``, CLI ``--runtime``).

=============  ==================================================================================
``eager``      PyTorch as loaded (the default; ``"torch"`` is the same). fp16 / bf16 through
               ``precision=`` — on a GPU these run PyTorch's fused (SDPA) attention kernels.
``compile``    ``torch.compile`` of the image and text encoders (inductor; needs a C++ compiler
               on CPU). The first batch of each new shape compiles, later ones are fast.
``onnx``       exported once to ONNX (cached) and run in ONNX Runtime.
``int8``       dynamic int8 quantisation of the linear layers (matmuls): through ONNX Runtime
               (``onnx-int8``) when it is installed — the faster here, see docs/benchmarks.md —
               else through PyTorch (``torch-int8``). Both can be named explicitly.
=============  ==================================================================================

Each runtime keeps the Comparator API; its fidelity to eager fp32 is tested on tiny models
(tests/test_runtime.py): cosine ≥ 0.999 for the float runtimes, ≥ 0.99 for int8.
"""
from __future__ import annotations

from typing import Any

from ..errors import ClipzooError

RUNTIMES = ("eager", "compile", "onnx", "int8", "onnx-int8", "torch-int8")
_ALIASES = {"torch": "eager", "default": "eager", "ort": "onnx", "onnxruntime": "onnx"}


def normalize_runtime(runtime: str | None) -> str:
    """A runtime name as users may spell it -> one of :data:`RUNTIMES`; ``int8`` resolves to the int8
    engine available here. Unknown names raise :class:`ClipzooError` listing the known ones."""
    name = str(runtime or "eager").strip().lower().replace("_", "-")
    name = _ALIASES.get(name, name)
    if name not in RUNTIMES:
        raise ClipzooError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if name == "int8":
        name = "onnx-int8" if _has_onnxruntime() else "torch-int8"
    return name


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def load_with_runtime(spec: Any, runtime: str, **load_kwargs: Any):
    """``clipzoo.load(spec, runtime=runtime, **load_kwargs)`` for a runtime other than eager."""
    name = normalize_runtime(runtime)
    if name == "onnx":
        from ..convert.onnx import load_with_onnx_runtime

        return _tag(load_with_onnx_runtime(spec, **load_kwargs), name)
    if name == "onnx-int8":
        from .int8 import load_onnx_int8

        return _tag(load_onnx_int8(spec, **load_kwargs), name)
    from ..factory import load

    comparator = load(spec, runtime="eager", **load_kwargs)
    if name == "compile":
        from .compiled import compile_comparator

        return _tag(compile_comparator(comparator), name)
    if name == "torch-int8":
        from .int8 import quantize_torch

        return _tag(quantize_torch(comparator), name)
    return comparator


def _tag(comparator, name: str):
    comparator.runtime = name
    return comparator
