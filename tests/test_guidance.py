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


# ----------------------------------------------------------------------------- misuse a guidance loop meets
def test_pixels_on_another_scale_are_refused_and_slight_overshoot_is_not(shapes):
    """A 0–255 image passed as float reached the network at ±760 at the model's size and became solid white at
    any other size; a diffusion decoder's [-1, 1] was read as a dark picture. An optimiser's small overshoot is
    still taken."""
    ens = clipzoo.Ensemble([shapes])
    with pytest.raises(BadImageError, match=r"^float image pixels must lie in \[0, 1\]; these span \[200, 200\]; "
                                            r"a 0–255 image is x / 255$"):
        ens.loss(torch.full((1, 3, 64, 64), 200.0), "a red circle")
    with pytest.raises(BadImageError, match=r"span \[-1, 1\]; a \[-1, 1\] image \(a diffusion decoder's output\) "
                                            r"is \(x \+ 1\) / 2$"):
        shapes.encode_image01(torch.linspace(-1, 1, 3 * 65 * 65).view(1, 3, 65, 65))
    slight = torch.rand(1, 3, 64, 64) * 1.2 - 0.1
    assert torch.isfinite(ens.loss(slight, "a red circle"))


def test_a_very_long_image_is_cropped_before_it_is_resized(shapes):
    """A 1 × 20,000 float image was resized whole to 64 × 1,280,000 before the crop (1.9 GB; 1 × 100,000 aborted
    the interpreter): its central 32 : 1 part gives the model the same pixels, as every decode does."""
    x = torch.rand(1, 3, 1, 20_000, generator=torch.Generator().manual_seed(0))
    centre = x[..., (20_000 - 32) // 2:(20_000 - 32) // 2 + 32]
    assert torch.equal(shapes.preprocess01(x), shapes.preprocess01(centre))
    from clipzoo.pixels import resize

    squash = PixelConfig(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear", resize_mode="squash")
    wide = torch.zeros(1, 3, 1, 40)
    wide[..., :4] = 1.0  # a squash model sees the whole image: its left edge was cropped away
    assert torch.equal(preprocess01(wide, squash), resize(wide, (8, 8), "bilinear").clamp(0, 1))
    import subprocess
    import sys

    code = ("import re, torch, clipzoo\n"  # peak RSS of this interpreter (VmHWM: ru_maxrss keeps the parent's)
            "peak = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "m = clipzoo.load('clipzoo/tiny-shapes'); m.preprocess01(torch.rand(1, 3, 64, 64))\n"
            "before = peak(); m.preprocess01(torch.rand(1, 3, 1, 20_000)); print(peak() - before)\n")
    grown_kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  timeout=120).stdout.split()[-1])
    assert grown_kb < 100_000  # was about 1.9 GB


def test_text_features_follow_the_members_weights_and_stay_bounded(tmp_path):
    """Guidance cached each member's text features by prompt for ever: after load_state_dict (a fine-tuned
    checkpoint) loss() scored against the old model's texts, and a prompt schedule grew the cache every step."""
    from clipzoo.guidance import TextFeatureCache
    from clipzoo.testing.tiny import write_open_clip_safetensors

    a = clipzoo.load(str(write_open_clip_safetensors(tmp_path / "a.safetensors", seed=1, embed_config=True)))
    b = clipzoo.load(str(write_open_clip_safetensors(tmp_path / "b.safetensors", seed=2, embed_config=True)))
    ens = clipzoo.Ensemble([a]).freeze()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ens.loss(x, "a red circle", kind="cosine")
    a.load_state_dict(b.state_dict())
    fresh = clipzoo.Ensemble([b]).loss(x, "a red circle", kind="cosine")
    assert float(ens.loss(x, "a red circle", kind="cosine")) == pytest.approx(float(fresh), abs=1e-6)
    # weights written through .data (EMA, weight averaging) and under inference mode bump no version the
    # parameter shows: the features were kept stale
    with torch.no_grad():
        for p in a.parameters():
            p.data.mul_(0.5).add_(0.01)
    fresh = clipzoo.Ensemble([a]).loss(x, "a red circle", kind="cosine")
    assert float(ens.loss(x, "a red circle", kind="cosine")) == pytest.approx(float(fresh), abs=1e-6)
    with torch.inference_mode():
        c = clipzoo.load(str(tmp_path / "a.safetensors"))
        inference = TextFeatureCache()
        before = inference.features(c, ["a cat"]).clone()
        c.load_state_dict(b.state_dict())
        assert torch.allclose(inference.features(c, ["a cat"]), c.encode_text(["a cat"], truncate=True))
        assert not torch.allclose(before, c.encode_text(["a cat"], truncate=True))
    cache = TextFeatureCache(limit=3)
    for step in range(5):
        cache.features(b, [f"a red circle, step {step}"])
    assert len(cache) == 3


def test_extreme_prompt_weights_and_numpy_numbers(shapes):
    """Prompt weights of 1e39 (float32's inf) or 1e-46 (its 0) passed the checks and made the loss NaN; a numpy
    weight in a bare pair, an integer past float's range and a string min_frac were tracebacks."""
    ens = clipzoo.Ensemble([shapes])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    one = float(ens.loss(x, [("a red circle", 1.0)]))
    for w in (1e39, 1e-46, np.float32(2)):
        assert float(ens.loss(x, [("a red circle", w)])) == pytest.approx(one, abs=1e-6)
    assert float(ens.loss(x, ("a red circle", np.float32(2)))) == pytest.approx(one, abs=1e-6)
    two = float(ens.loss(x, [("a red circle", 2e38), ("a blue square", 2e38)]))
    assert two == pytest.approx(float(ens.loss(x, ["a red circle", "a blue square"])), abs=1e-6)
    from clipzoo.errors import BadOptionError

    with pytest.raises(BadOptionError, match=r"^prompt 0's weight is past float's range \(401 digits\)$"):
        ens.loss(x, [("a", 10 ** 400)])
    with pytest.raises(BadOptionError, match=r"^min_frac must be a number in \(0, 1\], got '0.5'$"):
        ens.loss(x, "a", cutouts=1, min_frac="0.5")
    with pytest.raises(BadOptionError, match=r"^weights must be a list of numbers, one per model; got 2$"):
        clipzoo.Ensemble([shapes], weights=2)
    with pytest.raises(ClipzooError, match=r"^no model 9 in this ensemble of 1; it has: "):
        ens[9]
    with pytest.raises(BadOptionError, match=r"not True"):
        ens[True]
