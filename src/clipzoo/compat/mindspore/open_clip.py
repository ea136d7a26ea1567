"""Drop-in for MindSpore-CLIP's ``open_clip`` (mindspore-lab/mindcv ``examples/open_clip``) on clipzoo's MindSpore
models.

    from clipzoo.compat.mindspore import open_clip     # was: from src import open_clip
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms("ViT-B-32", "model.ckpt")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    image_features, text_features, logit_scale = model(Tensor(preprocess_val(img)), tokenizer(["a cat"]))

- :func:`create_model_and_transforms` -> ``(model, preprocess_train, preprocess_val)`` and :func:`create_model`:
  ``model_name`` one of :func:`list_models` (or a config added with :func:`add_model_config`); ``pretrained``
  ``"openai"``, a tag of :func:`list_pretrained` (MindSpore-CLIP's released ``.ckpt``, downloaded once into
  ``cache_dir``) or a local ``.ckpt`` in MindSpore-CLIP's names. The model is an ``nn.Cell`` whose
  ``model(image, text)`` gives ``(image_features, text_features, logit_scale)`` (normalised features) and whose
  ``encode_image`` / ``encode_text`` take ``normalize=``. The transforms are MindSpore-CLIP's ``mindspore.dataset``
  pipelines (a PIL image -> a one-item tuple of a CHW float32 array).
- :func:`get_tokenizer` (its ``tokenize`` at the model's context length), :func:`tokenize` (int64 ids, always
  truncated), :func:`decode`, :func:`list_models`, :func:`list_pretrained` (``(model, tag)`` pairs, ``"model:tag"``
  with ``as_str``), :func:`list_pretrained_tags_by_model`, :func:`list_pretrained_models_by_tag`.
- MindSpore-CLIP's RuntimeErrors, word for word: ``"Model config for {name} not found."`` and
  ``"Pretrained weights ({tag}) not found for model {name}.Available pretrained tags ([...]."``.

Differences: MindSpore's CPU wheel only (another ``device`` warns and runs on the CPU); ``precision`` is ``"fp32"``
or ``"fp16"`` (the original has no ``precision`` and always applies its ``convert_weights_to_lp``, which ``"fp16"``
reproduces; another precision is a ClipzooError); ``jit=True`` compiles ``encode_image`` / ``encode_text`` with
``mindspore.jit``; ``force_patch_dropout`` is accepted and, as in open_clip's inference mode, changes nothing;
``force_custom_text`` builds :class:`~.custom_text.CustomTextModel`; ``force_image_size`` (an int or a square
``(N, N)``; a non-square size is a ClipzooError) resizes a ViT's position embedding as open_clip's torch
``resize_pos_embed`` does (MindSpore's bicubic kernel differs from it by ~1e-3); the weights are loaded strictly (a
mismatch is a one-line error, not MindSpore's silent partial load). The positional order of :func:`create_model` and
:func:`create_model_and_transforms` is the original's; clipzoo's ``precision``, ``device``, ``jit`` and
``pretrained_image`` are keyword-only. The model has open_clip's ``logit_bias`` (None) and ``visual.grid_size``.
"""
from __future__ import annotations

import copy
import json
import os
import re
from functools import partial
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn

from ...errors import CheckpointError, UnknownModelError, UnsupportedError
from ...models.mindspore_config import MODEL_CONFIGS, get_config, tower_sizes
from ...models.mindspore_layers import Attention
from ...registry import REGISTRY
from ...tokenizers import shared
from .common import (
    OpenClipModel,
    build_net,
    catalog_ckpt,
    check_device,
    image_size_of,
    image_transform,
    read_params,
    token_ids,
)
from .custom_text import CustomTextModel, convert_to_custom_text_param_dict

__all__ = ["create_model", "create_model_and_transforms", "get_tokenizer", "tokenize", "decode", "list_models",
           "list_pretrained", "list_openai_models", "list_pretrained_tags_by_model", "list_pretrained_models_by_tag",
           "add_model_config", "get_model_config", "image_transform", "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD"]

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)
# the model_configs MindSpore-CLIP's open_clip ships (clipzoo's tiny-* test configs are taken too, unlisted)
SHIPPED = ("RN50", "RN50-quickgelu", "RN101", "RN101-quickgelu", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32",
           "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14")
ADDED: dict[str, dict[str, Any]] = {}  # add_model_config's configs
FP32 = ("fp32", "float32")
FP16 = ("fp16", "float16")
PRETRAINED_IMAGE = "pretrained image towers currently only supported for timm models"


class ConfigNotFoundError(UnknownModelError, RuntimeError):
    """MindSpore-CLIP's RuntimeError for an unknown model config, pretrained tag or OpenAI model, and clipzoo's
    error."""


class PretrainedImageError(UnsupportedError, AssertionError):
    """open_clip's assertion for ``pretrained_image=True`` on a model without a timm image tower."""


def _natural_key(string_: str) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", string_.lower())]


def list_models() -> list[str]:
    """enumerate available model architectures based on config files"""
    return sorted({*SHIPPED, *ADDED}, key=_natural_key)


def add_model_config(path: "str | os.PathLike") -> None:
    """add model config path or file (open_clip's JSON: ``embed_dim``, ``vision_cfg``, ``text_cfg``); as in the
    original, a path that is neither a folder nor a ``.json`` file adds nothing"""
    path = Path(path)
    files = [path] if path.suffix == ".json" and path.is_file() else []
    for file in sorted(path.glob("*.json")) if path.is_dir() else files:
        cfg = json.loads(file.read_text())
        if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            ADDED[file.stem] = cfg


def get_model_config(model_name: str) -> "dict[str, Any] | None":
    if model_name in ADDED:
        return copy.deepcopy(ADDED[model_name])
    return copy.deepcopy(MODEL_CONFIGS[model_name]) if model_name in MODEL_CONFIGS else None


def _pairs() -> list[tuple[str, str]]:
    """MindSpore-CLIP's (model, tag) pairs that have a released .ckpt (catalog/mindspore.toml's aliases)."""
    pairs = []
    for card in REGISTRY.find(backend="mindspore"):
        for alias in card.also_known_as:
            model, _, tag = alias.removeprefix("mindspore:").partition("/")
            if tag and model in SHIPPED:
                pairs.append((model, tag))
    order = {m: i for i, m in enumerate(SHIPPED)}
    return sorted(set(pairs), key=lambda p: (order[p[0]], p[1] != "openai", p[1]))


def list_pretrained(as_str: bool = False) -> list:
    """``(model_name, pretrain_tag)`` pairs, or ``"name:tag"`` with ``as_str``."""
    return [":".join(p) if as_str else p for p in _pairs()]


def list_pretrained_tags_by_model(model: str) -> list[str]:
    return [t for m, t in _pairs() if m == model]


def list_pretrained_models_by_tag(tag: str) -> list[str]:
    tag = tag.lower().replace("-", "_")
    return [m for m, t in _pairs() if t == tag]


def tokenize(texts: "str | list[str]", context_length: int = 77) -> ms.Tensor:
    """int64 ids [number of input strings, context_length]; a longer text is truncated (last token end-of-text)."""
    return ms.Tensor(token_ids(texts, context_length, truncate=True))


def get_tokenizer(model_name: str):
    """:func:`tokenize` at the model's context length."""
    config = get_model_config(model_name)
    if config is None:
        raise ConfigNotFoundError(f"Model config for {model_name} not found.")
    context_length = config["text_cfg"].get("context_length")
    return partial(tokenize, context_length=context_length) if context_length else tokenize


def decode(output_ids) -> str:
    """The text of one row of ids, every id included (``<start_of_text>``, ``<end_of_text>``, padding ``!``)."""
    tok = shared()
    ids = output_ids.asnumpy() if hasattr(output_ids, "asnumpy") else output_ids
    special = {tok.sot_token_id: "<start_of_text>", tok.eot_token_id: "<end_of_text>"}
    text = "".join(special.get(int(i)) or tok.decoder[int(i)] for i in list(ids))
    return bytearray([tok.byte_decoder[c] for c in text]).decode("utf-8", errors="replace").replace("</w>", " ")


def _config(model_name: str, openai: bool, force_quick_gelu: bool, force_image_size) -> dict[str, Any]:
    cfg = get_model_config(model_name)
    if cfg is None:
        raise ConfigNotFoundError(f"Model config for {model_name} not found.")
    cfg = get_config(cfg)
    if force_quick_gelu or openai:
        cfg["quick_gelu"] = True  # OpenAI's weights are QuickGELU ones, as open_clip's openai loader builds them
    if force_image_size is not None:
        cfg["vision_cfg"]["image_size"] = _square_size(force_image_size)
    return cfg


def _square_size(size) -> int:
    """``force_image_size`` as one side: an int, or the original's ``(height, width)`` of equal sides."""
    sides = list(size) if isinstance(size, (list, tuple)) else [size]
    whole = all(isinstance(n, (int, np.integer)) and n > 0 for n in sides)
    if len(sides) not in (1, 2) or len(set(sides)) != 1 or not whole:
        raise UnsupportedError(f"force_image_size={size!r}: clipzoo's MindSpore drop-in builds square images; give "
                               "one positive size (an int, or (N, N))")
    return sides[0]


def list_openai_models() -> list[str]:
    """The models with OpenAI's weights (tag ``openai``)."""
    return list_pretrained_models_by_tag("openai")


def _weights(model_name: str, pretrained: str, cache_dir) -> "dict[str, Any]":
    found = catalog_ckpt(model_name, pretrained.lower().replace("-", "_"), cache_dir)
    if found is None and os.path.isfile(pretrained):
        return read_params(pretrained)
    if found is None:
        raise ConfigNotFoundError(f"Pretrained weights ({pretrained}) not found for model {model_name}."
                                  f"Available pretrained tags ({list_pretrained_tags_by_model(model_name)}.")
    return read_params(found[0])


def create_model(model_name: str, pretrained: "str | None" = None, force_quick_gelu: bool = False,
                 force_custom_text: bool = False, force_patch_dropout: "float | None" = None,
                 force_image_size: "int | tuple[int, int] | None" = None, cache_dir: "str | None" = None,
                 require_pretrained: bool = False, *, precision: str = "fp32", device: str = "CPU", jit: bool = False,
                 pretrained_image: bool = False, **model_kwargs: Any) -> "OpenClipModel | CustomTextModel":
    """MindSpore-CLIP's ``create_model``, its positional order (see the module's docstring for ``pretrained``);
    clipzoo's own options (``precision``, ``device``, ``jit``, ``pretrained_image``) are keyword-only."""
    model_name = model_name.replace("/", "-")  # for callers using old naming with / in ViT names
    if precision not in FP32 + FP16:
        raise UnsupportedError(f"precision {precision!r}: clipzoo's MindSpore drop-in runs 'fp32' or 'fp16' "
                               "(MindSpore-CLIP's convert_weights_to_lp); use one of those")
    if model_kwargs:
        raise UnsupportedError(f"unknown create_model option(s) for the MindSpore drop-in: {', '.join(model_kwargs)}")
    if pretrained_image:
        raise PretrainedImageError(PRETRAINED_IMAGE)
    check_device(device)
    openai = bool(pretrained) and pretrained.lower() == "openai"
    if openai and model_name not in list_openai_models():  # MindSpore-CLIP's load_openai_model
        raise ConfigNotFoundError(f"Model {model_name} not found; available models = {list_openai_models()}")
    cfg = _config(model_name, openai, force_quick_gelu, force_image_size)
    if require_pretrained and not pretrained:
        raise ConfigNotFoundError(f"Pretrained weights were required for (model: {model_name}, pretrained: "
                                  f"{pretrained}) but not loaded.")
    params = _weights(model_name, pretrained, cache_dir) if pretrained else _random_params(cfg)
    if force_image_size is not None:
        params = resize_pos_embed(params, cfg)
    if force_custom_text or cfg.get("custom_text"):  # the original: model_cfg.pop("custom_text") or force_custom_text
        model = build_net(CustomTextModel, cfg, convert_to_custom_text_param_dict(params))
    else:
        model = build_net(OpenClipModel, cfg, params)
    if precision in FP16:
        convert_weights_to_lp(model)
    model.visual.image_mean, model.visual.image_std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    model.visual.patch_dropout = float(force_patch_dropout or 0.0)
    if jit:
        model.encode_image, model.encode_text = ms.jit(model.encode_image), ms.jit(model.encode_text)
    return model


def convert_weights_to_lp(model: nn.Cell) -> nn.Cell:
    """MindSpore-CLIP's ``convert_weights_to_lp``: the Conv, Dense and Attention cells compute in float16 (their
    parameters stay float32); its LayerNorms take float32 inputs as its ``norm_layer`` does, so the features and
    the logit scale come out float32."""
    for _, cell in model.cells_and_names():
        if isinstance(cell, (nn.Conv1d, nn.Conv2d, nn.Dense, Attention)):
            cell.to_float(ms.float16)
        elif isinstance(cell, nn.LayerNorm):
            cell.to_float(ms.float32)
    return model


def resize_pos_embed(params: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """MindSpore-CLIP's ``resize_pos_embed``: a ViT's image position embedding of another grid is resized to the
    config's grid (class token kept, the grid interpolated bicubically); a ResNet's is left as it is (the original
    has no resize for it). The interpolation is open_clip's (torch, antialiased): MindSpore's CPU
    ``ops.interpolate(mode="bicubic")``, which the original calls, differs from it by up to ~1e-3."""
    old = params.get("visual.positional_embedding")
    sizes = tower_sizes(cfg)
    if old is None or not sizes["patch_size"]:
        return params
    old = np.asarray(old.asnumpy() if hasattr(old, "asnumpy") else old, np.float32)
    grid = sizes["image_size"] // sizes["patch_size"]
    if grid * grid + 1 == old.shape[0]:
        return params
    old_grid = int(round(np.sqrt(old.shape[0] - 1)))
    if old.ndim != 2 or old_grid * old_grid + 1 != old.shape[0]:
        raise CheckpointError(f"visual.positional_embedding {tuple(old.shape)} is no class token and square grid of "
                              "positions, so it cannot be resized to force_image_size; give a ViT checkpoint of "
                              "this config")
    weights = _bicubic_weights(old_grid, grid)
    image = np.einsum("ij,jkc,lk->ilc", weights, old[1:].reshape(old_grid, old_grid, -1).astype(np.float64), weights)
    resized = np.concatenate([old[:1], image.reshape(grid * grid, -1).astype(np.float32)], axis=0)
    return {**params, "visual.positional_embedding": resized}


def _bicubic_weights(n_in: int, n_out: int, a: float = -0.5) -> np.ndarray:
    """[n_out, n_in] weights of open_clip's resize (torch ``interpolate(mode="bicubic", align_corners=False,
    antialias=True)``): Keys' cubic with a = -0.5, half-pixel centres, widened by the scale when shrinking, the
    taps inside the grid renormalised to sum 1."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - 2 * stretch + 0.5), 0), min(int(centre + 2 * stretch + 0.5), n_in)
        for j in range(lo, hi):
            d = abs((j + 0.5 - centre) / stretch)
            near, far = (a + 2) * d**3 - (a + 3) * d**2 + 1, a * (d**3 - 5 * d**2 + 8 * d - 4)
            out[i, j] = near if d <= 1 else far if d < 2 else 0.0
        out[i] /= out[i].sum()
    return out


def _random_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """Random weights for an untrained model (``pretrained=None``): normal(0, 0.02) weights, unit norms and
    variances, zero biases and means, logit scale log(1 / 0.07) as open_clip starts it."""
    net = OpenClipModel(cfg)
    rng = np.random.default_rng(0)
    params = {}
    for p in net.get_parameters():
        shape = tuple(p.shape)
        if p.name.endswith(("gamma", "moving_variance")):
            params[p.name] = np.ones(shape, np.float32)
        elif p.name.endswith(("beta", "moving_mean", "bias")):
            params[p.name] = np.zeros(shape, np.float32)
        elif p.name == "logit_scale":
            params[p.name] = np.float32(np.log(1 / 0.07))
        else:
            params[p.name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    return params


def create_model_and_transforms(model_name: str, pretrained: "str | None" = None, force_quick_gelu: bool = False,
                                force_custom_text: bool = False, force_patch_dropout: "float | None" = None,
                                force_image_size: "int | tuple[int, int] | None" = None, image_mean=None,
                                image_std=None, aug_cfg: "dict[str, Any] | None" = None, cache_dir: "str | None" = None,
                                *, precision: str = "fp32", device: str = "CPU", jit: bool = False,
                                pretrained_image: bool = False, **model_kwargs: Any):
    """``(model, preprocess_train, preprocess_val)``, MindSpore-CLIP's positional order — see :func:`create_model`."""
    model = create_model(model_name, pretrained, precision=precision, device=device, jit=jit,
                         force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
                         force_patch_dropout=force_patch_dropout, force_image_size=force_image_size,
                         pretrained_image=pretrained_image, cache_dir=cache_dir, **model_kwargs)
    image_mean = image_mean or model.visual.image_mean
    image_std = image_std or model.visual.image_std
    size = image_size_of(model.config)
    preprocess_train = image_transform(size, is_train=True, mean=image_mean, std=image_std, aug_cfg=aug_cfg)
    preprocess_val = image_transform(size, is_train=False, mean=image_mean, std=image_std)
    return model, preprocess_train, preprocess_val
