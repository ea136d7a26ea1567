"""The graphs of an exported folder compiled by OpenVINO for the CPU: the onnx backend's ``openvino`` executor
(``clipzoo.load(folder, executor="openvino")``; what ``runtime="openvino-int8"`` runs its static int8 graphs on).

OpenVINO reads the ONNX files directly; a statically quantised (QDQ) graph becomes integer matmuls on its CPU
kernels (AMX-INT8, AVX512-VNNI, AVX2) with the element-wise ops fused into them. The float parts run in the
precision OpenVINO picks for the CPU (bf16 where it is native, else fp32): :attr:`OpenVinoTowers.precision`.
OpenVINO reads some of ONNX Runtime's contrib ops (the fused ViT export's ``MultiHeadAttention`` and ``BiasGelu``)
but not the static int8 runtime's ``QAttention``: ``openvino-int8`` quantises the portable export instead.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..extras import require
from .onnx_format import CONTRIB_DOMAIN

DEVICE = "CPU"
HINTS = {"PERFORMANCE_HINT": "LATENCY"}  # one stream: each batch uses every core (embedding runs batches in turn)
NO_GRAD = ("runs in OpenVINO, which computes no gradients; load the PyTorch model (runtime='eager') to "
           "backpropagate, or pass a tensor that does not require grad")


def require_openvino():
    return require("openvino", "executor='openvino'")


class OpenVinoTowers(torch.nn.Module):
    """One compiled OpenVINO model per modality, with :class:`clipzoo.backends.onnx.OnnxTowers`'
    ``run(modality, x)``, ``folder`` and ``graphs``."""

    def __init__(self, folder: Path, graphs: dict):
        super().__init__()
        ov = require_openvino()
        core = ov.Core()
        self.folder = folder
        self.graphs = graphs
        self.version = ov.get_version().split("-")[0]
        self.compiled = {m: compile_graph(core, folder / g["file"]) for m, g in graphs.items()}
        self.requests = {m: c.create_infer_request() for m, c in self.compiled.items()}
        self.locks = {m: threading.Lock() for m in self.compiled}  # a request runs one inference at a time
        hint = next(iter(self.compiled.values())).get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)  # "bf16" / "f32"

    def run(self, modality: str, x: np.ndarray) -> np.ndarray:
        compiled = self.compiled[modality]
        with self.locks[modality]:
            out = self.requests[modality].infer({0: np.ascontiguousarray(x)})
            return np.array(out[compiled.output(0)], copy=True)  # the request reuses its output buffer

    def kernels(self, modality: str) -> dict[tuple[str, str], int]:
        """How many of the compiled ``modality`` graph's layers run as each (layer type, precision) — e.g.
        ``("FullyConnected", "u8")``: a quantised matmul on the integer kernels."""
        counts: dict[tuple[str, str], int] = {}
        for op in self.compiled[modality].get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            key = (info["layerType"].astype(str), info["runtimePrecision"].astype(str))
            counts[key] = counts.get(key, 0) + 1
        return counts

    def extra_repr(self) -> str:
        return f"folder={self.folder}, graphs={sorted(self.graphs)}, float parts in {self.precision}"


def compile_graph(core, path: Path):
    """``path`` read and compiled for the CPU; a graph OpenVINO cannot read is a one-line error."""
    try:
        return core.compile_model(core.read_model(str(path)), DEVICE, threads(HINTS))
    except RuntimeError as exc:
        hint = ("; it holds ONNX Runtime's contrib ops that OpenVINO does not read (the static int8 runtime's "
                "QAttention): quantise the portable export (export_onnx(..., vit='standard'), as openvino-int8 does)"
                ) if CONTRIB_DOMAIN in str(exc) else ""
        raise CheckpointError(f"OpenVINO cannot run {path}: {reason(str(exc))[:300]}{hint}") from None


def reason(message: str) -> str:
    """The informative part of an OpenVINO error: its summary lines, else its first line that is not a source
    location (``Exception from src/…``, ``Check '…' failed at …``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if "Summary:" in lines:
        return "; ".join(line.lstrip("- ") for line in lines[lines.index("Summary:") + 1:])
    return next((line for line in lines if not line.startswith(("Exception from", "Check '"))),
                lines[0] if lines else "unknown error")


def threads(hints: dict) -> dict:
    """OpenVINO's hints with its thread count set to torch's (what ``torch.set_num_threads`` / OMP_NUM_THREADS
    gave the process), so the runtimes share one setting."""
    return {**hints, "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads() or os.cpu_count() or 1)}
