"""``runtime="openvino-int8"``: the static int8 (QDQ) graphs run in OpenVINO instead of ONNX Runtime.

The same calibration as ``onnx-int8-static`` (:func:`clipzoo.runtime.onnx_static_int8.static_int8_folder`:
per-channel int8 weights, activation scales fixed by MinMax / entropy / percentile — whichever keeps the
highest min cosine to fp32 — cached beside the export), applied to the *portable* export (no ONNX Runtime
contrib ops: :func:`clipzoo.runtime.onnx.exported_folder` with ``portable=True``), which OpenVINO reads
directly (the onnx backend's ``openvino`` executor, :mod:`clipzoo.backends.onnx_openvino`): its CPU plugin runs
the quantised matmuls on its integer kernels (AMX-INT8, AVX512-VNNI, AVX2) with the bias, GELU and residual adds
fused into them — the non-GEMM half that ONNX Runtime runs as separate ops (docs/benchmarks.md). The scales are
fixed, so a row does not depend on its batch, as under ``onnx-int8-static``.

Needs ``openvino`` (``pip install 'clipzoo[openvino]'``) besides onnxruntime (the calibration runs the graphs in
it); CPU only. ``runtime="auto"`` measures it beside the others when it is installed.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends import get_backend
from ..backends.onnx_format import read_meta
from ..errors import UnsupportedError
from ..extras import require
from ..registry import local_card
from . import onnx_columns
from .onnx import exported_folder
from .onnx_static_int8 import static_int8_folder

EXECUTOR = "openvino"


def apply(card, build: Callable[..., Any], *, device: str, precision: str, cache_dir, load_kwargs: dict) -> Any:
    """The OpenVINO comparator of ``card``: its portable export statically quantised (calibrated on generated
    shapes, cached) and compiled for this CPU."""
    check_device(device)
    require("openvino", "runtime 'openvino-int8'")  # before minutes of export and calibration
    folder = exported_folder(card, build, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs,
                             portable=True)
    return load_folder(static_int8_folder(folder), device=device)


def check_device(device: str) -> None:
    if not str(device).startswith("cpu"):
        raise UnsupportedError(f"runtime 'openvino-int8' runs on the CPU, not {device!r}; "
                               "use runtime='eager' (or precision='fp16') on a GPU")


def load_folder(folder: Path, *, device: str = "cpu", cache_dir=None):
    """A statically quantised export (what ``static_int8_folder`` writes) with its graphs compiled by OpenVINO;
    the text rows run at their own length, as under the ONNX runtimes."""
    check_device(device)
    folder = Path(folder)
    if (read_meta(folder).get("quantization") or {}).get("kind") != "static":
        raise UnsupportedError(f"{folder} is not a static int8 export; runtime 'openvino-int8' runs the graphs "
                               "that static_int8_folder writes")
    comparator = get_backend("onnx").load(local_card(str(folder)).replace(backend="onnx"), device="cpu",
                                          cache_dir=cache_dir, executor=EXECUTOR)
    onnx_columns.install(comparator)
    return comparator
