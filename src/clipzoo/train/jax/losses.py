"""The JAX engine's objectives, on L2-normalised features and the logit scale (the multiplier), in fp32.

Each equals the torch objective of the same name (:mod:`clipzoo.train.losses`) on the same inputs:

* :func:`infonce` — ``(CE(s·X Yᵀ, diag) + CE(s·Y Xᵀ, diag)) / 2`` (open_clip's ``ClipLoss``; open_clip_jax's
  ``clip_loss`` when ``X`` is already multiplied by the scale), plus ``logit_bias`` when given;
* :func:`siglip` — ``-Σᵢⱼ log σ(zᵢⱼ (s·xᵢᵀyⱼ + b)) / n`` with ``zᵢᵢ = 1``, ``-1`` elsewhere (open_clip's
  ``SigLipLoss``).

Written for the global batch: under the data-parallel mesh the features are sharded and XLA gathers them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["infonce", "siglip", "LOSSES"]


def infonce(image_features, text_features, logit_scale, logit_bias=None):
    img = image_features.astype(jnp.float32)
    txt = text_features.astype(jnp.float32)
    per_image = logit_scale * img @ txt.T
    if logit_bias is not None:
        per_image = per_image + logit_bias
    labels = jnp.arange(per_image.shape[0])
    li = optax.softmax_cross_entropy_with_integer_labels(per_image, labels).mean()
    lt = optax.softmax_cross_entropy_with_integer_labels(per_image.T, labels).mean()
    return (li + lt) / 2


def siglip(image_features, text_features, logit_scale, logit_bias=None):
    img = image_features.astype(jnp.float32)
    txt = text_features.astype(jnp.float32)
    logits = logit_scale * img @ txt.T
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = 2 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1
    return -jax.nn.log_sigmoid(labels * logits).sum() / img.shape[0]


LOSSES = {"infonce": infonce, "siglip": siglip}
