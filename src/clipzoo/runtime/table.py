"""The runtimes' table (name -> module) and the one call that runs a named runtime.

Shared by :func:`clipzoo.runtime.apply_runtime` and ``runtime="auto"`` (which tries several); ``auto``
itself is not in this table, so that it can use it.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..cards import ModelCard
from . import bf16, compiled, onnx, onnx_int8, onnx_static_int8, openvino_int8, torch_int8

MODULES: dict[str, ModuleType] = {
    "compile": compiled,
    "onnx": onnx,
    "onnx-int8": onnx_int8,
    "onnx-int8-static": onnx_static_int8,
    "torch-int8": torch_int8,
    "bf16": bf16,
    "openvino-int8": openvino_int8,
}


def has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


def run_runtime(runtime: str, card: ModelCard, build: Callable[..., Any], *, device: str, precision: str,
                cache_dir, load_kwargs: dict) -> Any:
    """The Comparator of ``card`` under ``runtime`` (a normalised name, not ``auto``), tagged with it."""
    if runtime == "eager":
        comparator = build()
    else:
        comparator = MODULES[runtime].apply(card, build, device=device, precision=precision, cache_dir=cache_dir,
                                            load_kwargs=dict(load_kwargs))
    comparator.runtime = runtime
    return comparator
