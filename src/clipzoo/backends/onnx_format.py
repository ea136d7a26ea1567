"""The clipzoo ONNX folder format, shared by the exporter (:mod:`clipzoo.runtime.onnx_export`) and the
reader (:mod:`clipzoo.backends.onnx`): file and graph I/O names, and reading ``clipzoo_onnx.json``.

Torch-free (only ``json``), so that modules naming the format stay cheap to import.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import BackendMissingError, CheckpointError

FORMAT, FORMAT_VERSION = "clipzoo-onnx", 1
META_FILE, IMAGE_FILE, TEXT_FILE = "clipzoo_onnx.json", "image.onnx", "text.onnx"
IMAGE_INPUT, IMAGE_OUTPUT = "pixels", "image_features"
TEXT_INPUT, TEXT_OUTPUT = "tokens", "text_features"
TOKENIZER_DIR, IMAGE_PROCESSOR_DIR = "tokenizer", "image_processor"


def require_onnxruntime():
    """The ``onnxruntime`` module, or a one-line :class:`BackendMissingError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendMissingError("the onnx backend needs onnxruntime, which is not installed; "
                                  "pip install onnxruntime (or pip install 'clipzoo[onnx]')") from None
    return onnxruntime


def read_meta(folder: Path) -> dict:
    """The folder's ``clipzoo_onnx.json``, with every graph file it names present."""
    if not folder.is_dir():
        raise CheckpointError(f"ONNX model folder {str(folder)!r} does not exist or is not a folder")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise CheckpointError(f"{folder} is missing {META_FILE} (found {found}); it is not a complete clipzoo "
                              "ONNX export — export again with clipzoo.convert.onnx.export_onnx")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {meta_path} as JSON ({exc})") from None
    if meta.get("format") != FORMAT or "graphs" not in meta:
        raise CheckpointError(f"{meta_path} is not a clipzoo ONNX description (format {meta.get('format')!r})")
    missing = [g["file"] for g in meta["graphs"].values() if not (folder / g["file"]).is_file()]
    if missing:
        raise CheckpointError(f"ONNX model folder {folder} is missing {', '.join(missing)} (named in {META_FILE}); "
                              "copy the whole folder or export again")
    return meta
