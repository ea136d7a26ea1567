"""Differentiable [0, 1] image path, cutouts and Ensemble.loss (CLIP guidance)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import clipzoo
from clipzoo.errors import BadImageError, ClipzooError
from clipzoo.guidance import PixelConfig, cutouts, preprocess01, spherical_distance


@pytest.fixture(scope="module")
def shapes():
    return clipzoo.load("clipzoo/tiny-shapes")


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    return clipzoo.load(str(write_open_clip_hub_folder(tmp_path_factory.mktemp("t32") / "tiny32", seed=2)))


def _to01(pil):
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)


# ----------------------------------------------------------------------------- the [0, 1] path
def test_encode_image01_matches_the_pil_path(shapes, images):
    from PIL import Image

    square = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert torch.allclose(shapes.encode_image01(_to01(square)), shapes.encode_image(square), atol=1e-5)
    # other sizes: torch's antialiased bicubic vs PIL's, on uint8: the same picture to the model
    for im in images:
        a, b = shapes.encode_image01(_to01(im)), shapes.encode_image(im)
        assert float((a * b).sum()) > 0.98
    # a float tensor given to encode_image still means preprocessed pixels (the rule is unchanged)
    pixels = shapes.preprocess(square).unsqueeze(0)
    assert torch.allclose(shapes.encode_image(pixels), shapes.encode_image(shapes.preprocess01(_to01(square))),
                          atol=1e-5)
    with pytest.raises(BadImageError, match="must be 64x64"):
        shapes.encode_image(torch.rand(1, 3, 50, 50))


def test_preprocess01_resizes_crops_and_normalises():
    cfg = PixelConfig(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = torch.rand(2, 3, 40, 100)
    out = preprocess01(x, cfg)
    assert out.shape == (2, 3, 32, 32) and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    assert preprocess01(torch.full((1, 3, 10, 20), 0.75), cfg).sub(0.5).abs().max() < 1e-5  # (0.75-0.5)/0.5
    squash = preprocess01(x, PixelConfig(size=(16, 24), resize_mode="squash"))
    assert squash.shape == (2, 3, 16, 24)
    with pytest.raises(BadImageError, match=r"\(N, 3, H, W\)"):
        preprocess01(torch.rand(2, 4, 8, 8), cfg)


def test_cutouts_shapes_range_seed_and_gradient():
    x = torch.rand(2, 3, 60, 80, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    c = cutouts(x, 5, 32, min_frac=0.3, augment=True, generator=g)
    assert c.shape == (10, 3, 32, 32) and c.min() >= 0 and c.max() <= 1
    again = cutouts(x, 5, 32, min_frac=0.3, augment=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(c, again)
    other = cutouts(x, 5, 32, min_frac=0.3, augment=True, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(c, other)
    c.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    plain = cutouts(x.detach(), 3, (24, 24), min_frac=1.0)  # full-height crops, no augmentation
    assert plain.shape == (6, 3, 24, 24)


def test_spherical_distance_is_half_the_squared_angle():
    a, b = torch.randn(3, 8), torch.randn(4, 8)
    cos = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
    assert torch.allclose(spherical_distance(a, b), cos.clamp(-1, 1).acos().pow(2) / 2, atol=1e-5)


# ----------------------------------------------------------------------------- Ensemble.loss
def test_loss_gradient_is_finite_and_nonzero_for_two_resolutions(shapes, tiny32):
    assert shapes.image_size == 64 and tiny32.image_size == 32
    ens = clipzoo.Ensemble([shapes, tiny32], weights=[2, 1])
    x = torch.rand(2, 3, 80, 96, requires_grad=True)
    loss = ens.loss(x, ["a red circle", ("a blue square", 0.5)], cutouts=3, augment=True,
                    generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # without cutouts: the per-model formula by hand
    with torch.no_grad():
        loss = ens.loss(x, ["a red circle", ("a blue square", 0.5)])
        expected = 0.0
        for m, w in ((shapes, 2 / 3), (tiny32, 1 / 3)):
            d = spherical_distance(m.encode_image01(x), m.encode_text(["a red circle", "a blue square"])).mean(0)
            expected += w * (d[0] + 0.5 * d[1]) / 1.5
    assert abs(float(loss) - float(expected)) < 1e-5
    cos_loss = ens.loss(x.detach(), "a red circle", kind="cosine")
    assert -1 <= float(cos_loss) <= 1
    with pytest.raises(ClipzooError, match="pass strings or"):
        ens.loss(x, [3])


def test_negative_weight_is_the_opposite_pull(shapes):
    ens = clipzoo.Ensemble([shapes])
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    pos = ens.loss(x, [("a red circle", 1.0)])
    neg = ens.loss(x, [("a red circle", -1.0)])
    assert torch.allclose(neg, -pos)
    g_pos, = torch.autograd.grad(pos, x)
    g_neg, = torch.autograd.grad(neg, x)
    assert torch.allclose(g_neg, -g_pos)


def _optimise(ens, start, prompts, steps, lr=0.2):
    p = torch.logit(start.clamp(0.01, 0.99)).clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ens.loss(torch.sigmoid(p), prompts).backward()
        opt.step()
    return torch.sigmoid(p).detach()


def test_gradient_descent_raises_similarity_to_a_prompt(shapes):
    ens = clipzoo.Ensemble([clipzoo.load("clipzoo/tiny-shapes")]).freeze()  # its own copy, frozen
    text = shapes.encode_text("a red circle")
    start = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = float(shapes.encode_image01(start) @ text.T)
    after_img = _optimise(ens, start, "a red circle", steps=20)
    after = float(shapes.encode_image01(after_img) @ text.T)
    assert after - before > 0.5 and after > 0.5, (before, after)
    # a negative weight, minimised, pushes the score of that prompt down
    away = _optimise(ens, after_img, [("a red circle", -1.0)], steps=5, lr=0.1)
    assert float(shapes.encode_image01(away) @ text.T) < after - 0.1
