"""The model being trained: built from an open_clip config, a registry spec or compositional ``towers``
(train/towers.py), optionally with peft adapters (train/adapters.py), saved as a folder that ``clipzoo.load``
(and, for open_clip models, open_clip's ``local-dir:``) loads back; adapters are merged into the saved weights.

A trained folder is open_clip's hub layout — ``open_clip_config.json`` (model + preprocessing config),
``open_clip_model.safetensors`` — plus ``clipzoo_train.json`` (the training config and final step).
"""
from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UnsupportedError
from .config import ConfigError, TrainConfig

__all__ = ["TrainModel", "build_model", "save_trained", "param_groups"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TrainModel:
    module: torch.nn.Module  # an open_clip CLIP / CustomTextCLIP, or a towers.CompositeCLIP
    model_cfg: dict[str, Any]  # the open_clip model config, or the resolved towers spec
    preprocess_cfg: dict[str, Any]
    tokenizer: Callable  # texts -> LongTensor[N, context]
    train_transform: Callable
    eval_transform: Callable
    kind: str = "open_clip"  # "open_clip" | "composite" (train/towers.py)
    adapters: "dict[str, list[str]] | None" = None  # adapter parameter names per tower (train/adapters.py)


def _tokenizer(model_cfg: dict[str, Any]):
    import open_clip

    text = model_cfg.get("text_cfg", {})
    if "hf_tokenizer_name" in text or "hf_model_name" in text:
        return open_clip.HFTokenizer(text.get("hf_tokenizer_name") or text["hf_model_name"],
                                     context_length=text.get("context_length", 77))
    return open_clip.SimpleTokenizer(context_length=text.get("context_length", 77))


def _transforms(preprocess_cfg: dict[str, Any]):
    import open_clip

    size = preprocess_cfg["size"]
    kw = dict(mean=preprocess_cfg.get("mean"), std=preprocess_cfg.get("std"),
              interpolation=preprocess_cfg.get("interpolation"), resize_mode=preprocess_cfg.get("resize_mode"))
    train = open_clip.image_transform(size, is_train=True, mean=kw["mean"], std=kw["std"],
                                      aug_cfg=preprocess_cfg.get("aug_cfg") or {})
    return train, open_clip.image_transform(size, is_train=False, **kw)


def build_model(cfg: TrainConfig) -> TrainModel:
    """The model a config names: ``model_config`` (an open_clip config dict), or ``model`` — an open_clip
    config name (random init unless ``pretrained``) or any registry spec / checkpoint (its weights)."""
    import open_clip

    torch.manual_seed(cfg.seed)
    if cfg.towers is not None:
        from .towers import build_composite

        module, tokenizer, preprocess, spec = build_composite(cfg.towers, logit_scale_init=cfg.logit_scale_init)
        train_tf, eval_tf = _transforms(preprocess)
        model = TrainModel(module, spec, preprocess, tokenizer, train_tf, eval_tf, kind="composite")
        return _with_adapters(model, cfg)
    if cfg.model_config is not None:
        model_cfg = copy.deepcopy(cfg.model_config)
        module = _build(model_cfg)
        preprocess = {"size": model_cfg.get("vision_cfg", {}).get("image_size", 224), "mean": OPENAI_MEAN,
                      "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
        _init_logit_scale(module, cfg.logit_scale_init)
    elif cfg.model and not cfg.pretrained and open_clip.get_model_config(cfg.model) is not None:
        model_cfg = open_clip.get_model_config(cfg.model)
        module = _build(model_cfg)
        preprocess = dict(open_clip.get_model_preprocess_cfg(module))
        _init_logit_scale(module, cfg.logit_scale_init)
    elif cfg.model:
        import clipzoo

        comparator = clipzoo.load(cfg.model)
        if not hasattr(comparator, "model_config") or not comparator.model_config:
            raise UnsupportedError(f"{cfg.model}: only open_clip-backend models can be trained so far "
                                   f"(its backend is {comparator.card.backend})")
        module = comparator.model.float().train()
        model_cfg, preprocess = copy.deepcopy(comparator.model_config), dict(comparator.preprocess_config)
    else:
        raise ConfigError("no model: set model (an open_clip config name or a registry spec) or model_config")
    preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess.items()}
    if isinstance(preprocess.get("size"), int):
        preprocess["size"] = [preprocess["size"]] * 2
    train_tf, eval_tf = _transforms(preprocess)
    return _with_adapters(TrainModel(module, model_cfg, preprocess, _tokenizer(model_cfg), train_tf, eval_tf), cfg)


def _with_adapters(model: TrainModel, cfg: TrainConfig) -> TrainModel:
    if cfg.adapters:
        from .adapters import apply_adapters

        model.adapters = apply_adapters(model.module, cfg.adapters)
    return model


def _build(model_cfg: dict[str, Any]) -> torch.nn.Module:
    from ..backends.open_clip import Plan, build

    try:
        return build(Plan(copy.deepcopy(model_cfg), {}, None, source="train config")).float().train()
    except TypeError as err:
        raise ConfigError(f"model_config is not an open_clip config: {err}") from None


def _init_logit_scale(module: torch.nn.Module, init: float) -> None:
    with torch.no_grad():
        module.logit_scale.fill_(math.log(init))


def param_groups(module: torch.nn.Module, weight_decay: float, lr: float, layer_decay: "float | None" = None
                 ) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms, biases, embeddings and the logit scale / bias; with
    ``layer_decay``, deeper blocks keep the full lr and earlier ones get ``lr * layer_decay**depth``."""
    def no_decay(name: str, p: torch.nn.Parameter) -> bool:
        return (p.ndim < 2 or "bn" in name or "ln" in name or "norm" in name or name.endswith(".bias")
                or "embedding" in name or "logit_scale" in name or "logit_bias" in name)

    depth = _layer_ids(module) if layer_decay else {}
    max_depth = max(depth.values(), default=0)
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        d = depth.get(name, max_depth)
        key = (no_decay(name, p), d)
        scale = layer_decay ** (max_depth - d) if layer_decay else 1.0
        g = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if key[0] else weight_decay,
                                    "lr": lr * scale, "lr_scale": scale, "names": []})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def _layer_ids(module: torch.nn.Module) -> dict[str, int]:
    """Depth of each parameter within its tower: embeddings 0, block i -> i + 1, heads last."""
    import re

    out = {}
    names = [n for n, _ in module.named_parameters()]
    blocks = [int(m.group(1)) for n in names for m in [re.search(r"resblocks\.(\d+)\.|layer(\d)", n)] if m and m.group(1)]
    n_blocks = max(blocks, default=0) + 1
    for n in names:
        m = re.search(r"resblocks\.(\d+)\.", n) or re.search(r"\.layer(\d)\.", n)
        if m:
            out[n] = int(m.group(1)) + 1
        elif any(s in n for s in ("embedding", "conv1", "class_embedding", "ln_pre", "stem", "conv2", "conv3",
                                  "bn1", "bn2", "bn3")) and "layer" not in n:
            out[n] = 0
        else:
            out[n] = n_blocks + 1
    return out


def save_trained(model: TrainModel, folder: "str | os.PathLike", state_dict: "dict[str, torch.Tensor] | None" = None,
                 info: "dict[str, Any] | None" = None) -> Path:
    """Write the trained model as a folder ``clipzoo.load`` reads (atomically: temp folder + rename)."""
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if model.kind == "composite" or model.adapters:
        from .adapters import merged_copy

        final = merged_copy(model.module, state_dict).cpu().float()
        sd = final.state_dict()
    else:
        final = None
        sd = state_dict if state_dict is not None else model.module.state_dict()
    if model.kind == "composite":
        from .towers import save_composite

        save_composite(final, model.model_cfg, model.preprocess_cfg, model.tokenizer, tmp)
        (tmp / "clipzoo_train.json").write_text(json.dumps(info or {}, indent=2, default=str) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder
    sd = {k: v.detach().float().cpu().contiguous() for k, v in sd.items() if k != "attn_mask"}
    config = {"model_cfg": model.model_cfg, "preprocess_cfg": {k: v for k, v in model.preprocess_cfg.items()
                                                               if k != "aug_cfg"}}
    (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(sd, str(tmp / "open_clip_model.safetensors"), metadata={"format": "pt"})
    (tmp / "clipzoo_train.json").write_text(json.dumps(info or {}, indent=2, default=str) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
