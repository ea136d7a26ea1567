"""The JAX engine's ResNet image tower: its config and variable shapes (no JAX needed).

open_clip's ``ModifiedResNet`` (OpenAI's RN50 family: a 3-conv stem, anti-aliased bottlenecks, an attention
pool) — not one of open_clip_jax's towers; clipzoo's own, so that the tiny-shapes recipe trains the same
model under ``--engine jax`` as under torch. JSON form of the image tower:
``{"layers": [1, 1, 1, 1], "width": 16[, "heads": 8]}`` (``heads`` defaults to open_clip's ``width * 32 // 64``).
The attention pool's output is the image projection (``proj_dim`` wide), so the model has no ``Dense_0``.

Variables: ``params`` and ``batch_stats`` (the BatchNorms' running mean and variance), under
``image_model/``: ``conv1 bn1 conv2 bn2 conv3 bn3`` (the stem), ``layer{i}_{j}/{conv1 bn1 conv2 bn2 conv3 bn3
[downsample_conv downsample_bn]}`` and ``attnpool/{positional_embedding, q_proj, k_proj, v_proj, c_proj}`` —
open_clip's names, so the conversion is a transpose per tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ResNetConfig", "resnet_config", "resnet_shapes", "resnet_stat_shapes", "resnet_blocks",
           "RESNET_REDUCTION", "RESNET_EXPANSION", "RESNET_HEAD_WIDTH"]

RESNET_REDUCTION = 32  # input side / attention-pool grid side
RESNET_EXPANSION = 4  # a bottleneck's output width / its inner width
RESNET_HEAD_WIDTH = 64  # open_clip's default head_width: heads = width * 32 // 64


@dataclass(frozen=True)
class ResNetConfig:
    layers: tuple[int, ...]
    width: int
    heads: int

    @property
    def embed_dim(self) -> int:
        """The trunk's output width (what the attention pool attends over)."""
        return self.width * RESNET_REDUCTION

    def as_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "width": self.width, "heads": self.heads}


def resnet_config(image: dict[str, Any]) -> ResNetConfig:
    """``{"layers", "width"[, "heads"]}`` -> a :class:`ResNetConfig` (TypeError when malformed)."""
    image = dict(image)
    layers = tuple(int(n) for n in image.pop("layers"))
    width = int(image.pop("width"))
    heads = int(image.pop("heads", width * RESNET_REDUCTION // RESNET_HEAD_WIDTH))
    if image:
        raise TypeError(f"unexpected ResNet field(s) {', '.join(sorted(image))}")
    if len(layers) != 4 or min(layers) < 1 or width < 2 or width % 2:
        raise TypeError("a ResNet needs 4 stages of at least one block (layers) and an even width")
    if heads < 1 or (width * RESNET_REDUCTION) % heads:
        raise TypeError(f"the attention pool's width {width * RESNET_REDUCTION} is not divisible by heads {heads}")
    return ResNetConfig(layers, width, heads)


def resnet_blocks(c: ResNetConfig) -> list[tuple[str, int, int, int]]:
    """Every bottleneck: ``(name, in width, inner width, stride)`` in order."""
    out, inplanes = [], c.width
    for i, depth in enumerate(c.layers):
        planes = c.width * 2 ** i
        for j in range(depth):
            out.append((f"layer{i + 1}_{j}", inplanes, planes, 2 if (i and not j) else 1))
            inplanes = planes * RESNET_EXPANSION
    return out


def _stem(c: ResNetConfig) -> list[tuple[str, int, int, int]]:
    """``(conv name, in, out, kernel)`` of the stem; each conv's BatchNorm is ``bn`` + its number."""
    half = c.width // 2
    return [("conv1", 3, half, 3), ("conv2", half, half, 3), ("conv3", half, c.width, 3)]


def _convs(c: ResNetConfig) -> list[tuple[str, str, int, int, int]]:
    """Every ``(conv path, its BatchNorm's path, in, out, kernel)`` of the trunk."""
    v = "image_model"
    out = [(f"{v}/{conv}", f"{v}/bn{conv[-1]}", n_in, n_out, k) for conv, n_in, n_out, k in _stem(c)]
    for name, inplanes, planes, stride in resnet_blocks(c):
        b = f"{v}/{name}"
        out += [(f"{b}/conv1", f"{b}/bn1", inplanes, planes, 1), (f"{b}/conv2", f"{b}/bn2", planes, planes, 3),
                (f"{b}/conv3", f"{b}/bn3", planes, planes * RESNET_EXPANSION, 1)]
        if stride > 1 or inplanes != planes * RESNET_EXPANSION:
            out.append((f"{b}/downsample_conv", f"{b}/downsample_bn", inplanes, planes * RESNET_EXPANSION, 1))
    return out


def resnet_shapes(c: ResNetConfig, proj_dim: int, image_size: int) -> dict[str, tuple[int, ...]]:
    """Every ``params`` path of the tower -> its shape (Flax layouts: conv kernels HWIO, dense (in, out))."""
    shapes: dict[str, tuple[int, ...]] = {}
    for conv, bn, n_in, n_out, k in _convs(c):
        shapes.update({f"{conv}/kernel": (k, k, n_in, n_out), f"{bn}/scale": (n_out,), f"{bn}/bias": (n_out,)})
    d, grid = c.embed_dim, image_size // RESNET_REDUCTION
    pool = "image_model/attnpool"
    shapes[f"{pool}/positional_embedding"] = (grid * grid + 1, d)
    for name in ("q_proj", "k_proj", "v_proj"):
        shapes.update({f"{pool}/{name}/kernel": (d, d), f"{pool}/{name}/bias": (d,)})
    shapes.update({f"{pool}/c_proj/kernel": (d, proj_dim), f"{pool}/c_proj/bias": (proj_dim,)})
    return shapes


def resnet_stat_shapes(c: ResNetConfig) -> dict[str, tuple[int, ...]]:
    """Every ``batch_stats`` path -> its shape (``mean`` and ``var`` of each BatchNorm)."""
    return {f"{bn}/{s}": (n_out,) for _, bn, _, n_out, _ in _convs(c) for s in ("mean", "var")}


def batchnorm_paths(c: ResNetConfig) -> list[str]:
    """The BatchNorms' paths (``image_model/bn1``, ``image_model/layer1_0/bn1``, …), in order."""
    return [bn for _, bn, _, _, _ in _convs(c)]


def conv_paths(c: ResNetConfig) -> list[str]:
    return [conv for conv, _, _, _, _ in _convs(c)]
