"""``runtime="onnx-int8"``: dynamic int8 quantisation (weights int8, activations quantised per batch at run
time) of the cached ONNX export.

The export (see :func:`clipzoo.runtime.onnx.exported_folder`) quantised by
``onnxruntime.quantization.quantize_dynamic`` — MatMul/Gemm weights per output channel, int8 (7-bit on an x86
CPU without VNNI: :func:`weights_reduce_range`) — and kept beside it in the cache (``<export>-int8``, or
``<export>-int8r7`` for the 7-bit weights; a user's exported folder gets its own name in the cache:
:func:`clipzoo.runtime.onnx.derived_base`), then run in ONNX Runtime.
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
from .bf16 import cpu_flags
from .onnx import build_entry, derived_base, exported_folder, load_exported, load_or_rebuild

QUANT_OPS = ["MatMul", "Gemm"]
EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""x86 flags of int8 dot products that accumulate in int32 (VNNI, AMX): full-range int8 weights are exact there."""


def apply(card: ModelCard, build: Callable[..., Any], *, device: str, precision: str, cache_dir,
          load_kwargs: dict) -> Any:
    """The int8 ONNX Runtime comparator of ``card`` (exported and quantised now when not cached yet)."""
    def run():
        folder = exported_folder(card, build, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs)
        return load_exported(int8_folder(folder, derived_base(card, folder, cache_dir)), device=device,
                             cache_dir=cache_dir)

    return load_or_rebuild(card, cache_dir, load_kwargs, run)


def int8_folder(folder: Path, base: Path) -> Path:
    """The dynamic int8 version of the export ``folder`` (itself when it is quantised already), quantised now when
    the cache has none: ``<base>-int8`` (``-int8r7``: 7-bit weights)."""
    if read_meta(folder).get("quantization"):
        return folder  # already an int8 export
    reduce_range = weights_reduce_range()
    quantised = base.with_name(base.name + ("-int8r7" if reduce_range else "-int8"))
    if not (quantised / META_FILE).is_file():
        quantize_onnx_folder(folder, quantised, reduce_range=reduce_range)
    return quantised


def weights_reduce_range(flags: frozenset[str] | None = None) -> bool:
    """Whether to quantise int8 weights to 7 bits (ONNX Runtime's ``reduce_range``) on this CPU: on an x86 CPU
    without VNNI or AMX, ONNX Runtime's uint8 × int8 kernels add pairs of products in int16 (``vpmaddubsw``),
    which saturates with full-range weights; halving the weights' range keeps every pair within int16. On the
    embedded tiny-shapes on an AVX2-only AMD EPYC (Zen 1), 64 shapes and captions, ad hoc: static int8 text min
    cosine 0.999310 with full-range weights, 0.999952 with 7-bit ones (image 0.997648 / 0.997829); dynamic text
    0.999287 / 0.999965 (image 0.999881 / 0.999892). Elsewhere (VNNI, AMX, Arm) the full range."""
    flags = cpu_flags() if flags is None else flags
    return "sse2" in flags and not flags & EXACT_INT8_FLAGS


def quantize_onnx_folder(src: Path, dst: Path, *, reduce_range: bool = False) -> Path:
    """Write ``dst``: the export in ``src`` with every graph dynamically quantised (int8 per channel; 7-bit
    weights when ``reduce_range``: :func:`weights_reduce_range`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = read_meta(src)
    files = [g["file"] for g in meta["graphs"].values()]

    def build(tmp: Path) -> None:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(META_FILE, *files, *[f + ".data" for f in files]))
        for name in files:
            with warnings.catch_warnings(), quiet_root_logger():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(src / name), str(tmp / name), op_types_to_quantize=QUANT_OPS, per_channel=True,
                                 reduce_range=reduce_range, weight_type=QuantType.QInt8)
        quantised = {**meta, "quantization": {"kind": "dynamic", "weights": "int8 (7-bit range)" if reduce_range
                                              else "int8", "reduce_range": reduce_range, "per_channel": True,
                                              "ops": QUANT_OPS, "from": str(src)}}
        quantised.pop("max_abs_diff", None)  # measured for the fp32 graphs
        (tmp / META_FILE).write_text(json.dumps(quantised, indent=2) + "\n", encoding="utf-8")

    return build_entry(dst, build)


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
