"""Configurations of the JAX/Flax CLIP (:mod:`clipzoo.models.jax_clip`), named as open_clip_jax names them.

Torch- and JAX-free, so that configs can be listed and checked (and conversion plans made) without the
``jax`` extra. A config is open_clip_jax's JSON form — ``{"image_model": {depth, embed_dim, n_heads,
patch_size}, "text_model": {depth, embed_dim, n_heads}, "proj_dim"}`` for a ViT, ``"image_model": {depths,
out_dims[, head_hidden_dim]}`` for a ConvNeXt — plus what that form leaves to defaults: the activation
(``"gelu"``; ``"quick_gelu"`` for OpenAI's own weights), the vocabulary size and, for a ConvNeXt whose
stage shapes are none of timm's, the ``timm_model_name`` that builds its PyTorch twin. Image size and
context length are not part of a config: they follow from the position embeddings (a ConvNeXt's image size
is free: it is given where the model is loaded, default 224).
"""
from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ClipzooError
from .jax_params import check_float_array
from .jax_resnet_config import RESNET_REDUCTION, ResNetConfig, resnet_config, resnet_shapes

DEFAULT_VOCAB_SIZE = 49408
DEFAULT_IMAGE_SIZE = 224
DEFAULT_CONTEXT_LENGTH = 77
ACTIVATIONS = ("gelu", "quick_gelu")
MAX_TEMP = 88.0  # exp(88) is about 1.7e38, float32's largest finite value: a larger temp makes the logits inf


def _vit(depth: int, width: int, heads: int, patch: int, t_depth: int, t_width: int, t_heads: int,
         proj: int) -> dict[str, Any]:
    return {"image_model": {"depth": depth, "embed_dim": width, "n_heads": heads, "patch_size": patch},
            "text_model": {"depth": t_depth, "embed_dim": t_width, "n_heads": t_heads},
            "proj_dim": proj}


def _convnext(out_dims: tuple[int, ...], t_depth: int, t_width: int, t_heads: int, proj: int,
              head_hidden_dim: int | None = None) -> dict[str, Any]:
    image: dict[str, Any] = {"depths": [3, 3, 27, 3], "out_dims": list(out_dims)}
    if head_hidden_dim:
        image["head_hidden_dim"] = head_hidden_dim
    return {"image_model": image, "text_model": {"depth": t_depth, "embed_dim": t_width, "n_heads": t_heads},
            "proj_dim": proj}


# open_clip_jax's model_configs/*.json
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
    "convnext-base": _convnext((128, 256, 512, 1024), 12, 512, 8, 512),
    "convnext-base-w": _convnext((128, 256, 512, 1024), 12, 640, 10, 640),
    "convnext-large-d": _convnext((192, 384, 768, 1536), 16, 768, 12, 768, head_hidden_dim=1536),
}
# timm's ConvNeXt trunks (conv_mlp=False, LayerNorm eps 1e-6, layer scale) by their stage shapes: the
# PyTorch twin of a JAX ConvNeXt tower (open_clip's ``vision_cfg.timm_model_name``)
TIMM_CONVNEXTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
CONVNEXT_STEM = 4  # the stem's patch size; each later stage halves the grid (a 2x2, stride-2 conv)
CONVNEXT_KERNEL = 7  # the blocks' depthwise convolution


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
class ConvNeXtConfig:
    """open_clip_jax's ConvNeXt image tower: blocks and widths per stage, an optional GELU head layer."""

    depths: tuple[int, ...]
    out_dims: tuple[int, ...]
    head_hidden_dim: int | None = None
    timm_model_name: str = ""  # empty: the timm name is looked up from the shapes (TIMM_CONVNEXTS)

    @property
    def embed_dim(self) -> int:
        """The width of the tower's output (what the image projection takes)."""
        return self.head_hidden_dim or self.out_dims[-1]

    @property
    def timm_name(self) -> str:
        if self.timm_model_name:
            return self.timm_model_name
        for name, shapes in TIMM_CONVNEXTS.items():
            if shapes == (self.depths, self.out_dims):
                return name
        return ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"depths": list(self.depths), "out_dims": list(self.out_dims)}
        if self.head_hidden_dim:
            out["head_hidden_dim"] = self.head_hidden_dim
        if self.timm_model_name and self.timm_model_name != _timm_of(self.depths, self.out_dims):
            out["timm_model_name"] = self.timm_model_name
        return out


def _timm_of(depths: tuple[int, ...], out_dims: tuple[int, ...]) -> str:
    return ConvNeXtConfig(depths, out_dims).timm_name


@dataclass(frozen=True)
class JaxClipConfig:
    """One CLIP's shape: the two towers (a ViT or ConvNeXt image tower), the projection width, the
    activation, the vocabulary."""

    name: str
    image: "TowerConfig | ConvNeXtConfig | ResNetConfig"
    text: TowerConfig
    proj_dim: int
    act: str = "gelu"
    vocab_size: int = DEFAULT_VOCAB_SIZE

    @property
    def is_convnext(self) -> bool:
        return isinstance(self.image, ConvNeXtConfig)

    @property
    def is_resnet(self) -> bool:
        """clipzoo's own ResNet image tower (:mod:`clipzoo.models.jax_resnet`): BatchNorm, no ``Dense_0``."""
        return isinstance(self.image, ResNetConfig)

    def as_dict(self) -> dict[str, Any]:
        """open_clip_jax's JSON form (plus ``act`` / ``vocab_size`` when they are not the defaults)."""
        if isinstance(self.image, (ConvNeXtConfig, ResNetConfig)):
            out = {"image_model": self.image.as_dict(), "text_model": {"depth": self.text.depth, "embed_dim":
                   self.text.embed_dim, "n_heads": self.text.n_heads}, "proj_dim": self.proj_dim}
        else:
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
            raise ClipzooError(f"unknown JAX model config {model!r}; use one of: {', '.join(MODEL_CONFIGS)}")
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
        tower = _convnext_config(image) if "depths" in image else \
            resnet_config(image) if "layers" in image else TowerConfig(**image)
        cfg = JaxClipConfig(name=name, image=tower, text=TowerConfig(**text),
                            proj_dim=int(raw["proj_dim"]), act=act, vocab_size=vocab)
    except (KeyError, TypeError) as exc:
        raise ClipzooError(f"JAX model config {name!r} is malformed ({exc}); it needs image_model "
                           "{depth, embed_dim, n_heads, patch_size} (a ViT), {depths, out_dims} (a ConvNeXt) or "
                           "{layers, width[, heads]} (a ResNet), "
                           "text_model {depth, embed_dim, n_heads} and proj_dim") from None
    if act not in ACTIVATIONS:
        raise ClipzooError(f"JAX model config {name!r}: act must be one of {', '.join(ACTIVATIONS)}, not {act!r}")
    for tower in (cfg.image, cfg.text) if isinstance(cfg.image, TowerConfig) else (cfg.text,):
        if tower.embed_dim % tower.n_heads:
            raise ClipzooError(f"JAX model config {name!r}: embed_dim {tower.embed_dim} is not divisible by "
                               f"n_heads {tower.n_heads}")
    return cfg


def _convnext_config(image: dict[str, Any]) -> ConvNeXtConfig:
    depths, dims = tuple(int(d) for d in image.pop("depths")), tuple(int(d) for d in image.pop("out_dims"))
    hidden = image.pop("head_hidden_dim", None)
    timm_name = str(image.pop("timm_model_name", ""))
    if image:
        raise TypeError(f"unexpected ConvNeXt field(s) {', '.join(sorted(image))}")
    if not depths or len(depths) != len(dims):
        raise TypeError("depths and out_dims must be two lists of the same length")
    return ConvNeXtConfig(depths, dims, int(hidden) if hidden else None, timm_name)


def match_config(cfg: JaxClipConfig) -> str | None:
    """The name of open_clip_jax's config that ``cfg`` equals, if any."""
    mine = cfg.as_dict()
    return next((name for name, raw in MODEL_CONFIGS.items() if raw == mine), None)


# ------------------------------------------------------------ the config file next to a parameter file
CONFIG_SUFFIX = ".config.json"  # params.pkl -> params.config.json (written by ``clipzoo convert --to jax``)


def config_file(params_path: "str | os.PathLike") -> Path:
    path = Path(params_path)
    return path.with_name((path.stem if path.suffix == ".pkl" else path.name) + CONFIG_SUFFIX)


def write_config_file(params_path: "str | os.PathLike", cfg: JaxClipConfig, image_size: int,
                      context_length: int, preprocess: "Mapping[str, Any] | None" = None) -> Path:
    """Record the config (open_clip_jax's name when it is one, else its JSON form) and sizes of a ``.pkl``, and
    ``preprocess`` (open_clip's preprocessing config of the model it was converted from) when given."""
    out = config_file(params_path)
    body = {"model": match_config(cfg) or cfg.as_dict(), "image_size": int(image_size),
            "context_length": int(context_length), **({"preprocess_cfg": dict(preprocess)} if preprocess else {})}
    out.write_text(json.dumps(body, indent=2) + "\n")
    return out


def read_config_file(params_path: "str | os.PathLike") -> dict[str, Any] | None:
    """What :func:`write_config_file` wrote next to ``params_path`` (None if there is no such file)."""
    path = config_file(params_path)
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the JAX config file {path}: {exc}") from None
    if not isinstance(body, dict) or "model" not in body:
        raise CheckpointError(f"{path} is not a JAX config file (a JSON object with \"model\")")
    return body


# ------------------------------------------------------------ parameter shapes (no JAX needed)
def get_path(tree: Mapping, path: str):
    """``tree["a"]["b"]`` for path ``"a/b"``; a missing part is a CheckpointError naming the path."""
    node: Any = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise CheckpointError(f"JAX parameters lack {path!r}; is this an open_clip_jax CLIP?")
        node = node[part]
    return node


def param_sizes(params: Mapping[str, Any], model: "str | dict | JaxClipConfig",
                image_size: int | None = None) -> tuple[int, int]:
    """``(image_size, context_length)`` that a parameter tree was made for (from its position embeddings;
    a ConvNeXt takes any image size: ``image_size``, default 224)."""
    cfg = get_config(model)
    context = _rows(params, "text_model/PosEmbed_0/pos_embed")
    if isinstance(cfg.image, ConvNeXtConfig):
        return int(image_size or DEFAULT_IMAGE_SIZE), context
    resnet = isinstance(cfg.image, ResNetConfig)
    pos = "image_model/attnpool/positional_embedding" if resnet else "image_model/PosEmbed_0/pos_embed"
    tokens = _rows(params, pos) - 1
    side = math.isqrt(tokens)
    if side == 0 or side * side != tokens:
        raise CheckpointError(f"image position embeddings of {tokens} + 1 rows are not a square grid")
    return side * (RESNET_REDUCTION if resnet else cfg.image.patch_size), context


def _rows(params: Mapping[str, Any], path: str) -> int:
    """The rows of a position embedding (positions by width): none is no model (a context length of 0, or an
    image grid of -1 cells)."""
    shape = getattr(get_path(params, path), "shape", ())
    if len(shape) != 2 or shape[0] < 1:
        raise CheckpointError(f"JAX parameters: {path} is of shape {tuple(shape)}; a position embedding is "
                              "(positions, width) with at least one position")
    return int(shape[0])


def expected_shapes(cfg: JaxClipConfig, image_size: int, context_length: int) -> dict[str, tuple[int, ...]]:
    """Every parameter path of config ``cfg`` -> its shape (computed here without JAX)."""
    t = cfg.text
    shapes = {"text_model/Embed_0/embedding": (cfg.vocab_size, t.embed_dim),
              "text_model/PosEmbed_0/pos_embed": (context_length, t.embed_dim),
              "Dense_0/kernel": (cfg.image.embed_dim, cfg.proj_dim), "Dense_1/kernel": (t.embed_dim, cfg.proj_dim),
              **_ln_shapes("text_model/LayerNorm_0", t.embed_dim), **_blocks_shapes("text_model", t)}
    if isinstance(cfg.image, ConvNeXtConfig):
        return {**shapes, **_convnext_shapes(cfg.image)}
    if isinstance(cfg.image, ResNetConfig):  # the attention pool projects: no Dense_0
        shapes.pop("Dense_0/kernel")
        return {**shapes, **resnet_shapes(cfg.image, cfg.proj_dim, image_size)}
    i, p = cfg.image, cfg.image.patch_size
    grid = (image_size // p) ** 2
    shapes.update({"image_model/PatchEmbed_0/Conv_0/kernel": (p, p, 3, i.embed_dim),
                   "image_model/ClsToken_0/cls_token": (i.embed_dim,),
                   "image_model/PosEmbed_0/pos_embed": (grid + 1, i.embed_dim),
                   **_ln_shapes("image_model/LayerNorm_0", i.embed_dim),
                   **_ln_shapes("image_model/LayerNorm_1", i.embed_dim), **_blocks_shapes("image_model", i)})
    return shapes


def _ln_shapes(path: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{path}/scale": (width,), f"{path}/bias": (width,)}


def _dense_shapes(path: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{path}/kernel": (n_in, n_out), f"{path}/bias": (n_out,)}


def _blocks_shapes(name: str, tower: TowerConfig) -> dict[str, tuple[int, ...]]:
    w, h, hd = tower.embed_dim, tower.n_heads, tower.head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for b in range(tower.depth):
        pre = f"{name}/Transformer_0/TransformerBlock_{b}"
        shapes.update({**_ln_shapes(f"{pre}/LayerNorm_0", w), **_ln_shapes(f"{pre}/LayerNorm_1", w)})
        for n in ("query", "key", "value"):
            shapes.update({f"{pre}/MultiHeadAttention_0/{n}/kernel": (w, h, hd),
                           f"{pre}/MultiHeadAttention_0/{n}/bias": (h, hd)})
        shapes.update({f"{pre}/MultiHeadAttention_0/out/kernel": (h, hd, w),
                       f"{pre}/MultiHeadAttention_0/out/bias": (w,),
                       **_dense_shapes(f"{pre}/MLP_0/Dense_0", w, 4 * w),
                       **_dense_shapes(f"{pre}/MLP_0/Dense_1", 4 * w, w)})
    return shapes


def _convnext_shapes(c: ConvNeXtConfig) -> dict[str, tuple[int, ...]]:
    """open_clip_jax's ConvNeXt: ``PatchEmbed_0`` (4x4 conv, then LayerNorm), ``ConvNeXtStage_{i}`` (a
    ``PatchEmbed_0`` of LayerNorm then 2x2 conv from the second stage on; ``ConvNeXtBlock_{j}`` of depthwise
    ``Conv_0``, ``LayerNorm_0``, ``MLP_0``, layer scale ``lambda``), the head's ``LayerNorm_0`` [, ``Dense_0``]."""
    v, s, k = "image_model", CONVNEXT_STEM, CONVNEXT_KERNEL
    d0 = c.out_dims[0]
    shapes = {f"{v}/PatchEmbed_0/Conv_0/kernel": (s, s, 3, d0), f"{v}/PatchEmbed_0/Conv_0/bias": (d0,),
              **_ln_shapes(f"{v}/PatchEmbed_0/LayerNorm_0", d0), **_ln_shapes(f"{v}/LayerNorm_0", c.out_dims[-1])}
    for i, (depth, d) in enumerate(zip(c.depths, c.out_dims)):
        stage = f"{v}/ConvNeXtStage_{i}"
        if i:
            prev = c.out_dims[i - 1]
            shapes.update({**_ln_shapes(f"{stage}/PatchEmbed_0/LayerNorm_0", prev),
                           f"{stage}/PatchEmbed_0/Conv_0/kernel": (2, 2, prev, d),
                           f"{stage}/PatchEmbed_0/Conv_0/bias": (d,)})
        for j in range(depth):
            block = f"{stage}/ConvNeXtBlock_{j}"
            shapes.update({f"{block}/Conv_0/kernel": (k, k, 1, d), f"{block}/Conv_0/bias": (d,),
                           **_ln_shapes(f"{block}/LayerNorm_0", d), f"{block}/lambda": (d,),
                           **_dense_shapes(f"{block}/MLP_0/Dense_0", d, 4 * d),
                           **_dense_shapes(f"{block}/MLP_0/Dense_1", 4 * d, d)})
    if c.head_hidden_dim:
        shapes.update(_dense_shapes(f"{v}/Dense_0", c.out_dims[-1], c.head_hidden_dim))
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
    """Every parameter an array of real floats of the shape ``cfg`` needs; ``temp`` (if any) one finite number."""
    leaves = {k: check_float_array(k, v) for k, v in flatten(params).items()}
    if "temp" in leaves:
        check_temp(leaves.pop("temp"))
    image_size, context = param_sizes(params, cfg)
    want = expected_shapes(cfg, image_size, context)
    have = {k: tuple(v.shape) for k, v in leaves.items()}
    for path in sorted(set(want) | set(have)):
        if want.get(path) != have.get(path):
            raise CheckpointError(f"JAX parameters do not fit config {cfg.name!r}: {path} is "
                                  f"{have.get(path, 'absent')}, the config needs {want.get(path, 'nothing')}")


def check_temp(temp) -> float:
    """The learnt temperature ``temp`` (the log of the logit scale) as a float: one finite number whose exp is a
    finite float32 (the image side is multiplied by it)."""
    value = float(temp.reshape(-1)[0]) if temp.size == 1 else math.nan
    if not (math.isfinite(value) and value <= MAX_TEMP):
        shown = temp.tolist() if temp.size <= 8 else f"an array of shape {tuple(temp.shape)}"
        raise CheckpointError(f"JAX parameter temp is {shown}; it must be one finite number up to {MAX_TEMP} "
                              "(the log of the logit scale)")
    return value
