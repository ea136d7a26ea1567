"""Configurations of the JAX/Flax CLIP (:mod:`clipzoo.models.jax_clip`), named as open_clip_jax names them.

Torch- and JAX-free, so that configs can be listed and checked (and conversion plans made) without the
``jax`` extra. A config is open_clip_jax's JSON form — ``{"image_model": {depth, embed_dim, n_heads,
patch_size}, "text_model": {depth, embed_dim, n_heads}, "proj_dim"}`` — plus what that form leaves to
defaults: the activation (``"gelu"``; ``"quick_gelu"`` for OpenAI's own weights) and the vocabulary size.
Image size and context length are not part of a config: they follow from the position embeddings.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError, ClipzooError

DEFAULT_VOCAB_SIZE = 49408
DEFAULT_IMAGE_SIZE = 224
DEFAULT_CONTEXT_LENGTH = 77
ACTIVATIONS = ("gelu", "quick_gelu")


def _vit(depth: int, width: int, heads: int, patch: int, t_depth: int, t_width: int, t_heads: int,
         proj: int) -> dict[str, Any]:
    return {"image_model": {"depth": depth, "embed_dim": width, "n_heads": heads, "patch_size": patch},
            "text_model": {"depth": t_depth, "embed_dim": t_width, "n_heads": t_heads},
            "proj_dim": proj}


# open_clip_jax's ViT model_configs/*.json (ConvNeXt towers are not implemented here yet)
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "vit-eps-patch32": _vit(2, 64, 4, 32, 2, 64, 4, 64),
    "vit-small-patch16": _vit(12, 384, 6, 16, 12, 384, 6, 384),
    "vit-small-patch32": _vit(12, 384, 6, 32, 12, 384, 6, 384),
    "vit-base-patch16": _vit(12, 768, 12, 16, 12, 512, 8, 512),
    "vit-base-patch32": _vit(12, 768, 12, 32, 12, 512, 8, 512),
    "vit-large-patch14": _vit(24, 1024, 16, 14, 12, 768, 12, 768),
    "vit-large-patch16": _vit(24, 1024, 16, 16, 12, 768, 12, 768),
    "vit-huge-patch14": _vit(32, 1280, 16, 14, 24, 1024, 16, 1024),
    "vit-huge-patch16": _vit(32, 1280, 16, 16, 24, 1024, 16, 1024),
}


@dataclass(frozen=True)
class TowerConfig:
    depth: int
    embed_dim: int
    n_heads: int
    patch_size: int = 0  # 0 for the text tower

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.n_heads


@dataclass(frozen=True)
class JaxClipConfig:
    """One ViT CLIP's shape: the two towers, the projection width, the activation, the vocabulary."""

    name: str
    image: TowerConfig
    text: TowerConfig
    proj_dim: int
    act: str = "gelu"
    vocab_size: int = DEFAULT_VOCAB_SIZE

    def as_dict(self) -> dict[str, Any]:
        """open_clip_jax's JSON form (plus ``act`` / ``vocab_size`` when they are not the defaults)."""
        out = _vit(self.image.depth, self.image.embed_dim, self.image.n_heads, self.image.patch_size,
                   self.text.depth, self.text.embed_dim, self.text.n_heads, self.proj_dim)
        if self.act != "gelu":
            out["act"] = self.act
        if self.vocab_size != DEFAULT_VOCAB_SIZE:
            out["text_model"]["vocab_size"] = self.vocab_size
        return out


def list_configs() -> tuple[str, ...]:
    return tuple(MODEL_CONFIGS)


def get_config(model: "str | dict | JaxClipConfig") -> JaxClipConfig:
    """A config by open_clip_jax name (``"vit-base-patch32"``), or from a dict in its JSON form."""
    if isinstance(model, JaxClipConfig):
        return model
    if isinstance(model, str):
        if model not in MODEL_CONFIGS:
            known = ", ".join(MODEL_CONFIGS)
            hint = " (ConvNeXt towers are not implemented in clipzoo's JAX engine yet)" \
                if model.startswith("convnext") else ""
            raise ClipzooError(f"unknown JAX model config {model!r}{hint}; use one of: {known}")
        return _from_dict(model, MODEL_CONFIGS[model])
    if isinstance(model, dict):
        return _from_dict("custom", model)
    raise ClipzooError(f"model= must name a JAX config ({', '.join(MODEL_CONFIGS)}) or be a dict in "
                       f"open_clip_jax's JSON form, not {type(model).__name__}")


def _from_dict(name: str, raw: dict[str, Any]) -> JaxClipConfig:
    raw = copy.deepcopy(raw)
    try:
        image, text = dict(raw["image_model"]), dict(raw["text_model"])
        vocab = int(text.pop("vocab_size", DEFAULT_VOCAB_SIZE))
        act = str(raw.get("act", "gelu"))
        cfg = JaxClipConfig(name=name, image=TowerConfig(**image), text=TowerConfig(**text),
                            proj_dim=int(raw["proj_dim"]), act=act, vocab_size=vocab)
    except (KeyError, TypeError) as exc:
        raise ClipzooError(f"JAX model config {name!r} is malformed ({exc}); it needs image_model "
                           "{depth, embed_dim, n_heads, patch_size}, text_model {depth, embed_dim, n_heads} "
                           "and proj_dim") from None
    if act not in ACTIVATIONS:
        raise ClipzooError(f"JAX model config {name!r}: act must be one of {', '.join(ACTIVATIONS)}, not {act!r}")
    for tower in (cfg.image, cfg.text):
        if tower.embed_dim % tower.n_heads:
            raise ClipzooError(f"JAX model config {name!r}: embed_dim {tower.embed_dim} is not divisible by "
                               f"n_heads {tower.n_heads}")
    return cfg


# ------------------------------------------------------------ parameter shapes (no JAX needed)
def get_path(tree: Mapping, path: str):
    """``tree["a"]["b"]`` for path ``"a/b"``; a missing part is a CheckpointError naming the path."""
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise CheckpointError(f"JAX parameters lack {path!r}; is this an open_clip_jax ViT CLIP?")
        node = node[part]
    return node


def param_sizes(params: Mapping[str, Any], model: "str | dict | JaxClipConfig") -> tuple[int, int]:
    """``(image_size, context_length)`` that a parameter tree was made for (from its position embeddings)."""
    cfg = get_config(model)
    tokens = int(get_path(params, "image_model/PosEmbed_0/pos_embed").shape[0]) - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"image position embeddings of {tokens} + 1 rows are not a square grid")
    context = int(get_path(params, "text_model/PosEmbed_0/pos_embed").shape[0])
    return side * cfg.image.patch_size, context


def expected_shapes(cfg: JaxClipConfig, image_size: int, context_length: int) -> dict[str, tuple[int, ...]]:
    """Every parameter path of config ``cfg`` -> its shape (computed here without JAX)."""
    i, t, p = cfg.image, cfg.text, cfg.image.patch_size
    grid = (image_size // p) ** 2
    shapes = {"image_model/PatchEmbed_0/Conv_0/kernel": (p, p, 3, i.embed_dim),
              "image_model/ClsToken_0/cls_token": (i.embed_dim,),
              "image_model/PosEmbed_0/pos_embed": (grid + 1, i.embed_dim),
              "text_model/Embed_0/embedding": (cfg.vocab_size, t.embed_dim),
              "text_model/PosEmbed_0/pos_embed": (context_length, t.embed_dim),
              "Dense_0/kernel": (i.embed_dim, cfg.proj_dim), "Dense_1/kernel": (t.embed_dim, cfg.proj_dim)}
    for name, w in (("image_model/LayerNorm_0", i.embed_dim), ("image_model/LayerNorm_1", i.embed_dim),
                    ("text_model/LayerNorm_0", t.embed_dim)):
        shapes.update({f"{name}/scale": (w,), f"{name}/bias": (w,)})
    for tower, name in ((i, "image_model"), (t, "text_model")):
        w, h, hd = tower.embed_dim, tower.n_heads, tower.head_dim
        for b in range(tower.depth):
            pre = f"{name}/Transformer_0/TransformerBlock_{b}"
            for ln in ("LayerNorm_0", "LayerNorm_1"):
                shapes.update({f"{pre}/{ln}/scale": (w,), f"{pre}/{ln}/bias": (w,)})
            for n in ("query", "key", "value"):
                shapes.update({f"{pre}/MultiHeadAttention_0/{n}/kernel": (w, h, hd),
                               f"{pre}/MultiHeadAttention_0/{n}/bias": (h, hd)})
            shapes.update({f"{pre}/MultiHeadAttention_0/out/kernel": (h, hd, w),
                           f"{pre}/MultiHeadAttention_0/out/bias": (w,),
                           f"{pre}/MLP_0/Dense_0/kernel": (w, 4 * w), f"{pre}/MLP_0/Dense_0/bias": (4 * w,),
                           f"{pre}/MLP_0/Dense_1/kernel": (4 * w, w), f"{pre}/MLP_0/Dense_1/bias": (w,)})
    return shapes


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_shapes(params: Mapping[str, Any], cfg: JaxClipConfig) -> None:
    image_size, context = param_sizes(params, cfg)
    want = expected_shapes(cfg, image_size, context)
    have = {k: tuple(v.shape) for k, v in flatten(params).items() if k != "temp"}
    for path in sorted(set(want) | set(have)):
        if want.get(path) != have.get(path):
            raise CheckpointError(f"JAX parameters do not fit config {cfg.name!r}: {path} is "
                                  f"{have.get(path, 'absent')}, the config needs {want.get(path, 'nothing')}")
