"""``clipzoo_onnx.json`` of an export: the card, sizes, logit scale/bias, and how to rebuild the model's
preprocessing and tokenizer without it (configs, plus HF processor / tokenizer files saved beside the graphs).

Torch-free at import; see :mod:`clipzoo.runtime.onnx_export` for the graphs themselves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backends.onnx_format import FORMAT, FORMAT_VERSION, IMAGE_PROCESSOR_DIR, TOKENIZER_DIR
from ..cards import IMAGE, TEXT
from ..constants import VERSION
from ..errors import UnsupportedError
from ..tokenizers import OpenAITokenizer, OpenClipTokenizer

PIL_INTERPOLATION = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def export_meta(comparator, out: Path, graphs: dict, exporter: str, batch_dynamic: bool) -> dict[str, Any]:
    """The JSON description of the graphs in ``out`` (writes the tokenizer / image processor files too)."""
    scale, bias = comparator.logit_params()
    card = comparator.card
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "card": {"alias": card.alias, "architecture": card.architecture, "publisher": card.publisher,
                 "id": card.id, "backend": card.backend, "source": card.source.describe()},
        "modalities": [m for m in comparator.modalities if m in graphs],
        "embed_dim": int(comparator.embed_dim),
        "image_size": jsonable(comparator.image_size) if IMAGE in graphs else None,
        "context_length": int(graphs[TEXT]["input_shape"][1]) if TEXT in graphs else comparator.context_length,
        "logit_scale": float(scale.detach().float()),
        "logit_bias": None if bias is None else float(bias.detach().float()),
        "probability": comparator.probability,
        "preprocess": preprocess_config(comparator, out) if IMAGE in graphs else None,
        "tokenizer": tokenizer_config(comparator, out) if TEXT in graphs else None,
        "graphs": graphs,
        "batch_dynamic": bool(batch_dynamic),
        "exporter": exporter, "opset": opset_of(out / next(iter(graphs.values()))["file"]),
        "versions": versions(),
    }


def jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def opset_of(path: Path) -> int | None:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    except Exception:  # noqa: BLE001 - informational only
        return None


def versions() -> dict:
    import torch

    out = {"clipzoo": VERSION, "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass
    return out


# --------------------------------------------------------------------------------------------- preprocessing
def preprocess_config(comparator, out: Path) -> dict:
    """How to rebuild the PIL -> tensor transform: open_clip's ``image_transform`` arguments, plus the HF
    image processor saved alongside for HF models (used when transformers is installed, for exactness)."""
    tower = getattr(comparator, "image_tower", None) or comparator
    pre = getattr(tower, "preprocess_config", None)
    if pre is not None:  # open_clip
        return {"kind": "open_clip", **torchvision_fields(pre, comparator.image_size)}
    processor = getattr(tower, "image_processor", None) or getattr(comparator, "image_processor", None)
    if processor is None:
        raise UnsupportedError(f"cannot export the preprocessing of {comparator.card.alias}: it has neither an "
                               "open_clip preprocess config nor an HF image processor")
    processor.save_pretrained(str(out / IMAGE_PROCESSOR_DIR))
    naflex = getattr(tower, "_naflex", None)
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    resample = getattr(processor, "resample", 3)
    fields = {"size": comparator.image_size, "mean": mean, "std": std,
              "interpolation": PIL_INTERPOLATION.get(int(getattr(resample, "value", resample) or 3), "bicubic"),
              "resize_mode": "shortest" if getattr(processor, "do_center_crop", False) else "squash",
              "fill_color": 0}
    return {"kind": "hf", "dir": IMAGE_PROCESSOR_DIR, "naflex": list(naflex) if naflex else None,
            **torchvision_fields(fields, comparator.image_size)}


def torchvision_fields(pre: dict, image_size) -> dict:
    def floats(v):
        return None if v is None else [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3)]

    return {"size": jsonable(pre.get("size") or image_size), "mean": floats(pre.get("mean")),
            "std": floats(pre.get("std")), "interpolation": pre.get("interpolation") or "bicubic",
            "resize_mode": pre.get("resize_mode") or "shortest", "fill_color": pre.get("fill_color", 0)}


# --------------------------------------------------------------------------------------------- tokenizers
def tokenizer_config(comparator, out: Path) -> dict:
    """How the runtime rebuilds the tokenizer: OpenAI's BPE and open_clip's by name and arguments, HF ones
    from files saved into ``tokenizer/``."""
    ctx = int(comparator.context_length)
    hf_tokenizer = getattr(comparator, "hf_tokenizer", None)
    if hf_tokenizer is not None:  # transformers / sentence-transformers
        hf_tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        return {"kind": "hf", "dir": TOKENIZER_DIR, "context_length": ctx,
                "lower_case": bool(getattr(comparator, "lower_case", False))}
    tokenizer = getattr(comparator, "tokenizer", None)
    if isinstance(tokenizer, OpenAITokenizer):
        return {"kind": "openai", "context_length": ctx}
    if isinstance(tokenizer, OpenClipTokenizer):  # open_clip's SimpleTokenizer() without open_clip (embedded model)
        return {"kind": "open_clip_simple", "context_length": ctx, "kwargs": {}}
    text_cfg = (getattr(comparator, "model_config", None) or {}).get("text_cfg", {})
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, SimpleTokenizer):
        return {"kind": "open_clip_simple", "context_length": ctx, "kwargs": kwargs}
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        if text_cfg.get("tokenizer_mode"):
            kwargs["tokenizer_mode"] = text_cfg["tokenizer_mode"]
        kwargs.setdefault("strip_sep_token", bool(getattr(tokenizer, "strip_sep_token", False)))
        return {"kind": "open_clip_hf", "dir": TOKENIZER_DIR, "context_length": ctx, "kwargs": kwargs}
    raise UnsupportedError(f"cannot export the tokenizer of {comparator.card.alias} "
                           f"({type(tokenizer).__name__}); export with a model whose tokenizer is OpenAI's, "
                           "open_clip's or an HF one")
