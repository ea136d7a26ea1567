"""runtime="openvino-int8" (clipzoo.runtime.openvino_int8): the static int8 graphs run in OpenVINO.

Measured against eager fp32 on the embedded clipzoo/tiny-shapes (ModifiedResNet) and the tiny open_clip ViT:
min cosine, zero-shot acc1 on held-out shapes, batch independence, the integer kernels it compiles to, the
calibration it shares with onnx-int8-static, and its errors (no GPU, no OpenVINO, a graph it cannot read).
"""
from __future__ import annotations

import sys
import threading

import pytest

import clipzoo
from _heldout import heldout_acc1
from clipzoo.datasets import ShapesDataset, classnames
from clipzoo.errors import CheckpointError, ClipzooError, MissingExtraError, UnsupportedError
from clipzoo.runtime import auto, onnx_static_int8, openvino_int8

pytest.importorskip("openvino")  # in the test extras (clipzoo[openvino]); skipped only where it is not installed

FAST_METHODS = ("minmax", "percentile")
CALIBRATION_IMAGES = 48


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino-cache")


def fast_calibration(mp) -> None:
    mp.setattr(onnx_static_int8, "METHODS", FAST_METHODS)
    mp.setattr(onnx_static_int8, "CALIBRATION_IMAGES", CALIBRATION_IMAGES)


@pytest.fixture(scope="module")
def models(cache):
    with pytest.MonkeyPatch.context() as mp:
        fast_calibration(mp)
        m = clipzoo.load("clipzoo/tiny-shapes", runtime="openvino-int8", cache_dir=cache)
    return clipzoo.load("clipzoo/tiny-shapes"), m


@pytest.fixture(scope="module")
def sample():
    images = [s.image for s in ShapesDataset(32, seed=7, image_size=64, two_object_prob=0.0)]
    return images, [f"a photo of a {c}." for c in classnames("shape_color")[:32]]


def test_openvino_int8_close_to_fp32_and_batch_independent(models, sample):
    ref, m = models
    images, texts = sample
    assert m.runtime == "openvino-int8" and "(openvino " in repr(m) and "OpenVinoTowers" in repr(m)
    for encode, encode_ref, items in ((m.encode_image, ref.encode_image, images),
                                      (m.encode_text, ref.encode_text, texts)):
        batch = encode(items, batch_size=32)
        cosine = (batch * encode_ref(items)).sum(-1).min().item()
        assert cosine >= 0.995, cosine
        alone = encode(items[5:6])
        assert (alone[0] - batch[5]).abs().max().item() <= 1e-6  # fixed scales: a row is its own


def test_openvino_int8_zero_shot_within_half_a_point(models, tmp_path):
    acc, _ = heldout_acc1(models, tmp_path / "held")
    print(f"zero-shot acc1 fp32 {acc[0]:.4f} openvino int8 {acc[1]:.4f}")
    assert abs(acc[0] - acc[1]) <= 0.005, acc


def test_openvino_int8_runs_integer_kernels_on_the_static_calibration(models, cache):
    _, m = models
    image, text = m.model.kernels("image"), m.model.kernels("text")
    assert image.get(("Convolution", "u8"), 0) >= 10, sorted(image.items())  # the ResNet's quantised convs
    assert text.get(("FullyConnected", "u8"), 0) >= 8, sorted(text.items())  # the transformer's matmuls
    # the same calibrated graphs as onnx-int8-static (a ResNet export has no fused graph: one export, one calibration)
    with pytest.MonkeyPatch.context() as mp:
        fast_calibration(mp)
        static = clipzoo.load("clipzoo/tiny-shapes", runtime="onnx-int8-static", cache_dir=cache)
    assert static.model.folder == m.model.folder


def test_openvino_int8_on_a_vit_reads_the_portable_export(tiny_files, images, cache):
    from clipzoo.backends.onnx_format import read_meta

    path = str(tiny_files["open_clip_safetensors"])
    ref = clipzoo.load(path)
    with pytest.MonkeyPatch.context() as mp:
        fast_calibration(mp)
        m = clipzoo.load(path, runtime="openvino-int8", cache_dir=cache)
    texts = ["a red circle", "a blue square", "a dog on a beach"]
    assert (m.encode_image(images) * ref.encode_image(images)).sum(-1).min() >= 0.99
    assert (m.encode_text(texts) * ref.encode_text(texts)).sum(-1).min() >= 0.99
    fp32 = m.model.folder.parent / read_meta(m.model.folder)["quantization"]["from"].rsplit("/", 1)[-1]
    assert not any(g.get("fused") for g in read_meta(fp32)["graphs"].values())  # no ONNX Runtime contrib ops
    assert read_meta(fp32)["graphs"]["image"]["layout"] == "standard"  # the blocks written out in standard ops
    assert m.model.kernels("image").get(("FullyConnected", "u8"), 0) >= 4
    # the ONNX Runtime runtime's static graph of the same ViT is fused (QAttention): OpenVINO says it cannot read it
    with pytest.MonkeyPatch.context() as mp:
        fast_calibration(mp)
        fused = clipzoo.load(path, runtime="onnx-int8-static", cache_dir=cache).model.folder
    with pytest.raises(CheckpointError) as err:
        clipzoo.load(str(fused), executor="openvino")
    assert str(err.value).startswith(f"OpenVINO cannot run {fused / 'image.onnx'}: No conversion rule found for "
                                     "operations: com.microsoft.QAttention")
    assert str(err.value).endswith("quantise the portable export (export_onnx(..., vit='standard'), as "
                                   "openvino-int8 does)")


def test_openvino_int8_serves_threads_one_inference_at_a_time(models, sample):
    _, m = models
    texts = sample[1]
    want = m.encode_text(texts)
    got: list = [None] * 4

    def work(i):
        got[i] = m.encode_text(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all((g - want).abs().max().item() == 0 for g in got)


def test_openvino_int8_errors_are_one_line(models, tmp_path, monkeypatch):
    _, m = models
    with pytest.raises(UnsupportedError) as err:
        clipzoo.load("clipzoo/tiny-shapes", runtime="openvino-int8", device="cuda")
    assert str(err.value) == ("runtime 'openvino-int8' runs on the CPU, not 'cuda'; use runtime='eager' (or "
                              "precision='fp16') on a GPU")
    import torch

    with pytest.raises(UnsupportedError) as err:
        m.encode_image(torch.rand(1, 3, 64, 64, requires_grad=True))
    assert str(err.value).endswith("runs in OpenVINO, which computes no gradients; load the PyTorch model "
                                   "(runtime='eager') to backpropagate, or pass a tensor that does not require grad")
    fp32 = clipzoo.load("clipzoo/tiny-shapes", runtime="onnx", cache_dir=m.model.folder.parent.parent).model.folder
    with pytest.raises(UnsupportedError, match="is not a static int8 export"):
        openvino_int8.load_folder(fp32)
    with pytest.raises(ClipzooError) as err:
        clipzoo.load(str(fp32), executor="tvm")
    assert str(err.value) == "unknown executor 'tvm' for an ONNX model; use one of onnxruntime, openvino"
    plain = clipzoo.load(str(fp32), executor="openvino")  # an fp32 export runs in OpenVINO too
    assert "(openvino " in repr(plain) and plain.encode_text(["a red circle"]).shape == (1, 64)
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(m.model.folder, broken)
    (broken / "image.onnx").write_bytes(b"\x08\x07not a graph")
    with pytest.raises(CheckpointError) as err:
        openvino_int8.load_folder(broken)
    assert str(err.value).startswith(f"OpenVINO cannot run {broken / 'image.onnx'}: ") and "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(MissingExtraError) as err:
        clipzoo.load("clipzoo/tiny-shapes", runtime="openvino-int8", cache_dir=tmp_path / "none")
    assert str(err.value) == ("runtime 'openvino-int8' needs openvino, which is not installed; "
                              "pip install 'clipzoo[openvino]'")
    assert not (tmp_path / "none" / "onnx").exists()  # said before minutes of export and calibration


def test_auto_measures_openvino_only_where_it_is_installed(monkeypatch):
    assert "openvino-int8" in auto.available("cpu")
    assert "openvino-int8" not in auto.available("cuda")
    monkeypatch.setattr(auto, "has_openvino", lambda: False)
    assert "openvino-int8" not in auto.available("cpu")
