"""Issue 22 §1 / §7: static int8 quantises the weights once per graph; the other calibration methods get that QDQ
graph with their own activation scales (clipzoo.runtime.onnx_qdq_scales) — the same graph ONNX Runtime's
``quantize_static`` writes for them, initializer for initializer. A graph with a quantised bias (a ResNet's
Convs) is quantised in full per method, as is any graph whose own scales the formula does not give back."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import clipzoo
from clipzoo.backends.onnx_format import read_meta
from clipzoo.datasets import ShapesDataset
from clipzoo.runtime import onnx_qdq_scales, onnx_static_int8
from clipzoo.runtime.onnx_calibration import METHODS, write_ranges
from clipzoo.runtime.onnx_static_int8 import QUANT_OPS, calibration_inputs, quantised_nodes, quantize_with
from clipzoo.testing.tiny import TINY_VIT_CONFIG, write_open_clip_safetensors


def exported(name: str, cache) -> tuple:
    m = clipzoo.load(name, runtime="onnx", cache_dir=cache)
    samples = list(ShapesDataset(18, seed=9, image_size=64, two_object_prob=0.5))
    return m.model.folder, calibration_inputs(m.model.folder, [s.image for s in samples],
                                              [s.captions[0] for s in samples])


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    path = write_open_clip_safetensors(tmp_path_factory.mktemp("qdq-vit") / "tiny-vit.safetensors", 3,
                                       embed_config=True, config=TINY_VIT_CONFIG)
    return exported(str(path), tmp_path_factory.mktemp("qdq-vit-cache"))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return exported("clipzoo/tiny-shapes", tmp_path_factory.mktemp("qdq-rn-cache"))


def full(folder, modality, inputs, tmp_path) -> dict:
    """ONNX Runtime's ``quantize_static`` run in full for every method: {method: (graph, ranges file)}."""
    graph = read_meta(folder)["graphs"][modality]
    src = folder / graph["file"]
    nodes, _ = quantised_nodes(src)
    ranges = {m: tmp_path / f"{modality}-{m}.json" for m in METHODS}
    write_ranges(src, inputs[modality], graph["input"], QUANT_OPS, ranges)
    out = {}
    for method in METHODS:
        quantize_with(src, tmp_path / f"{modality}-{method}.onnx", inputs[modality], graph["input"], method,
                      ranges[method], nodes)
        out[method] = (onnx.load(str(tmp_path / f"{modality}-{method}.onnx")), ranges[method])
    return out


def initializers(model) -> dict:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("modality", ["image", "text"])
def test_issue22_rescaled_graph_equals_quantize_static_for_every_method(vit, modality, tmp_path):
    folder, inputs = vit
    graphs = full(folder, modality, inputs, tmp_path)
    base, base_ranges = graphs["minmax"]
    assert onnx_qdq_scales.reproduces(base, base_ranges)
    assert len(onnx_qdq_scales.activation_pairs(base)) >= 5
    for method in ("entropy", "percentile"):
        theirs, ranges = graphs[method]
        ours = onnx_qdq_scales.rescaled(base, ranges)
        a, b = initializers(ours), initializers(theirs)
        assert a.keys() == b.keys()
        for name in b:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), (method, name)
        assert [(n.op_type, list(n.input)) for n in ours.graph.node] == \
            [(n.op_type, list(n.input)) for n in theirs.graph.node]
        differs = [n for n in b if n.endswith("_scale") and not np.array_equal(b[n], initializers(base)[n])]
        assert differs, method  # the methods' ranges differ: the test compares something


def test_issue22_quantised_bias_is_not_rescaled(resnet, tmp_path):
    """A ResNet's Convs quantise their bias (int32, scaled by the input's scale): no rewrite, full quantisation."""
    folder, inputs = resnet
    graphs = full(folder, "image", inputs, tmp_path)
    model, ranges = graphs["minmax"]
    assert onnx_qdq_scales.activation_pairs(model) is None
    assert onnx_qdq_scales.rescaled(model, ranges) is None
    assert not onnx_qdq_scales.reproduces(model, ranges)


def test_issue22_ranges_missing_an_activation_are_refused(vit, tmp_path):
    from onnxruntime.quantization.calibrate import TensorsData, load_tensors_data, save_tensors_data

    folder, inputs = vit
    model, ranges = full(folder, "image", inputs, tmp_path)["minmax"]
    data = load_tensors_data(ranges)
    gone = sorted(onnx_qdq_scales.activation_pairs(model))[0]
    dropped = {t: r for t, r in data.data.items() if t != gone}
    save_tensors_data(TensorsData(data.calibration_method, dropped), tmp_path / "short.json")
    assert onnx_qdq_scales.rescaled(model, tmp_path / "short.json") is None


def count_quantize_calls(monkeypatch) -> list:
    calls = []
    real = onnx_static_int8.quantize_with

    def counting(src, out, *args, **kwargs):
        calls.append(out.name)
        return real(src, out, *args, **kwargs)

    monkeypatch.setattr(onnx_static_int8, "quantize_with", counting)
    return calls


def test_issue22_static_build_quantises_weights_once_per_vit_graph(vit, tmp_path, monkeypatch):
    folder, inputs = vit
    graph = read_meta(folder)["graphs"]["image"]
    calls = count_quantize_calls(monkeypatch)
    best, cosines = onnx_static_int8.quantize_graph(folder / graph["file"], tmp_path, "image", graph,
                                                    inputs["image"], METHODS)
    assert calls == ["minmax-image.onnx"] and set(cosines) == set(METHODS)
    assert all(c >= 0.99 for c in cosines.values()), cosines


def test_issue22_static_build_falls_back_when_the_formula_differs(vit, tmp_path, monkeypatch):
    """Had ONNX Runtime changed how it derives a scale, the graph it wrote would not be reproduced: each method
    is then quantised in full."""
    folder, inputs = vit
    graph = read_meta(folder)["graphs"]["image"]
    calls = count_quantize_calls(monkeypatch)
    real = onnx_qdq_scales.uint8_params
    monkeypatch.setattr(onnx_qdq_scales, "uint8_params", lambda low, high: real(low, high * 1.01))
    onnx_static_int8.quantize_graph(folder / graph["file"], tmp_path, "image", graph, inputs["image"], METHODS)
    assert calls == [f"{m}-image.onnx" for m in METHODS]
