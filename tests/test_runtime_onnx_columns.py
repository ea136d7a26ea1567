"""Issue 22 §1, text tower: the ONNX runtimes run each text row at its own length (clipzoo.runtime.onnx_columns).

The export of a causal text tower pooled at its end-of-text token takes any length ``L`` (the attention written
out in :func:`clipzoo.runtime.onnx_export.block_columns`); the runtime cuts each row after its end-of-text token
(rounded up to 8 columns) and runs rows of one length together, so a short caption costs a fraction of the
context and its row does not depend on the rest of the batch.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import clipzoo
from clipzoo.backends.onnx_format import META_FILE
from clipzoo.runtime import onnx_columns
from clipzoo.runtime.onnx_columns import ColumnsRunner, row_lengths

TEXTS = ["a red circle", "a photo of a big blue square on the left of a small green triangle", "x",
         "two yellow stars and a purple heart", "a green square"] * 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("columns-cache")
    return clipzoo.load("clipzoo/tiny-shapes"), clipzoo.load("clipzoo/tiny-shapes", runtime="onnx", cache_dir=cache)


def test_issue22_text_graph_takes_any_length(models):
    ref, m = models
    graph = json.loads((m.model.folder / META_FILE).read_text())["graphs"]["text"]
    assert graph["dynamic_length"] == "argmax" and graph["input_shape"] == ["N", 24]
    session = ort.InferenceSession(str(m.model.folder / "text.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["N", "L"]
    tokens = ref.tokenize(TEXTS[:5])
    with torch.no_grad():
        expected = ref.encode_tokens(tokens).numpy()
    longest = int(tokens.argmax(-1).max()) + 1
    assert longest < 24
    for n in (24, longest):  # any cut after the longest end-of-text token gives the same features
        got = session.run(None, {"tokens": tokens[:, :n].numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-5, n
    with torch.no_grad():
        assert (m.encode_text(TEXTS) - ref.encode_text(TEXTS)).abs().max().item() <= 1e-5


def test_issue22_text_rows_run_at_their_own_length(models):
    _, m = models
    assert isinstance(m.model.run, ColumnsRunner)
    tokens = np.zeros((4, 24), np.int64)
    for row, end in enumerate((2, 8, 9, 23)):  # the end-of-text token is the row's largest id
        tokens[row, :end] = 5
        tokens[row, end] = 49407
    assert row_lengths(tokens).tolist() == [8, 16, 16, 24]
    fed = []
    runner = ColumnsRunner(lambda modality, x: fed.append(x.shape) or x[:, :1].astype(np.float32) + len(x))
    out = runner("text", tokens)
    assert sorted(fed) == [(1, 8), (1, 24), (2, 16)]
    assert out[:, 0].tolist() == [1 + 5, 2 + 5, 2 + 5, 1 + 5]  # rows back in their places
    ids = m.tokenize(["a red circle"])  # 3 words + start and end: 5 columns -> one bucket of 8, not 24
    fed.clear()
    m.model.run.inner, inner = (lambda modality, x: fed.append(x.shape) or inner(modality, x)), m.model.run.inner
    try:
        m.encode_tokens(ids)
    finally:
        m.model.run.inner = inner
    assert fed == [(1, 8)]


def test_issue22_text_row_alone_equals_row_in_batch(models):
    _, m = models
    with torch.no_grad():
        batch = m.encode_text(TEXTS, batch_size=32)
        for i in (0, 1, 2):
            assert (m.encode_text(TEXTS[i:i + 1])[0] - batch[i]).abs().max().item() <= 1e-6


def test_issue22_whole_context_export_runs_as_before(models, tmp_path):
    """An export without the dynamic length (older caches, other text towers) runs rows at the full context."""
    _, m = models
    assert onnx_columns.install(m) is True and not isinstance(m.model.run.inner, ColumnsRunner)  # once
    meta = json.loads((m.model.folder / META_FILE).read_text())
    meta["graphs"]["text"].pop("dynamic_length")

    class Towers:
        graphs = meta["graphs"]

        def run(self, modality, x):
            return x

    class Comparator:
        model = Towers()

    c = Comparator()
    assert onnx_columns.install(c) is False and not isinstance(c.model.run, ColumnsRunner)


def test_issue22_static_int8_calibrates_text_rows_as_they_run(models, tmp_path):
    """Static int8 calibrates a dynamic-length text graph on rows cut to their length buckets (no padding
    columns); the ranges of every method accumulate over the groups of one shape — MinMax's are the union of
    each group's ranges, and the histogram methods (which stack a group's arrays) accept several lengths."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    from clipzoo.runtime.onnx_calibration import write_ranges
    from clipzoo.runtime.onnx_static_int8 import QUANT_OPS, as_run

    ref, m = models
    graph = json.loads((m.model.folder / META_FILE).read_text())["graphs"]["text"]
    tokens = ref.tokenize(TEXTS[:5]).numpy()
    feeds = as_run(tokens, graph)
    assert [f.shape for f in feeds] == [(3, 8), (1, 16), (1, 24)]  # 5, 5, 3 | 9 | 18 tokens
    src = m.model.folder / "text.onnx"
    ranges = {}
    for name, batches in (("both", feeds), ("short", feeds[:1]), ("long", feeds[1:])):
        write_ranges(src, batches, "tokens", QUANT_OPS, {"minmax": tmp_path / f"{name}.json"})
        ranges[name] = load_tensors_data(tmp_path / f"{name}.json")
    checked = 0
    for tensor, data in ranges["both"].items():
        (lo, hi), short = data.range_value, ranges["short"][tensor].range_value
        long_ = ranges["long"][tensor].range_value
        assert np.array_equal(lo, np.minimum(short[0], long_[0])) and np.array_equal(hi, np.maximum(short[1], long_[1]))
        checked += 1
    assert checked >= 10  # every quantisable tensor's input of the text graph
    write_ranges(src, feeds, "tokens", QUANT_OPS, {"percentile": tmp_path / "percentile.json"})
    percentile = load_tensors_data(tmp_path / "percentile.json")
    assert set(percentile.keys()) == set(ranges["both"].keys())
