"""Conversion both ways between open_clip checkpoints (torch) and open_clip_jax's parameter files.

The tensor map itself (:func:`open_clip_to_jax`, :func:`jax_to_open_clip`, :func:`open_clip_config`) lives in
:mod:`clipzoo.models.jax_open_clip_map` and is re-exported here; this module adds the configs read from open_clip
(:func:`config_from_open_clip`), ``.pkl`` files and the open_clip form of a loaded JAX model.
"""
from __future__ import annotations

import math
import os
import pickle
from collections.abc import Mapping
from typing import Any

from ..constants import OPENAI_MEAN, OPENAI_STD
from ..errors import ClipzooError
from ..models.jax_config import TIMM_CONVNEXTS, JaxClipConfig, get_config, read_config_file, write_config_file
from ..models.jax_open_clip_map import (
    DEFAULT_TEMPERATURE,
    jax_to_open_clip,
    open_clip_config,
    open_clip_to_jax,
    plan,
    to_numpy,
)
from ..models.jax_resnet_config import RESNET_REDUCTION
from .form import PREPROCESS_KEYS, OpenClipForm

__all__ = ["DEFAULT_TEMPERATURE", "plan", "open_clip_to_jax", "jax_to_open_clip", "open_clip_config",
           "config_from_open_clip", "write_params", "write_params_with_config", "jax_form", "open_clip_form_of_jax",
           "square_sizes"]

OPEN_CLIP_VIT_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
OPEN_CLIP_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
OPEN_CLIP_TIMM_KEYS = {"timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias",
                       "timm_drop", "timm_drop_path", "image_size"}


def config_from_open_clip(model_cfg: Mapping[str, Any], state_dict: "Mapping[str, Any] | None" = None
                          ) -> JaxClipConfig:
    """The JAX config of an open_clip ViT or timm-ConvNeXt model config (its ``vision_cfg`` / ``text_cfg``);
    a ConvNeXt none of whose shapes timm names (TIMM_CONVNEXTS) reads its stages from ``state_dict``."""
    vision, text = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    odd = {f"text_cfg.{k}" for k in set(text) - OPEN_CLIP_TEXT_KEYS}
    if "timm_model_name" in vision:
        image = _convnext_image(vision, int(model_cfg["embed_dim"]), state_dict, odd)
    elif isinstance(vision.get("layers"), (list, tuple)):  # open_clip's ModifiedResNet
        odd |= set(vision) - {"image_size", "layers", "width", "head_width"}
        width = int(vision.get("width", 64))
        image = {"layers": list(vision["layers"]), "width": width,
                 "heads": width * RESNET_REDUCTION // int(vision.get("head_width", 64))}
    else:
        odd |= set(vision) - OPEN_CLIP_VIT_KEYS
        if odd or isinstance(vision.get("layers"), (list, tuple)) or float(vision.get("mlp_ratio", 4)) != 4:
            raise ClipzooError(f"this open_clip config is not a plain ViT CLIP the JAX engine implements "
                               f"(unsupported: {', '.join(sorted(odd)) or 'ResNet tower or mlp_ratio'})")
        width = int(vision.get("width", 768))
        image = {"depth": int(vision.get("layers", 12)), "embed_dim": width,
                 "n_heads": width // int(vision.get("head_width", 64)), "patch_size": int(vision.get("patch_size", 16))}
    if odd or float(text.get("mlp_ratio", 4)) != 4:
        raise ClipzooError(f"this open_clip config has a text tower the JAX engine does not implement "
                           f"(unsupported: {', '.join(sorted(odd)) or 'mlp_ratio'})")
    raw = {"image_model": image,
           "text_model": {"depth": int(text.get("layers", 12)), "embed_dim": int(text.get("width", 512)),
                          "n_heads": int(text.get("heads", 8)), "vocab_size": int(text.get("vocab_size", 49408))},
           "proj_dim": int(model_cfg["embed_dim"]), "act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"}
    return get_config(raw)


def _convnext_image(vision: dict, embed_dim: int, state_dict, odd: set) -> dict:
    name = str(vision["timm_model_name"])
    problems = sorted(set(vision) - OPEN_CLIP_TIMM_KEYS)
    if vision.get("timm_pool", "avg") not in ("", "avg"):
        problems.append(f"timm_pool {vision['timm_pool']!r}")
    if vision.get("timm_proj", "linear") not in ("linear", "mlp") or vision.get("timm_proj_bias"):
        problems.append(f"timm_proj {vision.get('timm_proj')!r} (bias {bool(vision.get('timm_proj_bias'))})")
    shapes = TIMM_CONVNEXTS.get(name) or (_convnext_stages(state_dict) if state_dict is not None else None)
    if problems or odd or shapes is None:
        raise ClipzooError(f"this open_clip timm config is not a ConvNeXt CLIP the JAX engine implements "
                           f"(unsupported: {', '.join(problems + sorted(odd)) or f'timm model {name!r}'})")
    image: dict[str, Any] = {"depths": list(shapes[0]), "out_dims": list(shapes[1])}
    if vision.get("timm_proj", "linear") == "mlp":
        image["head_hidden_dim"] = 2 * embed_dim
    if name not in TIMM_CONVNEXTS:
        image["timm_model_name"] = name
    return image


def _convnext_stages(state_dict: Mapping[str, Any]) -> "tuple[tuple[int, ...], tuple[int, ...]] | None":
    """``(depths, out_dims)`` of the timm ConvNeXt trunk in an open_clip state dict (None if there is none)."""
    depths: dict[int, int] = {}
    dims: dict[int, int] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[:3] == ["visual", "trunk", "stages"] and len(parts) == 8 and parts[4] == "blocks" \
                and parts[6:] == ["conv_dw", "weight"]:
            i, j = int(parts[3]), int(parts[5])
            depths[i] = max(depths.get(i, 0), j + 1)
            dims[i] = int(value.shape[0])
    if not depths or sorted(depths) != list(range(len(depths))):
        return None
    return tuple(depths[i] for i in sorted(depths)), tuple(dims[i] for i in sorted(dims))


# ------------------------------------------------------------------------------------------- files
def write_params(path: "str | os.PathLike", variables: Mapping[str, Any]) -> None:
    """Write ``{'params': …}`` as open_clip_jax's ``.pkl`` (a pickled dict of numpy arrays)."""
    params = variables.get("params", variables)
    tree = {"params": _numpy_tree(params)}
    if isinstance(variables.get("batch_stats"), Mapping):  # a ResNet's BatchNorm running averages
        tree["batch_stats"] = _numpy_tree(variables["batch_stats"])
    with open(path, "wb") as fh:
        pickle.dump(tree, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _numpy_tree(tree: Mapping[str, Any]) -> dict:
    return {k: _numpy_tree(v) if isinstance(v, Mapping) else to_numpy(v) for k, v in tree.items()}


def write_params_with_config(path: "str | os.PathLike", variables: Mapping[str, Any], cfg: JaxClipConfig,
                             image_size: int, context_length: int,
                             preprocess: "Mapping[str, Any] | None" = None) -> None:
    """The ``.pkl`` and, next to it, the config file that lets ``clipzoo.load(path)`` rebuild the model (and records
    ``preprocess``, the model's open_clip preprocessing, which converting back restores)."""
    write_params(path, variables)
    write_config_file(path, cfg, image_size, context_length, preprocess)


# ------------------------------------------------------------------------------------------- forms
def square_sizes(model_cfg: Mapping[str, Any], source: str, engine: str) -> dict[str, Any]:
    """``model_cfg`` with a square ``vision_cfg.image_size`` / ``patch_size`` list (``[32, 32]``, which open_clip
    takes) as one int; a non-square one refused in one line (``engine``'s image towers take one size)."""
    vision = dict(model_cfg.get("vision_cfg", {}))
    for key in ("image_size", "patch_size"):
        value = vision.get(key)
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or value[0] != value[1]:
                raise ClipzooError(f"{source}: vision_cfg.{key} = {list(value)} is not square, and {engine} takes "
                                   "one size for both sides; convert it to open_clip, safetensors or onnx instead")
            vision[key] = int(value[0])
    return {**model_cfg, "vision_cfg": vision}


def jax_form(form: OpenClipForm) -> tuple[JaxClipConfig, dict]:
    """``(config, {'params': …})`` of a model in its open_clip form."""
    cfg = config_from_open_clip(square_sizes(form.model_cfg, form.source, "the JAX engine"), form.state_dict)
    return cfg, open_clip_to_jax(form.state_dict, cfg)


def open_clip_form_of_jax(comparator) -> OpenClipForm:
    """The open_clip form of a loaded JAX comparator (:mod:`clipzoo.backends.jax`): its parameters moved to
    open_clip's keys, the open_clip config of its JAX config, open_clip_jax's eval preprocessing."""
    towers = comparator.model
    params = _numpy_tree(towers.variables["params"])
    params["temp"] = to_numpy(math.log(float(comparator.logit_params()[0]))).astype("float32")
    stats = towers.variables.get("batch_stats")  # a ResNet's BatchNorm running averages
    state_dict = jax_to_open_clip({"params": params, **({"batch_stats": _numpy_tree(stats)} if stats else {})},
                                  towers.cfg)
    model_cfg = open_clip_config(towers.cfg, comparator.image_size, comparator.context_length)
    preprocess = {"size": comparator.image_size, "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    path = comparator.card.source.path
    recorded = (read_config_file(path) or {}).get("preprocess_cfg") if path and os.path.isfile(path) else None
    if isinstance(recorded, Mapping):  # the preprocessing of the model it was converted from
        preprocess.update({k: v for k, v in recorded.items() if k in PREPROCESS_KEYS})
    return OpenClipForm(state_dict, model_cfg, preprocess, comparator.card.alias)
