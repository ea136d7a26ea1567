"""The cells shared by the MindSpore CLIP's towers (transformer blocks, k×k convolutions), named as MindSpore-CLIP
names its parameters.

A block is ``ln_1`` (``gamma``/``beta``), ``attn`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``,
``out_proj.bias`` — MindSpore's ``nn.MultiheadAttention`` layout, which is PyTorch's), ``ln_2`` and ``mlp``
(``c_fc``, ``c_proj``). Attention is written out with plain ops on batch-first tensors, in the order PyTorch
computes it (project, scale the queries, softmax, weighted sum, project), so that fp32 features agree with
open_clip's to rounding. Every cell runs in PyNative and in Graph mode.
"""
from __future__ import annotations

from collections import OrderedDict

from ..extras import require

ms = require("mindspore", "the MindSpore engine")
nn = require("mindspore.nn", "the MindSpore engine")
ops = require("mindspore.ops", "the MindSpore engine")

LN_EPS = 1e-5
QUICK_GELU = 1.702


def zeros(*shape: int):
    """A zero-filled fp32 Parameter (weights are always loaded afterwards; random init would only cost time)."""
    return ms.Parameter(ms.common.initializer.initializer("zeros", shape, ms.float32))


class UnfoldConv2d(nn.Conv2d):
    """``nn.Conv2d`` (the same ``weight``, the same layout and checkpoint names) computed as im2col + one matmul.

    MindSpore's CPU kernel for a k×k convolution is slow: 64 → 64 channels, 3×3, on 2 × 56 × 56 took 750 ms
    (a 1×1 one of that size 4 ms); ``ops.unfold`` + ``ops.matmul`` take 35 ms and agree to float rounding
    (relative 1e-6). The ResNet's 3×3 convolutions and a ViT's patch embedding (kernel = stride = patch) use
    it; gradients flow through both ops, so training does too. Square kernels, ``pad_mode`` "pad" or "valid",
    no dilation or groups."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.pad_mode not in ("pad", "valid") or self.group != 1 or tuple(self.dilation)[-2:] != (1, 1):
            raise ValueError(f"UnfoldConv2d takes pad_mode 'pad' or 'valid' without dilation or groups, got "
                             f"pad_mode={self.pad_mode!r}, dilation={self.dilation}, group={self.group}")

    def construct(self, x):
        n, _, h, w = x.shape
        k, s, p = self.kernel_size[0], self.stride[0], self.padding
        p = p if isinstance(p, int) else p[0]
        cols = ops.unfold(x, kernel_size=k, padding=p, stride=s)  # (n, c·k·k, rows · columns)
        y = ops.matmul(ops.cast(self.weight, x.dtype).reshape(self.out_channels, -1), cols)  # fp16 under to_float
        return y.reshape(n, self.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)


def layer_norm(width: int):
    return nn.LayerNorm((width,), begin_norm_axis=-1, begin_params_axis=-1, epsilon=LN_EPS)


def dense(d_in: int, d_out: int):
    return nn.Dense(d_in, d_out, weight_init="zeros", bias_init="zeros")


class QuickGELU(nn.Cell):
    """OpenAI's activation, ``x * sigmoid(1.702 x)``."""

    def construct(self, x):
        return x * ops.sigmoid(QUICK_GELU * x)


def activation(quick_gelu: bool):
    return QuickGELU() if quick_gelu else nn.GELU(approximate=False)


class Attention(nn.Cell):
    """Multi-head self-attention with a packed input projection (batch-first: ``(N, L, W)``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.in_proj_weight = zeros(3 * width, width)
        self.in_proj_bias = zeros(3 * width)
        self.out_proj = dense(width, width)
        self.width, self.heads, self.head_dim = width, heads, width // heads
        self.scale = float(self.head_dim) ** -0.5

    def split_heads(self, x):
        n, length, _ = x.shape
        return x.reshape(n, length, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, x, mask=None):
        n, length, width = x.shape
        qkv = ops.matmul(x, self.in_proj_weight.T.astype(x.dtype)) + self.in_proj_bias.astype(x.dtype)  # fp16 cells
        q, k, v = ops.split(qkv, width, axis=-1)
        q = self.split_heads(q) * self.scale
        scores = ops.matmul(q, self.split_heads(k).transpose(0, 1, 3, 2))
        if mask is not None:
            scores = scores + mask
        weights = ops.softmax(scores, axis=-1)
        out = ops.matmul(weights, self.split_heads(v)).transpose(0, 2, 1, 3).reshape(n, length, width)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Cell):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = layer_norm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = layer_norm(width)
        self.mlp = nn.SequentialCell(OrderedDict([("c_fc", dense(width, hidden)), ("gelu", activation(quick_gelu)),
                                                  ("c_proj", dense(hidden, width))]))

    def construct(self, x, mask=None):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Cell):
    """``resblocks.{i}``: a stack of pre-norm residual attention blocks (batch-first)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu)
                                      for _ in range(layers)])

    def construct(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


def causal_mask(length: int):
    """``(L, L)`` additive mask: 0 on and below the diagonal, -inf above (OpenAI's text transformer)."""
    import numpy as np

    mask = np.triu(np.full((length, length), -np.inf, dtype=np.float32), 1)
    return ms.Tensor(mask)
