"""open_clip / OpenAI CLIP ⇄ transformers ``CLIPModel`` (:mod:`~clipzoo.convert.hf_clip`), and open_clip SigLIP
⇄ ``SiglipModel`` (:mod:`~clipzoo.convert.hf_siglip`): ``clipzoo convert … --to hf`` and the open_clip form of
a loaded HF model. The public conversion functions are importable from here.

Every tensor is moved, never recomputed, so open_clip → HF → open_clip gives back bit-identical tensors;
what HF's classes cannot express is refused with :class:`~clipzoo.errors.UnsupportedError` naming the part.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..constants import OPENAI_MEAN, OPENAI_STD, OPENAI_VOCAB_SIZE, SIGLIP_MEAN, SIGLIP_STD
from ..errors import UnsupportedError
from ..pixels import processor_preprocess, size_fields, size_pair
from .carried import is_openai_tokenizer
from .form import OpenClipForm
from .hf_clip import hf_clip_to_open_clip, infer_open_clip_config, open_clip_to_hf_clip, save_hf_clip
from .hf_siglip import hf_siglip_to_open_clip, is_siglip_config, open_clip_to_hf_siglip, save_hf_siglip

__all__ = [
    "OPENAI_MEAN", "OPENAI_STD", "infer_open_clip_config", "open_clip_to_hf_clip", "hf_clip_to_open_clip",
    "save_hf_clip", "open_clip_to_hf_siglip", "hf_siglip_to_open_clip", "save_hf_siglip", "is_siglip_config",
    "write_hf", "open_clip_form_of_hf",
]


def write_hf(form: OpenClipForm, dst: "str | os.PathLike", tokenizer=None) -> Path:
    """``clipzoo convert … --to hf``: an :class:`~clipzoo.convert.form.OpenClipForm` as a save_pretrained folder
    (``tokenizer``: the model's HF tokenizer; default the form's own, else OpenAI's BPE for a CLIP). What HF cannot
    hold is refused before anything is written."""
    pre = form.preprocess_cfg or {}
    size = pre.get("size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    tokenizer = tokenizer if tokenizer is not None else form.tokenizer
    source = form.source or "the model"
    if is_siglip_config(form.model_cfg):
        config, sd = open_clip_to_hf_siglip(form.state_dict, form.model_cfg, source=source)
        if tokenizer is None:
            tokenizer = _siglip_tokenizer(form)
        if tokenizer is None:
            raise UnsupportedError(f"{source}: an HF SigLIP folder needs the model's own tokenizer (SigLIP's "
                                   "sentencepiece vocabulary cannot be rebuilt offline), and the model names none "
                                   "(text_cfg.hf_tokenizer_name); convert it to safetensors or onnx instead")
        if pre.get("resize_mode", "squash") != "squash":
            raise UnsupportedError(f"{source}: its resize_mode {pre['resize_mode']!r} has no HF SigLIP equivalent "
                                   "(SiglipImageProcessor only squashes to size); convert it to safetensors or onnx "
                                   "instead")
        return save_hf_siglip(dst, config, sd, tokenizer, size, pre.get("mean", SIGLIP_MEAN),
                              pre.get("std", SIGLIP_STD), interpolation=pre.get("interpolation", "bicubic"),
                              resize_mode=pre.get("resize_mode", "squash"))
    config, sd = open_clip_to_hf_clip(form.state_dict, form.model_cfg or None, source=source)
    if tokenizer is None and config.text_config.vocab_size != OPENAI_VOCAB_SIZE:
        raise UnsupportedError(f"{source}: its text tower has {config.text_config.vocab_size} token ids, not "
                               f"OpenAI's {OPENAI_VOCAB_SIZE}, and its own tokenizer is not known: it cannot be "
                               "written as an HF folder; convert it to safetensors or onnx instead")
    return save_hf_clip(dst, config, sd, size, pre.get("mean", OPENAI_MEAN), pre.get("std", OPENAI_STD),
                        tokenizer=tokenizer, interpolation=pre.get("interpolation", "bicubic"),
                        resize_mode=pre.get("resize_mode", "shortest"))


def _siglip_tokenizer(form: OpenClipForm):
    """The HF tokenizer the SigLIP config names (``text_cfg.hf_tokenizer_name``), or None."""
    name = form.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
    if not name:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - offline, missing repo
        raise UnsupportedError(f"{form.source}: its tokenizer {name!r} cannot be loaded ({exc}); it is "
                               "needed for the HF folder: download it once, or convert to safetensors") from None


def open_clip_form_of_hf(comparator) -> OpenClipForm:
    """The open_clip form (weights, model config, preprocessing, and its tokenizer unless it is OpenAI's) of a
    loaded HF CLIPModel / SiglipModel."""
    model, alias = comparator.model, comparator.card.alias
    kind = type(model).__name__
    if kind == "CLIPModel":
        sd, cfg = hf_clip_to_open_clip(model, source=alias)
    elif kind == "SiglipModel":
        sd, cfg = hf_siglip_to_open_clip(model, source=alias)
    else:
        raise UnsupportedError(f"{alias} is an HF {kind}, which has no open_clip form (only CLIPModel and SiglipModel "
                               "do); convert it to onnx instead")
    ip = getattr(comparator, "image_processor", None)
    pre: dict[str, Any] = {}
    if ip is not None:
        _check_crop(ip, alias)
        pre = processor_preprocess(ip)
        if pre.get("size") is not None:
            pre["size"] = pre["size"][0] if pre["size"][0] == pre["size"][1] else list(pre["size"])
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    tokenizer = getattr(comparator, "hf_tokenizer", None)
    if tokenizer is not None and is_openai_tokenizer(tokenizer):
        tokenizer = None  # open_clip's own BPE tokenizes as it does (and cleans text as OpenAI's does)
    return OpenClipForm(sd, cfg, pre, alias, tokenizer)


def _check_crop(processor, source: str) -> None:
    """An HF processor that resizes to one size and crops another (shortest edge 256, crop 224) is refused:
    open_clip's preprocessing resizes to the crop size itself and cannot express it."""
    if not getattr(processor, "do_center_crop", False):
        return
    crop = size_pair(getattr(processor, "crop_size", None))
    fields = size_fields(getattr(processor, "size", None)) or {}
    resize = size_pair(fields) if fields else None
    if crop is None or resize is None or resize == crop:
        return
    how = (f"resizes the shortest edge to {resize[0]}" if "shortest_edge" in fields
           else f"resizes to {resize[0]} × {resize[1]}")
    raise UnsupportedError(f"{source}: its image processor {how}, then crops {crop[0]} × {crop[1]}, which open_clip's "
                           "preprocessing cannot express (it resizes to the crop size); convert it to onnx instead, "
                           "which keeps the HF processor")
