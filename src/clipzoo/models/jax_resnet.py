"""open_clip's ``ModifiedResNet`` image tower in Flax (linen): the JAX engine's ResNet (see
:mod:`clipzoo.models.jax_resnet_config` for its config and variable names).

BatchNorm as torch's ``BatchNorm2d`` (eps 1e-5, running averages with momentum 0.1, i.e. Flax's 0.9): in
training (``train=True``, ``mutable=["batch_stats"]``) it normalises by the batch's statistics — under the
JAX engine's device mesh that batch is the *global* batch (the step is written for it and XLA all-reduces
the moments), so N devices compute what one device does, like torch's SyncBatchNorm — and updates the
running averages (the variance's unbiased, as torch; :class:`TorchBatchNorm`); in evaluation it uses them.
Initialisation follows open_clip (torch's defaults plus ``ModifiedResNet.init_parameters``): convolutions as torch's
``Conv2d`` (kaiming_uniform with a = sqrt(5), i.e. uniform(±1 / sqrt(fan_in))), each bottleneck's last BatchNorm
at scale 0, the attention pool's projections at normal(std = width ** -0.5) with torch ``Linear``'s bias
(uniform(±1 / sqrt(fan_in))), its positions at normal(std = width ** -0.5).
"""
from __future__ import annotations

from typing import Any

from ..extras import require
from .jax_resnet_config import RESNET_EXPANSION, ResNetConfig, resnet_blocks

jax = require("jax", "the JAX engine")
jnp = require("jax.numpy", "the JAX engine")
nn = require("flax.linen", "the JAX engine")

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # Flax's convention: running = 0.9 * running + 0.1 * batch (torch's momentum 0.1)

__all__ = ["ResNetTower", "TorchBatchNorm", "BN_EPS", "BN_MOMENTUM", "TORCH_DEFAULT_KERNEL", "torch_bias_init"]


# torch's Conv2d / Linear default weight init, kaiming_uniform(a=sqrt(5)): uniform(±1 / sqrt(fan_in))
TORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """torch ``Linear``'s default bias init: uniform(±1 / sqrt(fan_in))."""
    bound = fan_in ** -0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class TorchBatchNorm(nn.Module):
    """torch's ``BatchNorm2d`` over the last (channel) axis, with Flax ``BatchNorm``'s variables (``params``:
    ``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``). Training normalises by the batch's mean and biased
    variance, and updates the running variance with the *unbiased* one (``× n / (n - 1)``), as torch does (Flax's
    ``BatchNorm`` averages the biased one). Computed in fp32."""

    use_running_average: bool = True
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPS
    zero_scale: bool = False

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.zeros if self.zero_scale else nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axis=axes)
            var = jnp.square(x - mean).mean(axis=axes)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * (n / max(n - 1, 1))
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def _bn(train: bool, name: str, zero: bool = False):
    return TorchBatchNorm(use_running_average=not train, zero_scale=zero, name=name)


def _conv(features: int, kernel: int, name: str, dtype, stride: int = 1):
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, dtype=dtype, kernel_init=TORCH_DEFAULT_KERNEL, name=name)


def _pool(x, stride: int):
    return nn.avg_pool(x, (stride, stride), strides=(stride, stride)) if stride > 1 else x


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg pool when strided) -> 1x1 (x4 wide); the shortcut avg-pools then 1x1-projects."""

    inplanes: int
    planes: int
    stride: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        p, out_width = self.planes, self.planes * RESNET_EXPANSION
        h = nn.relu(_bn(train, "bn1")(_conv(p, 1, "conv1", self.dtype)(x)))
        h = nn.relu(_bn(train, "bn2")(_conv(p, 3, "conv2", self.dtype)(h)))
        h = _bn(train, "bn3", zero=True)(_conv(out_width, 1, "conv3", self.dtype)(_pool(h, self.stride)))
        identity = x
        if self.stride > 1 or self.inplanes != out_width:
            identity = _conv(out_width, 1, "downsample_conv", self.dtype)(_pool(x, self.stride))
            identity = _bn(train, "downsample_bn")(identity)
        return nn.relu(h + identity.astype(h.dtype))


class AttentionPool(nn.Module):
    """QKV attention of the mean token (plus positions) over the grid; ``c_proj`` of its output."""

    heads: int
    output_dim: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        n, width = x.shape[0], x.shape[-1]
        x = x.reshape(n, -1, width)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        std = width ** -0.5
        pos = self.param("positional_embedding", lambda key: std * jax.random.normal(key, x.shape[1:], jnp.float32))
        x = x + pos.astype(x.dtype)
        init = nn.initializers.normal(stddev=std)

        def dense(name, features, y):
            return nn.Dense(features, kernel_init=init, bias_init=torch_bias_init(width), dtype=self.dtype,
                            name=name)(y)

        hd = width // self.heads
        q = dense("q_proj", width, x[:, :1]).reshape(n, 1, self.heads, hd) * hd ** -0.5
        k = dense("k_proj", width, x).reshape(n, -1, self.heads, hd)
        v = dense("v_proj", width, x).reshape(n, -1, self.heads, hd)
        weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(n, width)
        return dense("c_proj", self.output_dim, out)


class ResNetTower(nn.Module):
    """NHWC images -> ``output_dim`` features (the attention pool's projection)."""

    cfg: ResNetConfig
    output_dim: int
    dtype: Any = None

    @nn.compact
    def __call__(self, images, train: bool = False):
        c, half = self.cfg, self.cfg.width // 2
        x = images.astype(self.dtype or jnp.float32)
        x = nn.relu(_bn(train, "bn1")(_conv(half, 3, "conv1", self.dtype, stride=2)(x)))
        x = nn.relu(_bn(train, "bn2")(_conv(half, 3, "conv2", self.dtype)(x)))
        x = nn.relu(_bn(train, "bn3")(_conv(c.width, 3, "conv3", self.dtype)(x)))
        x = _pool(x, 2)
        for name, inplanes, planes, stride in resnet_blocks(c):
            x = Bottleneck(inplanes, planes, stride, dtype=self.dtype, name=name)(x, train)
        return AttentionPool(c.heads, self.output_dim, dtype=self.dtype, name="attnpool")(x)
