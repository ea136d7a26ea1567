"""The guidance path as a hostile user meets it: HF processors' size forms, runtimes without gradients, long
prompts, half-precision cutouts, dict prompts and arguments of the wrong kind."""
from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import clipzoo
from clipzoo.errors import BadOptionError, BadTextError, UnsupportedError
from clipzoo.guidance import cutouts, spherical_distance
from clipzoo.pixels import size_fields, size_pair

LONG = "a red circle. " * 3 + "a blue square on a green background with a yellow star in the corner. " * 3


@pytest.fixture(scope="module")
def shapes():
    return clipzoo.load("clipzoo/tiny-shapes")


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Tiny transformers folders, one per size form of an HF image processor."""
    pytest.importorskip("transformers")
    from clipzoo.testing import tiny_hf, tiny_hf_families

    root = tmp_path_factory.mktemp("hf")
    writers = {"siglip": tiny_hf.write_siglip, "clip": tiny_hf.write_clip,
               "chinese_clip": tiny_hf.write_chinese_clip, "align": tiny_hf_families.write_align}
    return {name: clipzoo.load(str(write(root / name, seed=3))) for name, write in writers.items()}


def _to01(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)


def _smooth(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(np.sin(xx / 9) + 1) * 120, (np.cos(yy / 7) + 1) * 120, ((xx + yy) % 50) * 5],
                    -1).astype(np.uint8)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


# ----------------------------------------------------------------------------- 1. HF processors' sizes
def test_size_forms_of_any_mapping_and_transformers_sizedict():
    SizeDict = pytest.importorskip("transformers.image_utils").SizeDict

    assert not isinstance(SizeDict(height=3, width=4), dict)  # what `isinstance(size, dict)` missed
    assert size_pair(SizeDict(height=24, width=40)) == (24, 40)
    assert size_pair(SizeDict(shortest_edge=32)) == (32, 32)
    assert size_pair(types.MappingProxyType({"height": 5, "width": 7})) == (5, 7)
    assert size_pair({"shortest_edge": 9}) == (9, 9) and size_pair((3, 4)) == (3, 4) and size_pair(6) == (6, 6)
    assert size_pair(SizeDict(longest_edge=50)) is None
    assert size_fields(SizeDict(height=2, width=3)) == {"height": 2, "width": 3} and size_fields(12) is None


def test_siglip_squashes_a_non_square_image_as_its_processor_does(hf_models):
    """transformers' SiglipImageProcessor holds a SizeDict: the [0, 1] path read the model as 'shortest' and
    centre-cropped a 32 × 96 image whose left third is red, so guidance and Ensemble.compare of float tensors saw
    another picture (cosine 0.34 to the PIL path)."""
    m = hf_models["siglip"]
    assert type(m.transform.image_processor.size).__name__ == "SizeDict"
    arr = (np.random.default_rng(0).random((32, 96, 3)) * 255).astype(np.uint8)
    arr[:, :32] = [255, 0, 0]
    pil, x01 = Image.fromarray(arr), _to01(arr)
    ours, theirs = m.preprocess01(x01)[0], m.preprocess(pil)
    assert float(ours[0, :, :5].mean()) == pytest.approx(1.0, abs=1e-3)  # the red third is still there: no crop
    assert float(ours[1, :, :5].mean()) == pytest.approx(-1.0, abs=1e-3)
    assert float((ours - theirs).abs().max()) < 0.01  # interpolation detail only (was 2.0)
    assert _cos(m.encode_image01(x01), m.encode_image(pil)) >= 0.999
    ens = clipzoo.Ensemble([m])  # a float tensor given to an ensemble is a [0, 1] image: the same picture
    texts = ["a red circle", "a blue square"]
    assert torch.allclose(ens.compare(image=x01, text=texts).similarity,
                          ens.compare(image=[pil], text=texts).similarity, atol=5e-3)
    assert (m.pixel_config.resize_mode, m.pixel_config.size, m.pixel_config.resize_to) == ("squash", (32, 32), None)


@pytest.mark.parametrize("name, mode, resize_to", [("clip", "shortest", None), ("chinese_clip", "squash", None),
                                                   ("align", "squash", (41, 41))])
def test_other_hf_processor_size_forms_match_their_pil_path(hf_models, name, mode, resize_to):
    """{shortest_edge} + crop_size (CLIP), {height, width} squashed (Chinese-CLIP, do_center_crop False) and
    {height: 41, width: 41} squashed then cropped to 32 (the tiny ALIGN's EfficientNet processor, whose
    rescale_offset and include_top fold into the mean and std): a non-square [0, 1] image reaches the model as
    the processor hands it a PIL image."""
    m = hf_models[name]
    arr = _smooth(40, 120)
    ours, theirs = m.preprocess01(_to01(arr))[0], m.preprocess(Image.fromarray(arr))
    spread = float(theirs.max() - theirs.min())
    assert float((ours - theirs).abs().mean()) < 0.01 * spread, (name, float((ours - theirs).abs().mean()))
    assert _cos(m.encode_image01(_to01(arr)), m.encode_image(Image.fromarray(arr))) >= 0.999
    assert (m.pixel_config.resize_mode, m.pixel_config.size, m.pixel_config.resize_to) == (mode, (32, 32), resize_to)


def test_align_rescale_offset_and_include_top_fold_into_mean_and_std(hf_models):
    m = hf_models["align"]
    proc = m.transform.image_processor
    assert (proc.rescale_offset, proc.include_top, tuple(proc.image_std)) == (True, True, (0.5, 0.5, 0.5))
    # (x − 1 − 0.5) / 0.5 / 0.5 on [0, 1] pixels: mean 1.5, std 0.25
    assert m.pixel_config.mean == (1.5, 1.5, 1.5) and m.pixel_config.std == (0.25, 0.25, 0.25)
    flat = np.full((32, 32, 3), 51, np.uint8)
    assert torch.allclose(m.preprocess01(_to01(flat))[0], m.preprocess(Image.fromarray(flat)), atol=1e-5)


# ----------------------------------------------------------------------------- 2. runtimes without gradients
def test_a_runtime_without_gradients_refuses_the_guidance_path(tmp_path):
    """An ONNX member's encode_image01 returned features without a graph: in a mixed ensemble its weight
    silently left the gradient (the gradient was half the other member's alone), and alone backward() died
    inside torch."""
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    pytest.importorskip("onnxruntime")
    folder = str(write_open_clip_hub_folder(tmp_path / "tiny32", seed=2))
    onnx = clipzoo.load(folder, runtime="onnx", cache_dir=tmp_path / "cache")
    eager = clipzoo.load(folder)
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    said = (rf"^\[clip - local - {folder}\] runs in onnxruntime, which computes no gradients; load the PyTorch "
            r"model \(clipzoo.load without runtime='onnx'\) to backpropagate, or pass a tensor that does not "
            r"require grad$")
    with pytest.raises(UnsupportedError, match=said):
        onnx.encode_image(onnx.preprocess01(x.clone().requires_grad_(True)))
    with pytest.raises(UnsupportedError, match=said):
        onnx.encode_image01(x.clone().requires_grad_(True))
    with pytest.raises(UnsupportedError, match=said):
        clipzoo.Ensemble([onnx, eager]).loss(x.clone().requires_grad_(True), "a red circle")
    with pytest.raises(UnsupportedError, match=said):
        clipzoo.Ensemble([eager, onnx]).compare(image=x.clone().requires_grad_(True), text=["a red circle"])
    # without a graph asked for, it scores [0, 1] images as the eager model does
    assert _cos(onnx.encode_image01(x), eager.encode_image01(x)) > 0.9999
    with torch.no_grad():
        assert _cos(onnx.encode_image01(x.clone().requires_grad_(True)), eager.encode_image01(x)) > 0.9999
    loss = clipzoo.Ensemble([onnx, eager]).loss(x, "a red circle")
    assert float(loss) == pytest.approx(float(clipzoo.Ensemble([eager, eager]).loss(x, "a red circle")), abs=1e-4)


# ----------------------------------------------------------------------------- 3. long prompts
def test_a_long_prompt_follows_the_models_long_text_policy(shapes):
    """The text cache encoded with truncate=True: a 59-token prompt was cut to the 24-token context without a
    word, and a model loaded with long_text='chunks' was not honoured (compare was)."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    said = (r"^text 'a red circle\. a red circle\. a red circle\. a blue square o\.\.\.' is 59 tokens, longer "
            r"than the model's context length 24; shorten it, pass truncate=True where the call takes it, or load "
            r"the model with long_text='truncate' or 'chunks'$")
    with pytest.raises(BadTextError, match=said):
        clipzoo.Ensemble([shapes]).loss(x, ["a red circle", LONG])
    with pytest.raises(BadTextError, match=said):  # what compare says
        clipzoo.Ensemble([shapes]).compare(image=x, text=["a red circle", LONG])
    chunks = clipzoo.load("clipzoo/tiny-shapes", long_text="chunks")
    ens = clipzoo.Ensemble([chunks])
    expected = float(spherical_distance(chunks.encode_image01(x), chunks.encode_text([LONG])))
    cut = float(spherical_distance(chunks.encode_image01(x), chunks.encode_text([LONG], truncate=True)))
    assert float(ens.loss(x, LONG)) == pytest.approx(expected, abs=1e-6) and abs(expected - cut) > 0.1
    chunks.long_text = "truncate"  # a change of policy drops the member's cached prompts
    assert float(ens.loss(x, LONG)) == pytest.approx(cut, abs=1e-6)


# ----------------------------------------------------------------------------- 4. half-precision cutouts
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cutouts_of_half_precision_images_compute_in_float32(shapes, dtype):
    """torch has no fp16 / bf16 antialiased resize on the CPU: cutouts raised NotImplementedError
    ('compute_index_ranges_weights' not implemented for 'Half'), while the whole-image path took them."""
    x32 = torch.rand(1, 3, 80, 96, generator=torch.Generator().manual_seed(1))
    x = x32.to(dtype).requires_grad_(True)
    crops = cutouts(x, 3, 64, generator=torch.Generator().manual_seed(0))
    assert crops.dtype == torch.float32 and crops.shape == (3, 3, 64, 64)
    same = cutouts(x.detach().float(), 3, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(crops.detach(), same)
    ens = clipzoo.Ensemble([shapes])
    loss = ens.loss(x, "a red circle", cutouts=4, augment=True, generator=torch.Generator().manual_seed(2))
    ref = ens.loss(x.detach().float(), "a red circle", cutouts=4, augment=True,
                   generator=torch.Generator().manual_seed(2))
    assert float(loss.detach()) == pytest.approx(float(ref), abs=1e-6)
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all() and grad.float().abs().sum() > 0


# ----------------------------------------------------------------------------- 5. a dict of prompts
def test_a_dict_of_prompts_is_its_text_weight_items(shapes):
    """Iterating {'a red circle': 1, 'a blue square': -1} gave the keys: the −1 ('not this') became +1 and the
    image was pulled toward the negative prompt, with no error."""
    ens = clipzoo.Ensemble([shapes])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    pairs = float(ens.loss(x, [("a red circle", 1), ("a blue square", -1)]))
    assert float(ens.loss(x, {"a red circle": 1, "a blue square": -1})) == pytest.approx(pairs, abs=1e-7)
    proxy = types.MappingProxyType({"a red circle": 1, "a blue square": -1})
    assert float(ens.loss(x, proxy)) == pytest.approx(pairs, abs=1e-7)
    assert abs(pairs - float(ens.loss(x, ["a red circle", "a blue square"]))) > 0.5
    with pytest.raises(BadOptionError, match=r"^prompt 0's weight must be a number, got 'high'$"):
        ens.loss(x, {"a red circle": "high"})


# ----------------------------------------------------------------------------- 6. arguments of the wrong kind
def test_wrong_kinds_of_argument_are_one_line_errors(shapes):
    ens = clipzoo.Ensemble([shapes])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    for prompts, shown in ((None, "None"), (5, "5"), (b"a cat", "b'a cat'")):
        with pytest.raises(BadOptionError, match=r"^prompts must be a string, a list of strings and \(string, weight\) "
                                                 rf"pairs, or a dict {{string: weight}}; got {shown}$"):
            ens.loss(x, prompts)
    with pytest.raises(BadOptionError, match=r"^weights must be a list of numbers, one per model; got 5$"):
        ens.loss(x, "a red circle", weights=5)
    assert float(ens.loss(x, "a red circle", weights=(w for w in [3]))) == pytest.approx(
        float(ens.loss(x, "a red circle")), abs=1e-7)  # any iterable, read once
    with pytest.raises(BadOptionError, match=r"^generator must be a torch.Generator \(torch.Generator\(\)"
                                             r"\.manual_seed\(0\)\), got str 'x'$"):
        ens.loss(x, "a red circle", cutouts=2, generator="x")
    with pytest.raises(BadOptionError, match=r"got int 7$"):
        cutouts(x, 2, 32, generator=7)
    with pytest.raises(BadOptionError, match=r"^Ensemble\(None\): pass models or specs \(a list, or one\), or "
                                             r"nothing for an empty ensemble to add\(\) to$"):
        clipzoo.Ensemble(None)
    with pytest.raises(BadOptionError, match=r"^add\(\) needs a model, a spec or registry filters$"):
        clipzoo.Ensemble().add(None)


def test_augment_or_generator_without_cutouts_is_said_once(shapes):
    """augment= and generator= act on cutouts only: with cutouts=0 they were dropped without a word."""
    ens = clipzoo.Ensemble([shapes])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    plain = float(ens.loss(x, "a red circle"))
    with pytest.warns(UserWarning) as said:
        for _ in range(3):
            assert float(ens.loss(x, "a red circle", augment=True, generator=torch.Generator())) == plain
    assert [str(w.message) for w in said] == [
        "loss(): augment= and generator= are ignored with cutouts=0 (options of the cutouts); pass cutouts=n to "
        "score n random crops per image"]
    assert said[0].filename == __file__  # the user's line, not clipzoo's
    with pytest.warns(UserWarning, match=r"^loss\(\): augment= is ignored with cutouts=0"):
        clipzoo.Ensemble([shapes]).loss(x, "a red circle", augment=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ens2 = clipzoo.Ensemble([shapes])
        ens2.loss(x, "a red circle", cutouts=2, augment=True, generator=torch.Generator().manual_seed(0))
        ens2.loss(x, "a red circle")
