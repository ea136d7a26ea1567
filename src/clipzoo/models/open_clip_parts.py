"""What clipzoo's models take from open_clip: model configs (and pretrained weights) for open_clip towers, the
tokenizer a model config names, and the training / evaluation image transforms of a preprocessing config."""
from __future__ import annotations

import copy
from typing import Any

from ..constants import DEFAULT_CONTEXT_LENGTH
from .spec import ConfigError

__all__ = ["open_clip_config", "open_clip_tokenizer", "image_transforms"]


def open_clip_config(spec: dict[str, Any]) -> tuple[dict[str, Any], "dict | None"]:
    """(model config, pretrained state dict or None) of an open_clip tower spec (``config`` or ``name``, and an
    optional ``pretrained`` tag)."""
    import open_clip

    if spec.get("config"):
        cfg = copy.deepcopy(spec["config"])
    else:
        cfg = open_clip.get_model_config(spec["name"])
        if cfg is None:
            raise ConfigError(f"towers: {spec['name']!r} is not an open_clip model config name")
    weights = None
    tag = spec.get("pretrained")
    if tag:
        full = open_clip.create_model(spec["name"], pretrained=tag if isinstance(tag, str) else None)
        weights = full.state_dict()
    return cfg, weights


def open_clip_tokenizer(model_cfg: dict[str, Any]):
    """The tokenizer of an open_clip model config: its HF tokenizer, else open_clip's ``SimpleTokenizer``."""
    import open_clip

    text = model_cfg.get("text_cfg", {})
    context = text.get("context_length", DEFAULT_CONTEXT_LENGTH)
    if "hf_tokenizer_name" in text or "hf_model_name" in text:
        return open_clip.HFTokenizer(text.get("hf_tokenizer_name") or text["hf_model_name"], context_length=context)
    return open_clip.SimpleTokenizer(context_length=context)


def image_transforms(preprocess_cfg: dict[str, Any]):
    """(training transform, evaluation transform) of a preprocessing config (``size``, ``mean``, ``std``,
    ``interpolation``, ``resize_mode``, ``aug_cfg``), as open_clip builds them."""
    import open_clip

    train = open_clip.image_transform(preprocess_cfg["size"], is_train=True, mean=preprocess_cfg.get("mean"),
                                      std=preprocess_cfg.get("std"), aug_cfg=preprocess_cfg.get("aug_cfg") or {})
    return train, eval_transform(preprocess_cfg)


def eval_transform(preprocess_cfg: dict[str, Any]):
    """The evaluation transform of an open_clip preprocessing config (``size``, ``mean``, ``std``,
    ``interpolation``, ``resize_mode``, ``fill_color``; open_clip's defaults for those left out): the one reading
    of such a config, for the open_clip backend, training, and the JAX and MindSpore models converted from one."""
    import open_clip

    return open_clip.image_transform(preprocess_cfg["size"], is_train=False, mean=preprocess_cfg.get("mean"),
                                     std=preprocess_cfg.get("std"), interpolation=preprocess_cfg.get("interpolation"),
                                     resize_mode=preprocess_cfg.get("resize_mode"),
                                     fill_color=preprocess_cfg.get("fill_color", 0))
