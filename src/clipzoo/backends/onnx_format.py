"""The clipzoo ONNX folder format, shared by the exporter (:mod:`clipzoo.runtime.onnx_export`) and the
reader (:mod:`clipzoo.backends.onnx`): file and graph I/O names, and reading ``clipzoo_onnx.json``.

Torch-free (only ``json``), so that modules naming the format stay cheap to import.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BackendMissingError, CheckpointError
from ..files import inside

FORMAT, FORMAT_VERSION = "clipzoo-onnx", 1
META_FILE, IMAGE_FILE, TEXT_FILE = "clipzoo_onnx.json", "image.onnx", "text.onnx"
IMAGE_INPUT, IMAGE_OUTPUT = "pixels", "image_features"
TEXT_INPUT, TEXT_OUTPUT = "tokens", "text_features"
TOKENIZER_DIR, IMAGE_PROCESSOR_DIR = "tokenizer", "image_processor"
CONTRIB_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops: what the ONNX runtimes' fused ViT export holds


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
    check_meta_names(folder, meta, meta_path)
    missing = [g["file"] for g in meta["graphs"].values() if not (folder / g["file"]).is_file()]
    if missing:
        raise CheckpointError(f"ONNX model folder {folder} is missing {', '.join(missing)} (named in {META_FILE}); "
                              "copy the whole folder or export again")
    return meta


TOKENIZER_OPTIONS = frozenset({"clean", "strip_sep_token", "language", "tokenizer_mode", "reduction_mask",
                               "additional_special_tokens"})
"""The tokenizer options an export may carry (what open_clip's tokenizers take from a model config); anything else —
``trust_remote_code`` ran the folder's own Python on load — is refused."""


def check_meta_names(folder: Path, meta: dict, meta_path: Path) -> None:
    """Every file the description names (graphs, the tokenizer's and the image processor's folders) is inside the
    export's folder, and the tokenizer's options are ones an export writes: a downloaded folder can name neither
    files elsewhere nor code to run."""
    real = os.path.realpath(folder)
    names = [g.get("file") if isinstance(g, dict) else None for g in meta["graphs"].values()]
    names += [part.get("dir") for part in (meta.get("tokenizer"), meta.get("preprocess"))
              if isinstance(part, dict) and "dir" in part]
    for name in names:
        target = os.path.realpath(os.path.join(real, name)) if isinstance(name, str) and name else ""
        if not inside(target, real):
            raise CheckpointError(f"{meta_path} names {name!r}, which is not a file inside the export's folder; "
                                  "export the model again")
    options = (meta.get("tokenizer") or {}).get("kwargs") or {}
    unknown = sorted(set(options) - TOKENIZER_OPTIONS) if isinstance(options, dict) else ["(not a table)"]
    if unknown:
        raise CheckpointError(f"{meta_path}: tokenizer options {', '.join(map(repr, unknown))} are refused (an "
                              "export carries only " + ", ".join(sorted(TOKENIZER_OPTIONS)) + "); loading a model "
                              "never runs code from its files")
