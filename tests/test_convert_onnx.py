"""ONNX export (clipzoo.convert.onnx, clipzoo.runtime.onnx_export) and the onnxruntime backend, on tiny
random-weight models."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import clipzoo  # noqa: E402
from clipzoo.convert.onnx import META_FILE, export_onnx  # noqa: E402
from clipzoo.errors import BackendMissingError, BadTextError, CheckpointError, UnsupportedError  # noqa: E402

TOL = 1e-4
TEXTS = ["a photo of a cat", "a photo of a dog", "a diagram", "two birds", "a bowl of fruit"]
LABELS = ["cat", "dog", "diagram"]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.float() - b.float()).abs().max())


def pixels(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def open_clip_eager(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    path = write_open_clip_safetensors(tmp_path_factory.mktemp("oc") / "tiny.safetensors", embed_config=True)
    return clipzoo.load(str(path))


@pytest.fixture(scope="session")
def open_clip_exports(open_clip_eager, tmp_path_factory):
    root = tmp_path_factory.mktemp("oc_onnx")
    return {dtype: export_onnx(open_clip_eager, root / dtype, token_dtype=dtype, check=dtype == "int64")
            for dtype in ("int64", "int32")}


@pytest.fixture(scope="session")
def hf_pairs(tmp_path_factory):
    from clipzoo.testing import tiny_hf

    out = {}
    writers = {"clip": lambda folder: tiny_hf.write_clip(folder, n_merges=2000), "siglip": tiny_hf.write_siglip}
    for name, writer in writers.items():
        root = tmp_path_factory.mktemp(f"hf_{name}")
        eager = clipzoo.load(str(writer(root / "model")))
        out[name] = (eager, export_onnx(eager, root / "onnx"))
    return out


# ------------------------------------------------------------------------------------------- open_clip
@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_open_clip_export_matches_eager(open_clip_eager, open_clip_exports, dtype, images):
    folder = open_clip_exports[dtype]
    assert sorted(p.name for p in folder.iterdir()) == sorted([META_FILE, "image.onnx", "text.onnx"])
    onnx_model = clipzoo.load(str(folder))
    assert onnx_model.card.backend == "onnx"
    assert onnx_model.card.alias == open_clip_eager.card.alias
    assert (onnx_model.embed_dim, onnx_model.image_size, onnx_model.context_length) == (32, 32, 77)
    assert onnx_model.meta["graphs"]["text"]["input_dtype"] == dtype
    diffs = {}
    for n in (1, 5):  # exported at batch 2: the batch axis is dynamic
        x = pixels(n, seed=n)
        diffs[f"image@{n}"] = max_diff(onnx_model.encode_image(x, normalize=False),
                                       open_clip_eager.encode_image(x, normalize=False))
        diffs[f"text@{n}"] = max_diff(onnx_model.encode_text(TEXTS[:n], normalize=False),
                                      open_clip_eager.encode_text(TEXTS[:n], normalize=False))
    assert torch.equal(onnx_model.tokenize(TEXTS), open_clip_eager.tokenize(TEXTS))
    diffs["probs"] = max_diff(onnx_model.predict(images, LABELS), open_clip_eager.predict(images, LABELS))
    diffs["preprocess"] = max_diff(onnx_model.pixels(images), open_clip_eager.pixels(images))
    print(f"open_clip {dtype} max abs diffs: {diffs}")
    assert max(diffs.values()) <= TOL, diffs
    assert onnx_model.logit_scale == pytest.approx(open_clip_eager.logit_scale)
    assert onnx_model.logit_bias is None and onnx_model.probability == "softmax"


def test_open_clip_metadata(open_clip_exports):
    meta = json.loads((open_clip_exports["int64"] / META_FILE).read_text())
    assert meta["card"]["architecture"] == "clip" and meta["modalities"] == ["image", "text"]
    assert meta["tokenizer"] == {"kind": "open_clip_simple", "context_length": 77, "kwargs": {}}
    assert meta["preprocess"]["kind"] == "open_clip" and meta["preprocess"]["resize_mode"] == "shortest"
    assert meta["preprocess"]["interpolation"] == "bicubic" and meta["preprocess"]["size"] == 32
    assert meta["graphs"]["image"]["input_shape"] == ["N", 3, 32, 32]
    assert meta["exporter"] == "torchscript" and meta["opset"] == 17
    assert max(meta["max_abs_diff"].values()) <= TOL


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_graphs_run_directly_in_onnxruntime(open_clip_eager, open_clip_exports, dtype):
    import onnxruntime as ort

    folder = open_clip_exports[dtype]
    image = ort.InferenceSession(str(folder / "image.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(folder / "text.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in image.get_inputs()] == ["pixels"]
    assert [o.name for o in image.get_outputs()] == ["image_features"]
    assert [i.name for i in text.get_inputs()] == ["tokens"]
    assert [o.name for o in text.get_outputs()] == ["text_features"]
    assert text.get_inputs()[0].type == f"tensor({dtype})"
    x = pixels(3, seed=7)
    got = image.run(["image_features"], {"pixels": x.numpy()})[0]
    with torch.no_grad():
        assert max_diff(torch.from_numpy(got), open_clip_eager.encode_pixels(x)) <= TOL
    tokens = open_clip_eager.tokenize(TEXTS)
    got = text.run(["text_features"], {"tokens": tokens.numpy().astype(getattr(np, dtype))})[0]
    with torch.no_grad():
        assert max_diff(torch.from_numpy(got), open_clip_eager.encode_tokens(tokens)) <= TOL


def test_fixed_batch_export(open_clip_eager, tmp_path):
    folder = export_onnx(open_clip_eager, tmp_path / "fixed", batch_dynamic=False)
    model = clipzoo.load(str(folder))
    assert model.meta["graphs"]["image"]["input_shape"][0] == 1
    x = pixels(3)
    assert max_diff(model.encode_image(x), open_clip_eager.encode_image(x)) <= TOL


# ------------------------------------------------------------------------------------------- HF
@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_hf_export_matches_eager(hf_pairs, name, images):
    eager, folder = hf_pairs[name]
    assert (folder / "tokenizer").is_dir() and (folder / "image_processor").is_dir()
    onnx_model = clipzoo.load(str(folder))
    diffs = {}
    for n in (1, 5):
        x = pixels(n, seed=n)
        diffs[f"image@{n}"] = max_diff(onnx_model.encode_image(x, normalize=False),
                                       eager.encode_image(x, normalize=False))
        diffs[f"text@{n}"] = max_diff(onnx_model.encode_text(TEXTS[:n], normalize=False),
                                      eager.encode_text(TEXTS[:n], normalize=False))
    assert torch.equal(onnx_model.tokenize(TEXTS), eager.tokenize(TEXTS))
    diffs["preprocess"] = max_diff(onnx_model.pixels(images), eager.pixels(images))
    img_o, txt_o = onnx_model.encode_image(images), onnx_model.encode_text(LABELS)
    img_e, txt_e = eager.encode_image(images), eager.encode_text(LABELS)
    diffs["similarity"] = max_diff(onnx_model.similarity(img_o, txt_o), eager.similarity(img_e, txt_e))
    diffs["probs"] = max_diff(onnx_model.predict(images, LABELS), eager.predict(images, LABELS))
    print(f"hf {name} max abs diffs: {diffs}")
    assert max(diffs.values()) <= TOL, diffs
    assert onnx_model.probability == eager.probability
    assert onnx_model.logit_scale == pytest.approx(eager.logit_scale)
    if name == "siglip":
        assert onnx_model.probability == "sigmoid"
        assert onnx_model.logit_bias == pytest.approx(eager.logit_bias) == pytest.approx(-10.0)
    else:
        assert onnx_model.logit_bias is None


def test_text_only_sentence_transformers(tmp_path):
    pytest.importorskip("sentence_transformers")
    from clipzoo.testing.tiny_hf import write_st_text

    eager = clipzoo.load(str(write_st_text(tmp_path / "st")))
    folder = export_onnx(eager, tmp_path / "onnx")
    assert not (folder / "image.onnx").exists() and (folder / "text.onnx").exists()
    model = clipzoo.load(str(folder))
    assert model.modalities == ("text",)
    assert max_diff(model.encode_text(TEXTS), eager.encode_text(TEXTS)) <= TOL
    with pytest.raises(UnsupportedError, match="no image modality"):
        model.encode_image(pixels(1))


# ------------------------------------------------------------------------------------------- runtime="onnx"
def test_runtime_onnx_exports_once(open_clip_eager, tmp_path, monkeypatch, images):
    import clipzoo.runtime.onnx_export as conv

    calls = []
    real = conv.export_onnx
    monkeypatch.setattr(conv, "export_onnx", lambda *a, **k: calls.append(a) or real(*a, **k))
    spec = open_clip_eager.card.source.path
    first = clipzoo.load(spec, runtime="onnx", cache_dir=tmp_path)
    assert first.card.backend == "onnx" and len(calls) == 1
    folder = first.model.folder
    assert folder.parent == tmp_path / "onnx"
    mtime = (folder / "image.onnx").stat().st_mtime_ns
    second = clipzoo.load(spec, runtime="onnx", cache_dir=tmp_path)
    assert len(calls) == 1 and (folder / "image.onnx").stat().st_mtime_ns == mtime
    assert second.model.folder == folder
    assert max_diff(second.predict(images, LABELS), open_clip_eager.predict(images, LABELS)) <= TOL
    # an exported folder with runtime="onnx" loads as it is
    assert clipzoo.load(str(folder), runtime="onnx").model.folder == folder
    with pytest.raises(clipzoo.errors.ClipzooError, match="unknown runtime"):
        clipzoo.load(spec, runtime="tensorrt")


# ------------------------------------------------------------------------------------------- errors
def test_missing_graph_file(open_clip_exports, tmp_path):
    folder = shutil.copytree(open_clip_exports["int64"], tmp_path / "broken")
    (folder / "text.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"missing text\.onnx"):
        clipzoo.load(str(folder))


def test_missing_json(open_clip_exports, tmp_path):
    folder = shutil.copytree(open_clip_exports["int64"], tmp_path / "nojson")
    (folder / META_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"missing clipzoo_onnx\.json"):
        clipzoo.load(str(folder))


def test_no_gradients(open_clip_exports):
    model = clipzoo.load(str(open_clip_exports["int64"]))
    x = pixels(2).requires_grad_()
    with pytest.raises(UnsupportedError, match="onnxruntime, which computes no gradients"):
        model.encode_image(x)
    assert model.encode_image(x.detach()).shape == (2, 32)


def test_too_long_text_and_bad_tokens(open_clip_exports):
    model = clipzoo.load(str(open_clip_exports["int64"]))
    with pytest.raises(BadTextError):
        model.encode_text("word " * 100)
    assert model.encode_text("word " * 100, truncate=True).shape == (1, 32)
    with pytest.raises(BadTextError, match=r"shape \[N, 77\]"):
        model.encode_text(torch.zeros(2, 10, dtype=torch.long))


def test_onnxruntime_missing(open_clip_exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendMissingError, match="pip install onnxruntime"):
        clipzoo.load(str(open_clip_exports["int64"]))


def test_bad_token_dtype(open_clip_eager, tmp_path):
    with pytest.raises(clipzoo.errors.ClipzooError, match="token_dtype"):
        export_onnx(open_clip_eager, tmp_path / "x", token_dtype="float32")
