"""Drop-in for MindSpore-CLIP's ``clip`` (mindspore-lab/mindcv ``examples/clip``) on clipzoo's MindSpore models.

    from clipzoo.compat.mindspore import clip          # was: import clip
    model, preprocess = clip.load("./ViT-B-32.ckpt", device="CPU")      # or "ViT-B/32" (downloaded once)
    image = Tensor(preprocess(Image.open("CLIP.png")))
    text = clip.tokenize(["a diagram", "a dog", "a cat"])
    logits_per_image, logits_per_text = model(image, text)

- :func:`available_models` — OpenAI's nine names, as MindSpore-CLIP lists them.
- :func:`load` ``(name, device="CPU", mode=1, download_root=None)`` — ``name`` is one of those names (its
  MindSpore ``.ckpt`` from MindSpore-CLIP's download site, SHA-256 checked) or a local ``.ckpt`` in MindSpore-CLIP's
  names (its ``ckpt_transform.py`` output, or ``clipzoo convert … --to mindspore``); the config is the one a
  ``.ckpt`` clipzoo wrote stores, else read from the shapes as MindSpore-CLIP's ``build_model`` reads it. ``mode``
  is MindSpore's context mode, set as MindSpore-CLIP sets it: 0 GRAPH_MODE (``model(image, text)`` runs as a
  compiled graph), 1 PYNATIVE_MODE. Returns ``(model, preprocess)``: an ``nn.Cell`` with ``encode_image``,
  ``encode_text`` (unnormalised features), ``dtype`` and ``model(image, text)`` -> ``(logits_per_image,
  logits_per_text)``; ``preprocess`` is MindSpore-CLIP's ``mindspore.dataset`` pipeline. An unknown name raises
  MindSpore-CLIP's ValueError (``"{name} not found; available models = [...]"``).
- :func:`tokenize` ``(texts, context_length=77, truncate=False)`` — an int32 MindSpore Tensor, openai's ids; a
  too-long text raises openai's RuntimeError (``"Input {text} is too long for context length {n}"``).

Differences: the model runs on MindSpore's CPU wheel in float32 (another ``device`` warns and runs there);
MindSpore-CLIP's Graph-mode ``jit_level`` "O2" (Ascend's) is not set.
"""
from __future__ import annotations

import os

import mindspore as ms
import numpy as np

from ...errors import UnknownModelError
from ...models.mindspore_config import OPENAI_MODELS, config_of
from .common import (
    OpenAIModel,
    build_net,
    catalog_ckpt,
    image_size_of,
    openai_transform,
    read_params,
    set_mode,
    token_ids,
)

__all__ = ["available_models", "load", "tokenize"]


class ModelNotFoundError(UnknownModelError, ValueError):
    """MindSpore-CLIP's ValueError for an unknown model name, and clipzoo's error."""


def available_models() -> list[str]:
    """Returns the names of available CLIP models"""
    return list(OPENAI_MODELS)


def load(name: str, device: str = "CPU", mode: int = 1, download_root: "str | None" = None):
    """``(model, preprocess)`` of a model name (:func:`available_models`) or a local MindSpore ``.ckpt``; sets
    MindSpore's context mode (0 GRAPH_MODE, 1 PYNATIVE_MODE) as MindSpore-CLIP does."""
    set_mode(device, mode)
    if name in OPENAI_MODELS:
        found = catalog_ckpt(name, "", download_root)
        assert found is not None, f"catalog/mindspore.toml has no card for {name}"
        path = found[0]
    elif os.path.isfile(name):
        path = name
    else:
        raise ModelNotFoundError(f"{name} not found; available models = {available_models()}")
    params = read_params(path)
    cfg = config_of(params, str(path), guess_warning=False)  # clipzoo's stored config, else MindSpore-CLIP's guess
    model = build_net(OpenAIModel, cfg, params)
    model.visual.input_resolution = image_size_of(cfg)
    return model, openai_transform(model.visual.input_resolution)


def tokenize(texts: "str | list[str]", context_length: int = 77, truncate: bool = False) -> ms.Tensor:
    """A two-dimensional int32 Tensor [number of input strings, context_length] of CLIP's BPE ids; a text
    longer than the context raises RuntimeError unless ``truncate`` (its last kept token is then end-of-text)."""
    return ms.Tensor(token_ids(texts, context_length, truncate).astype(np.int32))
