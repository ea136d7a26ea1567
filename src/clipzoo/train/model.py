"""The model being trained: built from an open_clip config, a registry spec or compositional ``towers``
(:mod:`clipzoo.models.composite`), optionally with peft adapters (train/adapters.py), saved as a folder that
``clipzoo.load`` (and, for open_clip models, open_clip's ``local-dir:``) loads back; adapters are merged into the
saved weights.

A trained folder is open_clip's hub layout — ``open_clip_config.json`` (model + preprocessing config),
``open_clip_model.safetensors`` — plus ``clipzoo_train.json`` (the training config and final step); a composite
model's folder is :func:`~clipzoo.models.composite.save_composite`'s, plus ``clipzoo_train.json``.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..api import load
from ..backends.open_clip import build, config_errors
from ..backends.open_clip_plan import Plan
from ..constants import OPENAI_MEAN, OPENAI_STD
from ..errors import CheckpointError, ClipzooError, UnsupportedError
from ..models.composite import build_composite, save_composite
from ..models.open_clip_parts import image_transforms, open_clip_tokenizer
from .adapters import apply_adapters, merged_copy
from .config import ConfigError, TrainConfig
from .storage import refused_write

__all__ = ["TrainModel", "build_model", "save_trained", "check_model_folder", "checkpoint_config", "open_clip_config",
           "TRAINED_MARKER"]

TRAINED_MARKER = "clipzoo_train.json"  # in every model folder save_trained writes


@dataclass
class TrainModel:
    module: torch.nn.Module  # an open_clip CLIP / CustomTextCLIP, or a models.composite.CompositeCLIP
    model_cfg: dict[str, Any]  # the open_clip model config, or the resolved towers spec
    preprocess_cfg: dict[str, Any]
    tokenizer: Callable  # texts -> LongTensor[N, context]
    train_transform: Callable
    eval_transform: Callable
    kind: str = "open_clip"  # "open_clip" | "composite" (models/composite.py)
    adapters: "dict[str, list[str]] | None" = None  # adapter parameter names per tower (train/adapters.py)


def build_model(cfg: TrainConfig) -> TrainModel:
    """The model a config names: ``towers`` (a compositional model), ``model_config`` (an open_clip config dict),
    or ``model`` — an open_clip config name (random init unless ``pretrained``) or any registry spec / checkpoint
    (its weights)."""
    torch.manual_seed(cfg.seed)
    if cfg.towers is not None:
        module, tokenizer, preprocess, spec = build_composite(cfg.towers, logit_scale_init=cfg.logit_scale_init)
        train_tf, eval_tf = image_transforms(preprocess)
        model = TrainModel(module, spec, preprocess, tokenizer, train_tf, eval_tf, kind="composite")
        return _with_adapters(model, cfg)
    module, model_cfg, preprocess = _open_clip_model(cfg)
    preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess.items()}
    if isinstance(preprocess.get("size"), int):
        preprocess["size"] = [preprocess["size"]] * 2
    train_tf, eval_tf = image_transforms(preprocess)
    model = TrainModel(module, model_cfg, preprocess, open_clip_tokenizer(model_cfg), train_tf, eval_tf)
    return _with_adapters(model, cfg)


def _open_clip_model(cfg: TrainConfig) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """(module, open_clip model config, preprocessing config) of ``model_config`` or ``model``."""
    import open_clip

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
        comparator = load(cfg.model)
        if not hasattr(comparator, "model_config") or not comparator.model_config:
            raise UnsupportedError(f"{cfg.model}: only open_clip-backend models can be trained so far "
                                   f"(its backend is {comparator.card.backend})")
        module = comparator.model.float().train()
        model_cfg, preprocess = copy.deepcopy(comparator.model_config), dict(comparator.preprocess_config)
    else:
        raise ConfigError("no model: set model (an open_clip config name or a registry spec) or model_config")
    return module, model_cfg, preprocess


def _with_adapters(model: TrainModel, cfg: TrainConfig) -> TrainModel:
    if cfg.adapters:
        model.adapters = apply_adapters(model.module, cfg.adapters)
    return model


def _build(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """The open_clip model of ``model_config``; one it cannot build (an unknown key, 0 attention heads, a negative
    width: open_clip's and torch's TypeError / ValueError / RuntimeError) is one ConfigError, never a traceback."""
    try:
        with config_errors("model_config", "open_clip model"):
            return build(Plan(copy.deepcopy(model_cfg), {}, None, source="train config")).float().train()
    except CheckpointError as err:
        raise ConfigError(str(err)) from None


def _init_logit_scale(module: torch.nn.Module, init: float) -> None:
    with torch.no_grad():
        module.logit_scale.fill_(math.log(init))


def check_model_folder(out, output: str) -> None:
    """Before a run: ``OUTPUT/model``, which :func:`save_trained` replaces whole at the run's end, is absent or a
    model clipzoo trained (``TRAINED_MARKER`` in it) — anything else there is a user's, and an error now rather than
    deleted after the training (``out``: the output :class:`~clipzoo.train.storage.Location`)."""
    local = out.local
    if local is not None and local.exists() and not local.is_dir():
        raise ConfigError(f"--output {output} is a file; pass a folder (new, empty, or a previous run's)")
    if local is not None:
        folder = local / "model"
        foreign = folder.is_symlink() or (folder.exists() and not (folder / TRAINED_MARKER).is_file())
    else:
        foreign = out.exists("model") and not out.exists("model", TRAINED_MARKER)
    if foreign:
        raise ConfigError(f"--output {output}: its model/ is not a model clipzoo trained (no {TRAINED_MARKER} in "
                          "it), and the run replaces that folder at its end; pass another --output, or move it away")


def save_trained(model: TrainModel, folder: "str | os.PathLike", state_dict: "dict[str, torch.Tensor] | None" = None,
                 info: "dict[str, Any] | None" = None) -> Path:
    """Write the trained model as a folder ``clipzoo.load`` reads (atomically: temp folder + rename); weights
    holding NaN or an infinity are refused (a run with ``lr: inf`` saved one and reported success)."""
    check_finite_weights(state_dict if state_dict is not None else model.module.state_dict())
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with refused_write(folder, tmp):  # a full disk: one line, and no half-written temporary folder left
        tmp.mkdir(parents=True)
        if model.kind == "composite":
            final = merged_copy(model.module, state_dict).cpu().float()
            save_composite(final, model.model_cfg, model.preprocess_cfg, model.tokenizer, tmp)
        else:
            _save_open_clip(model, state_dict, tmp)
        (tmp / TRAINED_MARKER).write_text(json.dumps(info or {}, indent=2, default=str) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    return folder


def check_finite_weights(weights: "dict[str, torch.Tensor]") -> None:
    """A :class:`~clipzoo.errors.ClipzooError` when a floating weight holds NaN, or an infinity outside a mask
    buffer (the causal ``attn_mask`` holds -inf by design)."""
    bad = [k for k, v in weights.items() if v.is_floating_point() and (
        bool(torch.isnan(v).any()) or ("mask" not in k and bool(torch.isinf(v).any())))]
    if bad:
        raise ClipzooError(f"the trained weights hold NaN or infinite values ({len(bad)} of {len(weights)} tensors, "
                           f"first {bad[0]!r}): the run diverged; lower --lr or set --grad-clip. The model was not "
                           "saved")


def open_clip_config(model: TrainModel) -> dict[str, Any]:
    """open_clip's ``open_clip_config.json`` of an open_clip-built model: its model and preprocessing configs."""
    return {"model_cfg": model.model_cfg,
            "preprocess_cfg": {k: v for k, v in model.preprocess_cfg.items() if k != "aug_cfg"}}


def checkpoint_config(model: TrainModel) -> "str | None":
    """The config a training checkpoint carries for ``clipzoo.load`` (as a ``.pt``'s ``clipzoo_open_clip_config``
    text): an open_clip model's, its weights' keys being the model's own; None for a composite model or one with
    adapters, whose checkpoint keys only the run's code rebuilds."""
    return None if model.kind == "composite" or model.adapters else json.dumps(open_clip_config(model))


def _save_open_clip(model: TrainModel, state_dict: "dict[str, torch.Tensor] | None", folder: Path) -> None:
    """open_clip's hub layout (adapters merged): ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file

    if model.adapters:
        sd = merged_copy(model.module, state_dict).cpu().float().state_dict()
    else:
        sd = state_dict if state_dict is not None else model.module.state_dict()
    sd = {k: v.detach().float().cpu().contiguous() for k, v in sd.items() if k != "attn_mask"}
    config = open_clip_config(model)
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(sd, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})
