"""Issue 22 §1, image tower: the ONNX runtimes export an open_clip ViT with its attention fused
(clipzoo.runtime.onnx_vision) — the patch embedding as a MatMul, one QKV MatMul, ONNX Runtime's
MultiHeadAttention, BiasGelu — equal to ``encode_image``; static int8 quantises the MatMuls between those fused
float ops and runs each block's QKV projection and attention as one QAttention.

A tiny open_clip ViT with random weights (2 heads, exact GELU) stands in for ViT-B/32; its speed is measured
in benchmarks/runtimes.py.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import clipzoo
from clipzoo.backends.onnx_format import META_FILE
from clipzoo.runtime import onnx_static_int8, onnx_vision
from clipzoo.runtime.onnx_export import export_onnx
from clipzoo.testing.tiny import TINY_VIT_CONFIG, write_open_clip_safetensors

TEST_CALIBRATION_IMAGES = 48


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_open_clip_safetensors(tmp_path_factory.mktemp("vit") / "tiny-vit.safetensors", 3,
                                       embed_config=True, config=TINY_VIT_CONFIG)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vit-cache")


@pytest.fixture(scope="module")
def eager(weights):
    return clipzoo.load(str(weights))


def pixels(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 4 - 2


def ops_after_ort(path, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_issue22_vit_image_graph_fused_equals_encode_image(eager, weights, cache):
    m = clipzoo.load(str(weights), runtime="onnx", cache_dir=cache)
    graph = json.loads((m.model.folder / META_FILE).read_text())["graphs"]["image"]
    assert graph["fused"] == ["BiasGelu", "MultiHeadAttention"]
    ops = [n.op_type for n in onnx.load(str(m.model.folder / "image.onnx")).graph.node]
    assert ops.count("MultiHeadAttention") == 2 and ops.count("BiasGelu") == 2 and "Softmax" not in ops
    # ln_pre, each block's two, ln_post: plain LayerNormalization (ONNX Runtime's SkipLayerNormalization is slower)
    assert ops.count("LayerNormalization") == 6 and "SkipLayerNormalization" not in ops
    assert "Conv" not in ops  # the patch embedding as a MatMul over the flattened patches
    for n, seed in ((1, 1), (3, 2), (32, 3)):
        x = pixels(n, seed)
        with torch.no_grad():
            diff = (m.encode_pixels(x) - eager.encode_pixels(x)).abs().max().item()
        assert diff <= 1e-4, (n, diff)
    with torch.no_grad():  # the written-out blocks in torch, before any export
        x = pixels(4, 5)
        written = onnx_vision.encode_fused(eager.model.visual, x)
        assert (written - eager.encode_pixels(x)).abs().max().item() <= 1e-5


def test_issue22_convert_keeps_the_portable_image_graph(eager, tmp_path):
    """``clipzoo convert --to onnx`` (``vit="plain"``): standard ONNX ops only, no ONNX Runtime contrib op."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the (slower) dynamo exporter either
        out = export_onnx(eager, tmp_path / "plain")
    graph = json.loads((out / META_FILE).read_text())["graphs"]["image"]
    assert "fused" not in graph and "layout" not in graph
    model = onnx.load(str(out / "image.onnx"))
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert not onnx_vision.graph_ops(out / "image.onnx") & set(onnx_vision.FUSED_OPS)


def test_issue22_standard_layout_writes_the_vit_blocks_in_standard_ops(eager, tmp_path):
    """``vit="standard"`` (the portable export ``openvino-int8`` quantises): standard ONNX ops only, the patch
    embedding as a MatMul, each block's attention as one QKV MatMul, one head split and one merge (three
    Transposes a block, against the plain graph's eight), equal to ``encode_image`` in ONNX Runtime."""
    out = export_onnx(eager, tmp_path / "standard", vit="standard")
    meta = json.loads((out / META_FILE).read_text())
    assert meta["graphs"]["image"]["layout"] == "standard" and meta["graphs"]["image"]["fused"] == []
    assert meta["max_abs_diff"]["image"] <= 1e-4, meta["max_abs_diff"]
    model = onnx.load(str(out / "image.onnx"))
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    ops = [n.op_type for n in model.graph.node]
    plain = [n.op_type for n in onnx.load(str(export_onnx(eager, tmp_path / "plain") / "image.onnx")).graph.node]
    assert "Conv" not in ops and ops.count("Softmax") == 2 and ops.count("LayerNormalization") == 6
    # the patches' permutation, then per block the heads' split, kᵀ and the heads' merge; the plain graph: 8 a block
    assert ops.count("Transpose") == 1 + 3 * 2 and plain.count("Transpose") >= 1 + 8 * 2, plain.count("Transpose")
    session = ort.InferenceSession(str(out / "image.onnx"), providers=["CPUExecutionProvider"])
    for n, seed in ((1, 6), (7, 7)):
        x = pixels(n, seed)
        with torch.no_grad():
            ref = eager.encode_pixels(x).numpy()
        assert np.abs(session.run(None, {"pixels": x.numpy()})[0] - ref).max() <= 1e-4
    with torch.no_grad():
        x = pixels(3, 8)
        written = onnx_vision.encode_fused(eager.model.visual, x, "standard")
        assert (written - eager.encode_pixels(x)).abs().max().item() <= 1e-5
    with pytest.raises(clipzoo.ClipzooError, match=r"^unknown ViT layout 'fused'; use one of plain, contrib, "
                                                   r"standard$"):
        export_onnx(eager, tmp_path / "bad", vit="fused")


def test_issue22_convert_cli_writes_the_standard_layout_openvino_runs(eager, weights, tmp_path):
    """``clipzoo convert --to onnx --vit-layout standard``: the folder's image graph in the standard layout, which
    OpenVINO runs (``executor="openvino"``, float parts in its default precision) close to ``encode_image``."""
    from typer.testing import CliRunner

    from clipzoo.cli import app

    result = CliRunner().invoke(app, ["convert", str(weights), str(tmp_path / "ov"), "--to", "onnx", "--vit-layout",
                                      "standard"])
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "ov" / META_FILE).read_text())["graphs"]["image"]["layout"] == "standard"
    pytest.importorskip("openvino")
    m = clipzoo.load(str(tmp_path / "ov"), executor="openvino")
    x = pixels(5, 9)
    with torch.no_grad():
        assert (m.encode_pixels(x) - eager.encode_pixels(x)).abs().max().item() <= 0.05
        assert (m.encode_image(x) * eager.encode_image(x)).sum(-1).min().item() >= 0.999


def test_issue22_fused_export_falls_back_when_it_differs(eager, tmp_path, monkeypatch):
    """A tower the fused graph does not reproduce (here: encode_pixels moved by 1e-3) exports the plain graph;
    a tower that is not an open_clip ViT (the embedded ModifiedResNet) too."""
    original = type(eager).encode_pixels
    monkeypatch.setattr(type(eager), "encode_pixels", lambda self, x: original(self, x) + 1e-3)
    assert onnx_vision.fused_image_tower(eager, pixels(2, 0)) is None
    for layout in ("contrib", "standard"):
        out = export_onnx(eager, tmp_path / layout, vit=layout, check=False)
        assert not {"fused", "layout"} & set(json.loads((out / META_FILE).read_text())["graphs"]["image"])
    monkeypatch.undo()
    assert onnx_vision.fused_image_tower(eager, pixels(2, 0)) is not None
    assert onnx_vision.vit_visual(clipzoo.load("clipzoo/tiny-shapes")) is None


@pytest.fixture(scope="module")
def static(weights, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_static_int8, "METHODS", ("minmax", "percentile"))
        mp.setattr(onnx_static_int8, "CALIBRATION_IMAGES", TEST_CALIBRATION_IMAGES)
        return clipzoo.load(str(weights), runtime="onnx-int8-static", cache_dir=cache)


def test_issue22_vit_static_int8_quantises_between_fused_ops(static, tmp_path):
    """Every weight MatMul of the fused graph runs on ONNX Runtime's integer kernels: the patch embedding, each
    block's output projection, MLP in and MLP out, and the final projection as MatMulIntegerToFloat; each block's
    QKV projection inside a QAttention (with the attention itself); GELU stays fused with its bias, nothing
    runs as a float MatMul or Conv."""
    ops = ops_after_ort(static.model.folder / "image.onnx", tmp_path)
    assert ops.count("MatMulIntegerToFloat") == 1 + 2 * 3 + 1, sorted(set(ops))
    assert ops.count("QAttention") == 2 and ops.count("BiasGelu") == 2, sorted(set(ops))
    assert not {"MatMul", "Conv", "MultiHeadAttention", "Split", "SkipLayerNormalization"} & set(ops), sorted(set(ops))


def test_issue22_quantized_attention_equals_the_qdq_graph(static, tmp_path):
    """``onnx_vision.quantized_attention`` computes what the QDQ graph's QKV MatMul → Split → MultiHeadAttention
    computed (the same uint8 input at its calibrated scale, the same int8 weights): outputs within float
    rounding, for one image and for a batch; a graph without that pattern is left as it is."""
    src = Path(json.loads((static.model.folder / META_FILE).read_text())["quantization"]["from"]) / "image.onnx"
    nodes, _ = onnx_static_int8.quantised_nodes(src)
    batches = [pixels(8, seed).numpy() for seed in (21, 22)]
    qdq = tmp_path / "qdq.onnx"
    onnx_static_int8.quantize_with(src, qdq, batches, "pixels", "minmax", tmp_path / "ranges.json", nodes)
    rewritten = tmp_path / "qattention.onnx"
    shutil.copy(qdq, rewritten)
    assert onnx_vision.quantized_attention(rewritten) == 2
    assert onnx_vision.quantized_attention(rewritten) == 0 and onnx_vision.quantized_attention(src) == 0
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (qdq, rewritten)]
    for x in (pixels(1, 23).numpy(), pixels(5, 24).numpy()):
        a, b = (s.run(None, {"pixels": x})[0] for s in sessions)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), np.abs(a - b).max()


def test_issue22_vit_static_int8_cosine_and_batch_independence(static, eager):
    images = [img for img in pixels(32, 11)]
    x = torch.stack(images)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(eager.encode_pixels(x), dim=-1)
        got = torch.nn.functional.normalize(static.encode_pixels(x), dim=-1)
        alone = static.encode_pixels(x[5:6])
        batch = static.encode_pixels(x)
    cosine = (ref * got).sum(-1).min().item()
    print(f"tiny ViT static int8: min cosine {cosine:.5f}")
    assert cosine >= 0.995, cosine
    assert (alone[0] - batch[5]).abs().max().item() <= 1e-6
    q = json.loads((static.model.folder / META_FILE).read_text())["quantization"]
    assert set(q["min_cosine"]["image"]) == {"minmax", "percentile"}  # no Conv quantised: no Conv variant
