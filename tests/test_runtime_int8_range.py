"""int8 weights follow the CPU (clipzoo.runtime.onnx_int8.weights_reduce_range): full range where VNNI / AMX add
int8 products exactly in int32, 7 bits on an x86 CPU without them, whose uint8 × int8 kernels add pairs of
products in int16 and would saturate. Both int8 runtimes (dynamic and static) on the embedded tiny-shapes, with
the CPU's flags patched to each kind of machine."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import clipzoo
from clipzoo.backends.onnx_format import META_FILE
from clipzoo.datasets import ShapesDataset, classnames
from clipzoo.runtime import onnx_int8, onnx_static_int8
from clipzoo.runtime.onnx_int8 import weights_reduce_range

AVX2 = frozenset({"sse2", "sse4_2", "avx2", "fma"})  # an AMD EPYC (Zen 1): no AVX-512, no VNNI
VNNI = AVX2 | {"avx512f", "avx512_vnni"}
MACHINES = [(AVX2, 64), (VNNI, 127)]  # ONNX Runtime's int8 range per channel: 7-bit [-64, 64], full [-127, 127]


def test_issue22_weights_take_7_bits_only_on_x86_without_vnni():
    assert weights_reduce_range(AVX2)
    assert not weights_reduce_range(VNNI)
    assert not weights_reduce_range(AVX2 | {"avx_vnni"}) and not weights_reduce_range(AVX2 | {"amx_int8"})
    assert not weights_reduce_range(frozenset({"fp", "asimd", "asimddp"}))  # Arm: no vpmaddubsw


def largest_int8_weight(folder) -> int:
    """The largest |value| among the int8 initializers (the quantised weights) of every graph in ``folder``."""
    largest = 0
    for name in ("image.onnx", "text.onnx"):
        model = onnx.load(str(folder / name))
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.INT8:
                largest = max(largest, int(np.abs(numpy_helper.to_array(init).astype(np.int32)).max()))
    return largest


@pytest.fixture(scope="module")
def sample():
    images = [s.image for s in ShapesDataset(16, seed=5, image_size=64, two_object_prob=0.0)]
    texts = [f"a photo of a {c}." for c in classnames("shape_color")[:16]]
    ref = clipzoo.load("clipzoo/tiny-shapes")
    return images, texts, ref.encode_image(images), ref.encode_text(texts)


def min_cosines(model, sample) -> tuple[float, float]:
    images, texts, ref_i, ref_t = sample
    return ((model.encode_image(images) * ref_i).sum(-1).min().item(),
            (model.encode_text(texts) * ref_t).sum(-1).min().item())


@pytest.mark.parametrize("flags, limit", MACHINES, ids=["avx2", "vnni"])
def test_issue22_dynamic_int8_weight_range_follows_the_cpu(flags, limit, sample, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_int8, "cpu_flags", lambda: flags)
    model = clipzoo.load("clipzoo/tiny-shapes", runtime="onnx-int8", cache_dir=tmp_path)
    folder = model.model.folder
    assert folder.name.endswith("-int8r7" if limit == 64 else "-int8"), folder.name
    assert largest_int8_weight(folder) == limit
    assert json.loads((folder / META_FILE).read_text())["quantization"]["reduce_range"] is (limit == 64)
    assert min(min_cosines(model, sample)) >= 0.995


def test_issue22_static_int8_weight_range_follows_the_cpu(sample, tmp_path, monkeypatch):
    """One cache, two kinds of CPU: each gets its own static build (the 7-bit one keyed apart), each within the
    cosine guard."""
    monkeypatch.setattr(onnx_static_int8, "METHODS", ("minmax",))
    monkeypatch.setattr(onnx_static_int8, "CALIBRATION_IMAGES", 24)
    folders = {}
    for flags, limit in MACHINES:
        monkeypatch.setattr(onnx_int8, "cpu_flags", lambda flags=flags: flags)
        model = clipzoo.load("clipzoo/tiny-shapes", runtime="onnx-int8-static", cache_dir=tmp_path)
        folders[limit] = model.model.folder
        assert largest_int8_weight(model.model.folder) == limit
        q = json.loads((model.model.folder / META_FILE).read_text())["quantization"]
        assert q["reduce_range"] is (limit == 64) and q["weights"].endswith("(7-bit range)") is (limit == 64)
        assert min(min_cosines(model, sample)) >= 0.995
    assert folders[64] != folders[127]
