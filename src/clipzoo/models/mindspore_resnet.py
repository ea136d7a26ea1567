"""OpenAI's ModifiedResNet image tower as MindSpore cells, with MindSpore-CLIP's parameter names.

Batch norms are ``nn.BatchNorm2d`` (``gamma``, ``beta``, ``moving_mean``, ``moving_variance``); a block's shortcut
is ``downsample.0`` (1x1 conv) and ``downsample.1`` (batch norm) after an unnamed average pool, as in OpenAI's
``("-1", AvgPool2d), ("0", Conv2d), ("1", BatchNorm2d)``. The attention pool keeps ``q_proj``/``k_proj``/
``v_proj``/``c_proj`` and its ``positional_embedding``. Call ``set_train(False)`` for inference (running stats).
"""
from __future__ import annotations

from collections import OrderedDict

from ..extras import require
from .mindspore_layers import UnfoldConv2d, dense, zeros

ms = require("mindspore", "the MindSpore engine")
nn = require("mindspore.nn", "the MindSpore engine")
ops = require("mindspore.ops", "the MindSpore engine")

BN_EPS = 1e-5
EXPANSION = 4


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1):
    pad = kernel // 2
    cls = UnfoldConv2d if kernel > 1 else nn.Conv2d
    return cls(c_in, c_out, kernel, stride=stride, pad_mode="pad" if pad else "valid", padding=pad,
               has_bias=False, weight_init="zeros")


def batch_norm(channels: int):
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def avg_pool(stride: int):
    return nn.AvgPool2d(kernel_size=stride, stride=stride) if stride > 1 else nn.Identity()


class Bottleneck(nn.Cell):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * EXPANSION
        self.conv1, self.bn1, self.relu1 = conv(inplanes, planes, 1), batch_norm(planes), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = conv(planes, planes, 3), batch_norm(planes), nn.ReLU()
        self.avgpool = avg_pool(stride)
        self.conv3, self.bn3, self.relu3 = conv(planes, out, 1), batch_norm(out), nn.ReLU()
        self.has_downsample = stride > 1 or inplanes != out
        if self.has_downsample:
            self.downsample = nn.SequentialCell(OrderedDict([("pool", avg_pool(stride)), ("0", conv(inplanes, out, 1)),
                                                             ("1", batch_norm(out))]))

    def construct(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = self.downsample(x) if self.has_downsample else x
        return self.relu3(out + identity)


class AttentionPool2d(nn.Cell):
    """QKV attention of the mean token over the feature map (the ResNet's pooling); batch-first."""

    def __init__(self, spacial_dim: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = zeros(spacial_dim ** 2 + 1, embed_dim)
        self.k_proj, self.q_proj, self.v_proj = (dense(embed_dim, embed_dim) for _ in range(3))
        self.c_proj = dense(embed_dim, output_dim)
        self.heads, self.head_dim = heads, embed_dim // heads
        self.scale = float(self.head_dim) ** -0.5

    def construct(self, x):
        n, c, h, w = x.shape
        x = x.reshape(n, c, h * w).transpose(0, 2, 1)  # (N, HW, C)
        x = ops.cat([x.mean(axis=1, keep_dims=True), x], axis=1) + self.positional_embedding
        q = self.q_proj(x[:, :1]).reshape(n, 1, self.heads, self.head_dim).transpose(0, 2, 1, 3) * self.scale
        k = self.k_proj(x).reshape(n, h * w + 1, self.heads, self.head_dim).transpose(0, 2, 3, 1)
        v = self.v_proj(x).reshape(n, h * w + 1, self.heads, self.head_dim).transpose(0, 2, 1, 3)
        weights = ops.softmax(ops.matmul(q, k), axis=-1)
        out = ops.matmul(weights, v).transpose(0, 2, 1, 3).reshape(n, c)
        return self.c_proj(out)


class ModifiedResNet(nn.Cell):
    """Three-conv stem with an average pool, anti-aliased strided blocks, attention pooling."""

    def __init__(self, layers, output_dim: int, heads: int, image_size: int = 224, width: int = 64):
        super().__init__()
        self.output_dim, self.image_size = output_dim, image_size
        half = width // 2
        self.conv1, self.bn1, self.relu1 = conv(3, half, 3, stride=2), batch_norm(half), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = conv(half, half, 3), batch_norm(half), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = conv(half, width, 3), batch_norm(width), nn.ReLU()
        self.avgpool = avg_pool(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1):
        cells = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * EXPANSION
        cells += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.SequentialCell(cells)

    def construct(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
