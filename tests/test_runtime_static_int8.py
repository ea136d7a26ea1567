"""runtime="onnx-int8-static" (clipzoo.runtime.onnx_static_int8): static QDQ int8, calibrated and cached.

Measured on the embedded clipzoo/tiny-shapes (ModifiedResNet) against eager fp32: min cosine, zero-shot
acc1 on its held-out shapes, and batch independence (a row is the same alone and inside a batch of 32 —
which the dynamic onnx-int8 is not).
"""
from __future__ import annotations

import json

import onnx
import pytest

import clipzoo
from _heldout import heldout_acc1
from clipzoo.backends.onnx_format import META_FILE
from clipzoo.datasets import ShapesDataset, classnames
from clipzoo.errors import ClipzooError
from clipzoo.runtime import normalize_runtime, onnx_static_int8
from clipzoo.runtime.onnx_static_int8 import FLOAT_CONV_SUFFIX, choose, static_int8_folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("static-int8-cache")


FAST_METHODS = ("minmax", "percentile")  # entropy (slower) is covered on the caller's 8 images below
TEST_CALIBRATION_IMAGES = 48  # 32 calibrate, 16 validate: a shorter test


@pytest.fixture(scope="module")
def models(cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_static_int8, "METHODS", FAST_METHODS)
        mp.setattr(onnx_static_int8, "CALIBRATION_IMAGES", TEST_CALIBRATION_IMAGES)
        static = clipzoo.load("clipzoo/tiny-shapes", runtime="onnx-int8-static", cache_dir=cache)
    return clipzoo.load("clipzoo/tiny-shapes"), static


@pytest.fixture(scope="module")
def sample():
    images = [s.image for s in ShapesDataset(32, seed=7, image_size=64, two_object_prob=0.0)]
    texts = [f"a photo of a {c}." for c in classnames("shape_color")[:32]]
    return images, texts


def test_issue22_static_int8_min_cosine_0995(models, sample):
    ref, m = models
    images, texts = sample
    assert m.runtime == "onnx-int8-static" and normalize_runtime("ONNX_INT8_STATIC") == "onnx-int8-static"
    cos_image = (m.encode_image(images) * ref.encode_image(images)).sum(-1).min().item()
    cos_text = (m.encode_text(texts) * ref.encode_text(texts)).sum(-1).min().item()
    print(f"static int8: min cosine image {cos_image:.5f} text {cos_text:.5f}")
    assert cos_image >= 0.995 and cos_text >= 0.995, (cos_image, cos_text)


def test_issue22_static_int8_runs_integer_kernels(models, tmp_path):
    """The weight MatMuls / Gemms run as ONNX Runtime's integer kernels (MatMulIntegerToFloat, QGemm — VNNI / AMX
    through MLAS), not as dequantised float matmuls: what makes static int8 faster than fp32."""
    import onnxruntime as ort

    folder = models[1].model.folder
    ops = {}
    for tower in ("image", "text"):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{tower}-optimised.onnx")
        ort.InferenceSession(str(folder / f"{tower}.onnx"), options, providers=["CPUExecutionProvider"])
        ops[tower] = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    text_int = sum(op in ("MatMulIntegerToFloat", "QGemm", "DynamicQuantizeMatMul") for op in ops["text"])
    assert text_int >= 4 and "MatMulIntegerToFloat" in ops["text"], sorted(set(ops["text"]))
    assert "QLinearConv" in ops["image"] or "MatMulIntegerToFloat" in ops["image"], sorted(set(ops["image"]))


def test_issue22_static_int8_batch_independence(models, sample, cache):
    _, m = models
    images, texts = sample
    for encode, items in ((m.encode_image, images), (m.encode_text, texts)):
        alone = encode(items[5:6])
        batch = encode(items[:32], batch_size=32)
        assert (alone[0] - batch[5]).abs().max().item() <= 1e-6
    # the dynamic int8 quantises activations per batch: its row moves with the batch
    dynamic = clipzoo.load("clipzoo/tiny-shapes", runtime="onnx-int8", cache_dir=cache)
    moved = (dynamic.encode_text(texts[5:6])[0] - dynamic.encode_text(texts[:32], batch_size=32)[5]).abs().max()
    assert moved.item() > 1e-6


def test_issue22_static_int8_zero_shot_within_half_a_point(models, tmp_path):
    from clipzoo.datasets.readers import open_dataset

    ref, m = models
    acc, held = heldout_acc1(models, tmp_path / "held")
    print(f"zero-shot acc1 fp32 {acc[0]:.4f} static int8 {acc[1]:.4f}")
    assert abs(acc[0] - acc[1]) <= 0.005, acc
    images = [r.image for r in list(open_dataset(held))[:128]]  # the images benchmarks/runtimes.py measures
    cosine = (m.encode_image(images) * ref.encode_image(images)).sum(-1).min().item()
    print(f"static int8 image min cosine on held-out shapes {cosine:.5f}")
    assert cosine >= 0.995, cosine  # 0.9946 while the Conv outputs were requantised (issue 22)


def test_issue22_tiny_shapes_image_min_cosine_0995_variant_choice():
    """The int8-output Conv variant is kept when it meets the guard (0.998 on the held-back calibration images:
    0.995 and a margin; faster — QLinearConv), else the most faithful variant — on the embedded ResNet the
    float-Conv-output one."""
    assert choose({"minmax": 0.9946, "percentile": 0.8878, "minmax+float-conv-out": 0.9981,
                   "percentile+float-conv-out": 0.9012}) == "minmax+float-conv-out"
    # measured in benchmarks/runtimes.py: percentile's 0.9964 on the held-back images was 0.9946 on held-out shapes
    assert choose({"minmax": 0.9952, "percentile": 0.9964, "minmax+float-conv-out": 0.9994,
                   "percentile+float-conv-out": 0.9993}) == "minmax+float-conv-out"
    assert choose({"minmax": 0.9985, "percentile": 0.9951, "minmax+float-conv-out": 0.9990}) == "minmax"
    assert choose({"minmax": 0.99, "entropy": 0.993}) == "entropy"  # a graph without Convs: the best method


def test_issue22_static_int8_calibration_chosen_stored_reused(models, cache):
    _, m = models
    folder = m.model.folder
    q = json.loads((folder / META_FILE).read_text())["quantization"]
    n = TEST_CALIBRATION_IMAGES
    assert q["kind"] == "static" and q["calibration"] == {"source": "generated shapes", "images": n, "texts": n}
    variants = {"image": {m + s for m in FAST_METHODS for s in ("", FLOAT_CONV_SUFFIX)}, "text": set(FAST_METHODS)}
    for modality in ("image", "text"):
        cosines = q["min_cosine"][modality]
        assert set(cosines) == variants[modality] and q["method"][modality] == choose(cosines)
        ranges = json.loads((folder / f"calibration-{modality}.json").read_text())
        assert ranges  # the chosen method's tensor ranges, kept beside the graph
    ops = {n.op_type for n in onnx.load(str(folder / "image.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    stamp = (folder / "image.onnx").stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_static_int8, "METHODS", FAST_METHODS)
        mp.setattr(onnx_static_int8, "CALIBRATION_IMAGES", TEST_CALIBRATION_IMAGES)
        again = clipzoo.load("clipzoo/tiny-shapes", runtime="onnx-int8-static", cache_dir=cache)
    assert again.model.folder == folder and (folder / "image.onnx").stat().st_mtime_ns == stamp


def test_issue22_static_int8_calibration_on_the_callers_images(models, sample):
    _, m = models
    fp32_folder = m.model.folder.parent / json.loads((m.model.folder / META_FILE).read_text())["quantization"][
        "from"].rsplit("/", 1)[-1]
    images, texts = sample
    folder = static_int8_folder(fp32_folder, images=images[:8], texts=texts[:8], methods=("entropy",))
    assert folder != m.model.folder
    q = json.loads((folder / META_FILE).read_text())["quantization"]
    assert q["calibration"] == {"source": "given", "images": 8, "texts": 8}
    assert q["method"]["image"].startswith("entropy") and q["method"]["text"] == "entropy"
    assert set(q["min_cosine"]["text"]) == {"entropy"}
    with pytest.raises(ClipzooError, match="unknown calibration method 'kl'; use some of minmax, entropy"):
        static_int8_folder(fp32_folder, methods=("kl",))
    with pytest.raises(ClipzooError, match="already quantised"):
        static_int8_folder(folder)
