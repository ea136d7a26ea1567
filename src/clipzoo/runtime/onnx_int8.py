"""``runtime="onnx-int8"``: dynamic int8 quantisation (weights int8, activations quantised per batch at run
time) of the cached ONNX export.

The export (see :func:`clipzoo.runtime.onnx.exported_folder`) quantised by
``onnxruntime.quantization.quantize_dynamic`` — MatMul/Gemm weights per output channel, int8 — and kept
beside it in the cache (``<export>-int8``), then run in ONNX Runtime.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends.onnx_format import META_FILE, read_meta
from ..cards import ModelCard
from ..files import build_folder_once
from .onnx import exported_folder, load_exported

QUANT_OPS = ["MatMul", "Gemm"]


def apply(card: ModelCard, build: Callable[..., Any], *, device: str, precision: str, cache_dir,
          load_kwargs: dict) -> Any:
    """The int8 ONNX Runtime comparator of ``card`` (exported and quantised now when not cached yet)."""
    folder = exported_folder(card, build, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs)
    if read_meta(folder).get("quantization"):
        quantised = folder  # already an int8 export
    else:
        quantised = folder.with_name(folder.name + "-int8")
        if not (quantised / META_FILE).is_file():
            quantize_onnx_folder(folder, quantised)
    return load_exported(quantised, device=device, cache_dir=cache_dir)


def quantize_onnx_folder(src: Path, dst: Path) -> Path:
    """Write ``dst``: the export in ``src`` with every graph dynamically quantised (int8, per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = read_meta(src)
    files = [g["file"] for g in meta["graphs"].values()]

    def build(tmp: Path) -> None:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(META_FILE, *files, *[f + ".data" for f in files]))
        for name in files:
            with warnings.catch_warnings(), quiet_root_logger():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(src / name), str(tmp / name), op_types_to_quantize=QUANT_OPS, per_channel=True,
                                 weight_type=QuantType.QInt8)
        quantised = {**meta, "quantization": {"kind": "dynamic", "weights": "int8", "per_channel": True,
                                              "ops": QUANT_OPS, "from": str(src)}}
        quantised.pop("max_abs_diff", None)  # measured for the fp32 graphs
        (tmp / META_FILE).write_text(json.dumps(quantised, indent=2) + "\n", encoding="utf-8")

    return build_folder_once(dst, build, META_FILE)


@contextlib.contextmanager
def quiet_root_logger():
    """onnxruntime.quantization advises pre-processing through the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
