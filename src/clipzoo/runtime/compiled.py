"""``runtime="compile"``: the Comparator's two encoders through ``torch.compile``."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from ..cards import ModelCard
from ..errors import ClipzooError
from .onnx import refuse_export


def apply(card: ModelCard, build: Callable[..., Any], *, device: str, precision: str, cache_dir,
          load_kwargs: dict) -> Any:
    """The eager comparator of ``card`` with its encoders compiled."""
    refuse_export(card, "compile", "onnx")
    return compile_comparator(build())


def compile_comparator(comparator, mode: str | None = None, backend: str = "inductor"):
    """Compile ``encode_pixels`` and ``encode_tokens`` in place (gradients still flow) and return the
    comparator. Compilation happens lazily on the first call with each input shape."""
    import torch

    if not hasattr(torch, "compile"):
        raise ClipzooError("runtime='compile' needs PyTorch ≥ 2.0 (torch.compile); use runtime='eager'")
    has_compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if backend == "inductor" and comparator.device.type == "cpu" and not has_compiler:
        raise ClipzooError("runtime='compile' on CPU needs a C++ compiler (g++ or clang++) for "
                           "torch.compile's inductor; install one (apt-get install g++) or use runtime='eager'")
    for name in ("encode_pixels", "encode_tokens"):
        eager = getattr(comparator, name)
        # an instance attribute shadows the class method; the eager one stays reachable for debugging
        object.__setattr__(comparator, name, torch.compile(eager, mode=mode, backend=backend, dynamic=None))
        object.__setattr__(comparator, f"_eager_{name}", eager)
    return comparator
