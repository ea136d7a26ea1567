"""Issue 18 §5: the JAX engine's InfoNCE and SigLIP equal clipzoo's torch objectives on the same features."""
from __future__ import annotations

import math

import numpy as np
import pytest

jnp = pytest.importorskip("jax.numpy")
torch = pytest.importorskip("torch")

from clipzoo.train.jax.losses import infonce, siglip  # noqa: E402
from clipzoo.train.losses.infonce import InfoNCELoss  # noqa: E402
from clipzoo.train.losses.siglip import SigLIPLoss  # noqa: E402


def _features(n=12, d=16, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, d)).astype(np.float32)
    txt = (img + 1.5 * rng.normal(size=(n, d))).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt


@pytest.mark.parametrize("scale,bias", [(14.3, None), (100.0, None), (7.0, -2.5)])
def test_jax_infonce_equals_torch_infonce(scale, bias):
    img, txt = _features()
    ours = float(infonce(jnp.asarray(img), jnp.asarray(txt), jnp.float32(scale),
                         None if bias is None else jnp.float32(bias)))
    ref = float(InfoNCELoss()(torch.from_numpy(img), torch.from_numpy(txt), logit_scale=scale,
                              logit_bias=bias)["loss"])
    assert ours == pytest.approx(ref, abs=1e-5)
    assert ours > 0.1  # a real loss, not a degenerate zero


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (35.0, -4.0), (3.0, None)])
def test_jax_siglip_equals_torch_siglip(scale, bias):
    img, txt = _features(n=9, seed=1)
    ours = float(siglip(jnp.asarray(img), jnp.asarray(txt), jnp.float32(scale),
                        None if bias is None else jnp.float32(bias)))
    ref = float(SigLIPLoss()(torch.from_numpy(img), torch.from_numpy(txt), logit_scale=scale,
                             logit_bias=bias)["loss"])
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_jax_infonce_is_open_clip_jax_clip_loss():
    """open_clip_jax's clip_loss takes the image side already multiplied by exp(temp): same value."""
    import optax

    img, txt = _features(n=8, seed=2)
    temp = 2.6593
    scaled = math.exp(temp) * img
    labels = np.arange(8)
    logits = scaled @ txt.T
    ref = np.mean(np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels)
                             + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels))) / 2
    assert float(infonce(jnp.asarray(img), jnp.asarray(txt), jnp.exp(jnp.float32(temp)))) == pytest.approx(
        float(ref), abs=1e-5)
