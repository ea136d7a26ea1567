"""``export_onnx(model_or_spec, out_dir)``: a loaded Comparator, or any spec :func:`clipzoo.load` takes, exported
to an ONNX folder that :func:`clipzoo.load` reads back with onnxruntime (backend ``"onnx"``).

The exporter and the folder's layout are :mod:`clipzoo.runtime.onnx_export`'s (``runtime="onnx"`` uses it
too); this module adds loading a spec first.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..api import load
from ..backends.onnx_format import IMAGE_FILE, META_FILE, TEXT_FILE
from ..comparator import Comparator
from ..errors import ClipzooError
from ..runtime import onnx_export
from ..runtime.onnx_export import EXPORTERS, check_export_options

__all__ = ["export_onnx", "EXPORTERS", "META_FILE", "IMAGE_FILE", "TEXT_FILE"]


def export_onnx(model_or_spec: Any, out_dir: "str | os.PathLike", opset: int | None = None,
                token_dtype: str = "int64", batch_dynamic: bool = True, *, exporter: str = "auto",
                check: bool = True, vit: str = "plain", **load_kwargs: Any) -> Path:
    """Export a Comparator (or a spec for :func:`clipzoo.load`, with ``load_kwargs``) to ``out_dir``: a spec
    is loaded on CPU in fp32, then :func:`clipzoo.runtime.onnx_export.export_onnx` (which documents the
    other options; ``vit="standard"``: an open_clip ViT image tower block by block in standard ops, the layout
    OpenVINO runs fastest) writes the graphs. Returns ``out_dir``."""
    check_export_options(token_dtype, exporter, vit)
    if isinstance(model_or_spec, Comparator):
        if load_kwargs:
            raise ClipzooError(f"load options {', '.join(sorted(load_kwargs))} apply only when exporting a spec")
        comparator = model_or_spec
    else:
        comparator = load(model_or_spec, **load_kwargs)
    return onnx_export.export_onnx(comparator, out_dir, opset, token_dtype, batch_dynamic, exporter=exporter,
                                   check=check, vit=vit)
