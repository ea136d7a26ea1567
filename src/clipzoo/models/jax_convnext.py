"""open_clip_jax's ConvNeXt image tower in Flax (linen), with exactly its variable names.

``PatchEmbed_0/{Conv_0, LayerNorm_0}`` (the 4x4 stem, then LayerNorm), ``ConvNeXtStage_{i}`` — from the
second stage on a ``PatchEmbed_0/{LayerNorm_0, Conv_0}`` (LayerNorm, then a 2x2 stride-2 conv), then
``ConvNeXtBlock_{j}/{Conv_0 (7x7 depthwise), LayerNorm_0, MLP_0/{Dense_0, Dense_1}, lambda}`` — then global
average pooling (in float32), ``LayerNorm_0`` and, for ``convnext-large-d``, ``Dense_0`` + GELU. Every name
is given explicitly (open_clip_jax gets the same ones from Flax's auto-naming). LayerNorm eps is 1e-6, as
in open_clip_jax and timm. It is timm's ConvNeXt (``conv_mlp=False``) as open_clip wraps it: the trunk's
``head.norm`` is ``LayerNorm_0`` and open_clip's ``head.mlp.fc1`` is ``Dense_0``.
"""
from __future__ import annotations

from typing import Any

from ..extras import require
from .jax_config import CONVNEXT_KERNEL, CONVNEXT_STEM, ConvNeXtConfig

jax = require("jax", "the JAX engine")
jnp = require("jax.numpy", "the JAX engine")
nn = require("flax.linen", "the JAX engine")

CONVNEXT_LN_EPS = 1e-6
LAYER_SCALE_INIT = 1e-6


def gelu(x):
    return jax.nn.gelu(x, approximate=False)


class ConvNeXtMlp(nn.Module):
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = gelu(nn.Dense(4 * width, dtype=self.dtype, name="Dense_0")(x))
        return nn.Dense(width, dtype=self.dtype, name="Dense_1")(h)


class ConvNeXtBlock(nn.Module):
    """``x + lambda * mlp(ln(dwconv(x)))``."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        width, k, pad = x.shape[-1], CONVNEXT_KERNEL, CONVNEXT_KERNEL // 2
        h = nn.Conv(width, (k, k), padding=((pad, pad), (pad, pad)), feature_group_count=width, dtype=self.dtype,
                    name="Conv_0")(x)
        h = nn.LayerNorm(epsilon=CONVNEXT_LN_EPS, dtype=self.dtype, name="LayerNorm_0")(h)
        h = ConvNeXtMlp(dtype=self.dtype, name="MLP_0")(h)
        scale = self.param("lambda", lambda key: LAYER_SCALE_INIT * jnp.ones((width,), jnp.float32))
        return x + h * scale.astype(h.dtype)


class Downsample(nn.Module):
    """open_clip_jax's ``PatchEmbed`` with ``norm_first``: LayerNorm, then a ``patch``-strided conv."""

    width: int
    patch: int
    norm_first: bool
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        norm = nn.LayerNorm(epsilon=CONVNEXT_LN_EPS, name="LayerNorm_0")
        conv = nn.Conv(self.width, (self.patch, self.patch), strides=(self.patch, self.patch), padding="VALID",
                       dtype=self.dtype, name="Conv_0")
        return conv(norm(x)) if self.norm_first else norm(conv(x))


class ConvNeXtStage(nn.Module):
    depth: int
    width: int
    downsample: bool
    dtype: Any = None
    grad_checkpoint: bool = False

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            x = Downsample(self.width, 2, norm_first=True, dtype=self.dtype, name="PatchEmbed_0")(x)
        block = nn.remat(ConvNeXtBlock) if self.grad_checkpoint else ConvNeXtBlock
        for j in range(self.depth):
            x = block(dtype=self.dtype, name=f"ConvNeXtBlock_{j}")(x)
        return x


class ConvNeXtTower(nn.Module):
    """NHWC images -> pooled features of width ``cfg.embed_dim``."""

    cfg: ConvNeXtConfig
    dtype: Any = None
    grad_checkpoint: bool = False  # rematerialise each block in the backward pass (same variables)

    @nn.compact
    def __call__(self, images):
        c = self.cfg
        x = Downsample(c.out_dims[0], CONVNEXT_STEM, norm_first=False, dtype=self.dtype, name="PatchEmbed_0")(images)
        for i, (depth, width) in enumerate(zip(c.depths, c.out_dims)):
            x = ConvNeXtStage(depth, width, downsample=i > 0, dtype=self.dtype, grad_checkpoint=self.grad_checkpoint,
                              name=f"ConvNeXtStage_{i}")(x)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(-3, -2)).astype(x.dtype)
        pooled = nn.LayerNorm(epsilon=CONVNEXT_LN_EPS, dtype=self.dtype, name="LayerNorm_0")(pooled)
        if c.head_hidden_dim:
            pooled = gelu(nn.Dense(c.head_hidden_dim, dtype=self.dtype, name="Dense_0")(pooled))
        return pooled
