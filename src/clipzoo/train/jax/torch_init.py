"""``init: torch``: the JAX engine starts from the weights clipzoo's torch trainer would start from.

The torch trainer seeds torch with the run's seed and builds the open_clip model (open_clip's initialisers:
normal / Kaiming draws in module order); here that same model is built the same way — the same function,
:func:`clipzoo.train.model.build_model`, on the open_clip config of the JAX config — and its state dict is moved
into open_clip_jax's tree by the conversion's own table (:mod:`clipzoo.models.jax_open_clip_map`). So the two
engines start from identical weights for the same seed, and a JAX run can be compared with a torch run step
for step. ``init: flax`` (the default) keeps open_clip_jax's Flax initialisers, whose draws differ.
"""
from __future__ import annotations

import math

import numpy as np

from ...models.jax_open_clip_map import open_clip_config, open_clip_to_jax
from ..config import from_mapping
from ..model import build_model

__all__ = ["torch_init_variables"]


def torch_init_variables(cfg, temp: float) -> dict:
    """``{'params': …}`` (+ ``'batch_stats'`` for a ResNet) of the torch trainer's initial model for ``cfg``
    (its seed, model, image size and context length), numpy arrays; the log-temperature set to ``temp``."""
    model_cfg = open_clip_config(cfg.model, cfg.image_size, cfg.context_len)
    torch_cfg = from_mapping({"model_config": model_cfg, "seed": cfg.seed, "logit_scale_init": math.exp(temp)},
                             "init: torch")
    module = build_model(torch_cfg).module
    variables = open_clip_to_jax(module.state_dict(), cfg.model)
    variables["params"]["temp"] = np.asarray(temp, np.float32)
    return variables
