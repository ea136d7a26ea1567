"""``runtime="int8"``: dynamic int8 quantisation of the linear layers (weights int8, activations
quantised per batch at run time).

- ``onnx-int8``: the cached ONNX export (see :func:`clipzoo.convert.onnx.exported_folder`) quantised by
  ``onnxruntime.quantization.quantize_dynamic`` — MatMul/Gemm weights per output channel, int8 — and
  kept beside it in the cache (``<export>-int8``), then run in ONNX Runtime.
- ``torch-int8``: ``torch.ao.quantization.quantize_dynamic`` of the model's ``nn.Linear`` layers, in
  place (inference only, CPU).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..errors import UnsupportedError

QUANT_OPS = ["MatMul", "Gemm"]


def quantize_onnx_folder(src: Path, dst: Path) -> Path:
    """Write ``dst``: the export in ``src`` with every graph dynamically quantised (int8, per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..backends.onnx import META_FILE, read_meta
    from ..files import build_folder_once

    meta = read_meta(src)
    files = [g["file"] for g in meta["graphs"].values()]

    def build(tmp: Path) -> None:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(META_FILE, *files, *[f + ".data" for f in files]))
        for name in files:
            with warnings.catch_warnings(), _quiet_root_logger():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(src / name), str(tmp / name), op_types_to_quantize=QUANT_OPS, per_channel=True,
                                 weight_type=QuantType.QInt8)
        quantised = {**meta, "quantization": {"kind": "dynamic", "weights": "int8", "per_channel": True,
                                              "ops": QUANT_OPS, "from": str(src)}}
        quantised.pop("max_abs_diff", None)  # measured for the fp32 graphs
        (tmp / META_FILE).write_text(json.dumps(quantised, indent=2) + "\n", encoding="utf-8")

    return build_folder_once(dst, build, META_FILE)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization advises pre-processing through the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load_onnx_int8(spec: Any, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
                   trust_pickle: bool = False, **kwargs: Any):
    from ..backends import get_backend
    from ..backends.onnx import META_FILE, read_meta
    from ..convert.onnx import exported_folder
    from ..registry import local_card

    folder = exported_folder(spec, precision=precision, cache_dir=cache_dir, trust_pickle=trust_pickle, **kwargs)
    if read_meta(folder).get("quantization"):
        quantised = folder  # already an int8 export
    else:
        quantised = folder.with_name(folder.name + "-int8")
        if not (quantised / META_FILE).is_file():
            quantize_onnx_folder(folder, quantised)
    return get_backend("onnx").load(local_card(str(quantised)).replace(backend="onnx"), device=device,
                                    cache_dir=cache_dir)


def quantize_torch(comparator):
    """Dynamic int8 quantisation of ``comparator.model``'s ``nn.Linear`` layers, in place."""
    import torch

    if comparator.device.type != "cpu":
        raise UnsupportedError(f"runtime='torch-int8' runs on CPU only; {comparator.card.alias} is on "
                               f"{comparator.device} — load it with device='cpu'")
    if comparator.dtype != torch.float32:
        raise UnsupportedError("runtime='torch-int8' quantises an fp32 model; load it with precision='fp32'")
    names = _quantisable_linears(comparator.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        comparator.model = torch.ao.quantization.quantize_dynamic(comparator.model, names, dtype=torch.qint8,
                                                                  inplace=False)
    for module in comparator.model.modules():
        if hasattr(module, "get_weight_dtype"):  # open_clip reads mlp.c_fc.weight.dtype, now a packed int8 weight
            object.__setattr__(module, "get_weight_dtype", lambda: torch.float32)
    comparator.eval()
    return comparator


# modules that read their child Linears' .weight / .bias directly instead of calling them (open_clip's
# ModifiedResNet attention pool, torch's MultiheadAttention): a quantised child would break them, so
# their Linears stay fp32
_READS_CHILD_WEIGHTS = ("AttentionPool2d",)


def _quantisable_linears(model) -> set[str]:
    import torch

    skip = [name for name, m in model.named_modules()
            if type(m).__name__ in _READS_CHILD_WEIGHTS or isinstance(m, torch.nn.MultiheadAttention)]
    return {name for name, m in model.named_modules()
            if type(m) is torch.nn.Linear and not any(name.startswith(p + ".") for p in skip)}
