"""Runtimes (clipzoo.runtime): each keeps the Comparator API and stays close to eager fp32.

Fidelity bars (issue 8): cosine to eager fp32 ≥ 0.999 for float runtimes (compile, onnx), ≥ 0.99 for int8;
retrieval top-10 overlap with eager is measured and bounded too. Models: the embedded trained
``clipzoo/tiny-shapes`` (ModifiedResNet) and the tiny random open_clip ViT.
"""
from __future__ import annotations

import pytest
import torch

import clipzoo
from clipzoo.errors import ClipzooError, UnsupportedError
from clipzoo.runtime import RUNTIMES, normalize_runtime
from clipzoo.runtime.onnx_int8 import weights_reduce_range

FLOAT_RUNTIMES = ["compile", "onnx"]
INT8_RUNTIMES = ["onnx-int8", "torch-int8"]
MIN_COSINE = {"compile": 0.999, "onnx": 0.999, "onnx-int8": 0.99, "torch-int8": 0.99}
MIN_TOP10_OVERLAP = {"compile": 0.99, "onnx": 0.99, "onnx-int8": 0.9, "torch-int8": 0.9}


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """48 held-out single-object shapes (PIL) and the 77 shape × colour class prompts."""
    from PIL import Image

    from clipzoo.datasets import write_shapes
    from clipzoo.datasets.shapes import classnames

    folder = tmp_path_factory.mktemp("shapes")
    write_shapes(folder, 48, seed=123, image_size=64, two_object_prob=0.0, label_key="shape_color",
                 formats=("csv",), overwrite=True)
    images = [Image.open(p).convert("RGB") for p in sorted(folder.rglob("*.png"))]
    assert len(images) == 48
    return images, [f"a photo of a {c}." for c in classnames("shape_color")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture(scope="module")
def eager(shapes_data):
    model = clipzoo.load("clipzoo/tiny-shapes")
    images, prompts = shapes_data
    return model, model.encode_image(images), model.encode_text(prompts)


def top10_overlap(image_a, text_a, image_b, text_b) -> float:
    top_a = (image_a @ text_a.T).topk(10, dim=1).indices
    top_b = (image_b @ text_b.T).topk(10, dim=1).indices
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top_a, top_b)) / top_a.numel()


@pytest.mark.parametrize("runtime", ["onnx", *INT8_RUNTIMES])
def test_runtime_fidelity_on_the_trained_tiny_model(runtime, eager, shapes_data, cache):
    m = clipzoo.load("clipzoo/tiny-shapes", runtime=runtime, cache_dir=cache)
    assert_close_to_eager(m, runtime, eager, shapes_data)


def test_compile_fidelity_and_gradients(eager, shapes_data):
    """runtime="compile": as close to eager as the others, and the guidance path still backpropagates through
    the compiled model (one model for both: each new shape or grad mode compiles anew, ~15 s each on 2 cores)."""
    m = clipzoo.load("clipzoo/tiny-shapes", runtime="compile")
    text = assert_close_to_eager(m, "compile", eager, shapes_data)
    image = torch.rand(1, 3, 64, 64, requires_grad=True)
    (m.encode_image01(image) @ text.T).sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def assert_close_to_eager(m, runtime: str, eager, shapes_data) -> torch.Tensor:
    """``m`` (under ``runtime``) against eager fp32 on the held-out shapes: min cosine, top-10 overlap and the
    zero-shot answers; returns its text rows."""
    model, image_ref, text_ref = eager
    images, prompts = shapes_data
    assert m.runtime == runtime and runtime in repr(m)
    image_f, text_f = m.encode_image(images), m.encode_text(prompts)
    assert image_f.shape == image_ref.shape and text_f.shape == text_ref.shape
    cos_image = (image_f * image_ref).sum(-1).min().item()
    cos_text = (text_f * text_ref).sum(-1).min().item()
    overlap = top10_overlap(image_ref, text_ref, image_f, text_f)
    report = f"{runtime}: min cosine image {cos_image:.5f} text {cos_text:.5f}, top-10 overlap {overlap:.3f}"
    print(report)
    assert min(cos_image, cos_text) >= MIN_COSINE[runtime], report
    assert overlap >= MIN_TOP10_OVERLAP[runtime], report
    # the same zero-shot answers as eager on (almost) every image
    agree = (m.predict(images, prompts, templates=["{}"]).argmax(1) ==
             model.predict(images, prompts, templates=["{}"]).argmax(1)).float().mean().item()
    assert agree >= (1.0 if runtime in FLOAT_RUNTIMES else 0.95), report
    return text_f


@pytest.mark.parametrize("runtime", ["onnx-int8", "torch-int8"])
def test_int8_on_a_vit(runtime, tiny_files, images, cache):
    """open_clip's ViT (nn.MultiheadAttention, the c_fc weight dtype probe) quantises and stays close."""
    path = str(tiny_files["open_clip_safetensors"])
    ref = clipzoo.load(path)
    m = clipzoo.load(path, runtime=runtime, cache_dir=cache)
    texts = ["a red circle", "a blue square", "a dog on a beach"]
    assert (m.encode_image(images) * ref.encode_image(images)).sum(-1).min() >= 0.99
    assert (m.encode_text(texts) * ref.encode_text(texts)).sum(-1).min() >= 0.99
    if runtime == "torch-int8":
        quantised = [n for n, mod in m.model.named_modules() if type(mod).__name__ == "Linear"
                     and "quantized" in type(mod).__module__]
        assert quantised and all("mlp" in n for n in quantised), quantised


def test_onnx_int8_is_cached_beside_the_export(cache, eager):
    first = clipzoo.load("clipzoo/tiny-shapes", runtime="int8", cache_dir=cache)
    folder = first.model.folder
    suffix = "-int8r7" if weights_reduce_range() else "-int8"  # 7-bit weights on x86 without VNNI
    assert folder.name.endswith(suffix)
    assert (folder.parent / folder.name.removesuffix(suffix) / "image.onnx").is_file()
    stamp = (folder / "image.onnx").stat().st_mtime_ns
    again = clipzoo.load("clipzoo/tiny-shapes", runtime="int8", cache_dir=cache)
    assert again.model.folder == folder and (folder / "image.onnx").stat().st_mtime_ns == stamp
    import onnx

    ops = {n.op_type for n in onnx.load(str(folder / "text.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & ops, sorted(ops)


def test_runtime_names():
    assert normalize_runtime("torch") == "eager" and normalize_runtime(None) == "eager"
    assert normalize_runtime("ONNX_INT8") == "onnx-int8"
    assert normalize_runtime("int8") == "onnx-int8"  # onnxruntime is installed with the test extras
    assert set(RUNTIMES) >= {"eager", "compile", "onnx", "int8"}
    with pytest.raises(ClipzooError, match="unknown runtime 'tensorrt'; use one of eager, compile, onnx, int8"):
        clipzoo.load("clipzoo/tiny-shapes", runtime="tensorrt")
    with pytest.raises(UnsupportedError, match="precision='fp32'"):
        clipzoo.load("clipzoo/tiny-shapes", runtime="onnx-int8", precision="fp16")


def test_cli_embed_with_runtime(tmp_path, shapes_data, eager):
    import numpy as np
    from typer.testing import CliRunner

    from clipzoo.cli import app

    images, _ = shapes_data
    paths = []
    for i, im in enumerate(images[:6]):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    result = CliRunner().invoke(app, ["embed", "clipzoo/tiny-shapes", "--images", *paths, "--runtime", "int8",
                                      "--out", str(tmp_path / "e.npy"), "--cache-dir", str(tmp_path / "c"),
                                      "--no-progress", "--workers", "0"])
    assert result.exit_code == 0, (result.output, result.exception)
    rows = np.load(tmp_path / "e.npy")
    assert (rows * eager[1][:6].numpy()).sum(-1).min() >= 0.99
    bad = CliRunner().invoke(app, ["embed", "clipzoo/tiny-shapes", "--images", paths[0], "--runtime", "fast",
                                   "--out", str(tmp_path / "x.npy")])
    assert bad.exit_code == 2 and "unknown runtime 'fast'" in bad.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_on_gpu(precision, tiny_files, images):
    path = str(tiny_files["open_clip_safetensors"])
    ref = clipzoo.load(path)
    m = clipzoo.load(path, device="cuda", precision=precision)
    texts = ["a red circle", "a blue square"]
    assert (m.encode_image(images).cpu() * ref.encode_image(images)).sum(-1).min() >= 0.99
    assert (m.encode_text(texts).cpu() * ref.encode_text(texts)).sum(-1).min() >= 0.99
