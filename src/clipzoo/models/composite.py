"""Compositional CLIP models (what the ITRA codebase does): an image tower, a text tower and two projection heads,
configured by a ``towers`` table (:mod:`clipzoo.models.spec`).

:class:`CompositeCLIP` has the open_clip CLIP surface the trainer uses — ``encode_image``, ``encode_text``,
``forward`` (a dict when ``output_dict``), ``logit_scale`` / ``logit_bias``, ``lock_image_tower`` /
``lock_text_tower`` (LiT, with open_clip's semantics), ``set_grad_checkpointing`` — so it trains exactly like an
open_clip model. :func:`save_composite` writes a self-describing folder (``clipzoo_composite.json`` +
``model.safetensors`` + the text tower's config and tokenizer files under ``text/``) that
:func:`load_composite` (and so ``clipzoo.load``, through the ``composite`` backend) reads back.
"""
from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import load_into, read_json, read_safetensors
from .heads import DINOHead, build_head
from .image_towers import ImageTower, build_image
from .open_clip_parts import image_transforms, open_clip_config
from .spec import MARKER, WEIGHTS, ConfigError, check_towers
from .text_towers import TextTower, build_text
from .tokenize import TextTokenizer

__all__ = ["CompositeCLIP", "build_composite", "save_composite", "load_composite", "composite_transforms"]


class CompositeCLIP(nn.Module):
    """Image tower + image head, text tower + text head, learnable logit scale (and bias)."""

    def __init__(self, image: ImageTower, text: TextTower, image_head: nn.Module, text_head: nn.Module,
                 embed_dim: int, logit_scale_init: float = 1 / 0.07, logit_bias_init: "float | None" = None):
        super().__init__()
        self.image, self.text = image, text
        self.image_head, self.text_head = image_head, text_head
        self.embed_dim = int(embed_dim)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(logit_scale_init))
        self.logit_bias = nn.Parameter(torch.ones([]) * logit_bias_init) if logit_bias_init is not None else None
        self.output_dict = False
        # set by the trainer for objectives that read prototype scores (dino, protocpc): a DINO head's output
        # then reaches them unnormalised; every other head's output is L2-normalised as always
        self.raw_head_scores = False
        self._frozen_norms: list[nn.Module] = []

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.image_head(self.image(image))
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text_head(self.text(text))
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def has_dino_head(self) -> bool:
        return isinstance(self.image_head, DINOHead) or isinstance(self.text_head, DINOHead)

    def forward(self, image: "torch.Tensor | None" = None, text: "torch.Tensor | None" = None):
        raw = self.raw_head_scores
        img = (self.encode_image(image, normalize=not (raw and isinstance(self.image_head, DINOHead)))
               if image is not None else None)
        txt = (self.encode_text(text, normalize=not (raw and isinstance(self.text_head, DINOHead)))
               if text is not None else None)
        scale = self.logit_scale.exp()
        if self.output_dict:
            out = {"image_features": img, "text_features": txt, "logit_scale": scale}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        return (img, txt, scale) if self.logit_bias is None else (img, txt, scale, self.logit_bias)

    # LiT: the open_clip method names and semantics
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        self.image.lock(unlocked_groups)
        if freeze_bn_stats:  # BatchNorms whose parameters are all frozen keep their running statistics
            self._frozen_norms += [m for m in self.image.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                                   and not any(p.requires_grad for p in m.parameters())]
            self.train(self.training)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        self.text.lock(unlocked_layers, freeze_layer_norm)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.image.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_norms:
            m.eval()
        return self


# ------------------------------------------------------------------ build, save, load
def build_composite(towers: Mapping[str, Any], *, logit_scale_init: float = 1 / 0.07,
                    base_dir: "str | os.PathLike | None" = None):
    """(module, tokenizer, preprocess_cfg, resolved spec) for a ``towers`` config."""
    spec = check_towers(towers)
    base = Path(base_dir) if base_dir is not None else None
    try:
        image, pre = build_image(spec["image"], spec.get("embed_dim"))
        text, tokenizer = build_text(spec["text"], base)
    except ImportError as err:
        raise ConfigError(f"towers: the {err.name or 'required'} package is not installed; "
                          "pip install 'clipzoo[train]'") from None
    except (OSError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ConfigError(f"towers: cannot build a tower ({first})") from None
    embed_dim = int(spec.get("embed_dim") or text.out_dim)
    spec["embed_dim"] = embed_dim
    module = CompositeCLIP(image, text, build_head(spec.get("image_head"), image.out_dim, embed_dim, "image_head"),
                           build_head(spec.get("text_head"), text.out_dim, embed_dim, "text_head"), embed_dim,
                           logit_scale_init, spec.get("logit_bias"))
    pre = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pre.items()}
    pre["mean"] = list(spec["image"].get("mean") or pre["mean"])
    pre["std"] = list(spec["image"].get("std") or pre["std"])
    pre["size"] = [int(pre["size"])] * 2 if isinstance(pre["size"], int) else list(pre["size"])
    pre.setdefault("resize_mode", "shortest")
    return module.float().train(), tokenizer, pre, spec


def _saved_text(module: CompositeCLIP, text: dict[str, Any], tokenizer: TextTokenizer, folder: Path) -> dict:
    """The text tower's spec as saved: an open_clip config inline, else its files under ``folder/text``."""
    if text["source"] == "open_clip":
        text["config"], _ = open_clip_config({**text, "pretrained": False})
        text.pop("name", None)
        text["pretrained"] = False
    elif text["source"] == "hf":
        module.text.hf_model.config.save_pretrained(folder / "text")
        tokenizer.tokenizer.save_pretrained(folder / "text")
        text.update(name="text", pretrained=False)
    else:  # sentence-transformers: its folder (modules, configs, tokenizer) is the recipe of the tower
        module.text.st_model.save(str(folder / "text"))
        text.update(name="text")
    text["context_length"] = tokenizer.context_length
    return text


def save_composite(module: CompositeCLIP, spec: Mapping[str, Any], preprocess: Mapping[str, Any],
                   tokenizer: TextTokenizer, folder: Path) -> None:
    """Write ``module`` (adapters already merged) into ``folder`` as a self-describing composite folder."""
    from safetensors.torch import save_file

    spec = copy.deepcopy(dict(spec))
    image = dict(spec["image"])
    image["pretrained"] = False
    if image["source"] == "open_clip":
        image["config"], _ = open_clip_config({**image, "pretrained": False})
        image.pop("name", None)
    spec.update(image=image, text=_saved_text(module, dict(spec["text"]), tokenizer, folder))
    config = {"format": "clipzoo-composite", "version": 1, "towers": spec,
              "preprocess_cfg": {k: v for k, v in preprocess.items() if k != "aug_cfg"}}
    (folder / MARKER).write_text(json.dumps(config, indent=2) + "\n")
    sd = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(sd, str(folder / WEIGHTS), metadata={"format": "pt"})


def load_composite(folder: "str | os.PathLike"):
    """(module in eval mode, tokenizer, preprocess_cfg, spec) of a folder :func:`save_composite` wrote."""
    folder = Path(folder)
    config = read_json(folder / MARKER)
    if config.get("format") != "clipzoo-composite":
        raise ConfigError(f"{folder / MARKER} is not a clipzoo composite model config")
    module, tokenizer, _, spec = build_composite(config["towers"], base_dir=folder)
    sd, _ = read_safetensors(folder / WEIGHTS)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in module.state_dict()}
    load_into(module, sd, str(folder / WEIGHTS))
    preprocess = dict(config.get("preprocess_cfg") or {})
    return module.eval(), tokenizer, preprocess, spec


def composite_transforms(preprocess: Mapping[str, Any]) -> tuple[Callable, Callable]:
    """(training transform, evaluation transform) of a composite model's preprocessing config."""
    return image_transforms(dict(preprocess))
