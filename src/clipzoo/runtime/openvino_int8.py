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
from ..backends.onnx_format import CONTRIB_DOMAIN, read_meta
from ..errors import UnsupportedError
from ..extras import require
from ..registry import local_card
from . import onnx_columns
from .onnx import derived_base, exported_folder, load_or_rebuild
from .onnx_static_int8 import static_int8_folder

EXECUTOR = "openvino"


def apply(card, build: Callable[..., Any], *, device: str, precision: str, cache_dir, load_kwargs: dict) -> Any:
    """The OpenVINO comparator of ``card``: its portable export statically quantised (calibrated on generated
    shapes, cached) and compiled for this CPU."""
    check_device(device)
    require("openvino", "runtime 'openvino-int8'")  # before minutes of export and calibration
    if card.backend == "onnx":  # a user's export: ours are portable by construction
        check_portable(Path(card.source.path))

    def run():
        folder = exported_folder(card, build, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs,
                                 portable=True)
        return load_folder(static_int8_folder(folder, base=derived_base(card, folder, cache_dir)), device=device)

    return load_or_rebuild(card, cache_dir, load_kwargs, run)


def check_portable(folder: Path) -> None:
    """Refuse, before minutes of calibration, an export with ONNX Runtime's contrib ops (a fused ViT's
    ``MultiHeadAttention``, which the static int8 quantisation turns into ``QAttention``: OpenVINO reads neither the
    one nor the other after quantisation)."""
    ops = sorted({op for g in read_meta(folder)["graphs"].values() for op in contrib_ops(folder / g["file"])})
    if ops:
        raise UnsupportedError(f"{folder} holds ONNX Runtime's contrib ops ({', '.join(ops)}), which OpenVINO cannot "
                               "run once quantised; export the model in standard ops (export_onnx(..., vit='standard')"
                               ", or load the PyTorch model with runtime='openvino-int8'), or use "
                               "runtime='onnx-int8-static'")


def contrib_ops(path: Path) -> set[str]:
    """The op types of the graph at ``path`` in ONNX Runtime's contrib domain (its weights not read)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {n.op_type for n in graph.node if n.domain == CONTRIB_DOMAIN}


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
