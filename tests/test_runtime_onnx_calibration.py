"""Issue 22 §1 / §7: static int8 calibrates every method from one run of the sample
(clipzoo.runtime.onnx_calibration), and the ranges are the ones ONNX Runtime's own calibrators compute."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

import clipzoo
from clipzoo.backends.onnx_format import read_meta
from clipzoo.datasets import ShapesDataset
from clipzoo.runtime.onnx_calibration import ENTROPY_BINS, METHODS, collector, entropy_threshold, write_ranges
from clipzoo.runtime.onnx_static_int8 import QUANT_OPS, calibration_inputs

ORT_SETTINGS = {"minmax": {"moving_average": False}, "entropy": {"num_bins": ENTROPY_BINS, "num_quantized_bins": 128},
                "percentile": {}}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    m = clipzoo.load("clipzoo/tiny-shapes", runtime="onnx", cache_dir=tmp_path_factory.mktemp("calib-cache"))
    samples = list(ShapesDataset(24, seed=5, image_size=64, two_object_prob=0.5))
    inputs = calibration_inputs(m.model.folder, [s.image for s in samples], [s.captions[0] for s in samples])
    return m.model.folder, inputs


def ort_ranges(src, batches, input_name, method, tmp_path):
    """ONNX Runtime's calibrator of ``method``, one ``collect_data`` per group of one shape (as before)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self, group):
            self.items = iter([{input_name: b} for b in group])

        def get_next(self):
            return next(self.items, None)

    kind = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]
    groups: dict = {}
    for b in batches:
        groups.setdefault(b.shape, []).append(b)
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator = create_calibrator(src, QUANT_OPS, augmented_model_path=str(tmp_path / f"{method}-aug.onnx"),
                                       calibrate_method=kind, extra_options=ORT_SETTINGS[method])
        for group in groups.values():
            calibrator.collect_data(Reader(group))
        return calibrator.compute_data()


@pytest.mark.parametrize("modality", ["image", "text"])
def test_issue22_one_pass_gives_onnx_runtimes_ranges_for_every_method(export, modality, tmp_path):
    from onnxruntime.quantization.calibrate import load_tensors_data

    folder, inputs = export
    graph = read_meta(folder)["graphs"][modality]
    batches = inputs[modality]
    assert len({b.shape for b in batches}) >= 2  # several groups: the histograms accumulate across them
    paths = {m: tmp_path / f"{m}.json" for m in METHODS}
    write_ranges(folder / graph["file"], batches, graph["input"], QUANT_OPS, paths)
    for method in METHODS:
        ours = load_tensors_data(paths[method])
        theirs = ort_ranges(folder / graph["file"], batches, graph["input"], method, tmp_path)
        assert set(ours.keys()) == set(theirs.keys()) and len(ours.keys()) >= 8, method
        for tensor in theirs:
            a, b = ours[tensor].range_value, theirs[tensor].range_value
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), (method, tensor, a, b)


def test_issue22_entropy_threshold_equals_onnx_runtimes_search():
    """The vectorised KL search picks ONNX Runtime's threshold on skewed, sparse and one-sided histograms."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    ort_collector = collector("entropy")
    ort_search = HistogramCollector.get_entropy_threshold
    cases = [rng.standard_normal(20000).astype(np.float32), rng.exponential(1.0, 5000).astype(np.float32),
             np.concatenate([rng.standard_normal(3000), [40.0, -3.0]]).astype(np.float32),
             np.where(rng.random(4000) < 0.7, 0.0, rng.standard_normal(4000)).astype(np.float32)]
    for values in cases:
        threshold = np.float32(np.abs(values).max())
        hist, edges = np.histogram(values, ENTROPY_BINS, range=(-threshold, threshold))
        histogram = (hist, edges, values.min(), values.max(), threshold)
        ours = entropy_threshold(histogram, 128)
        theirs = ort_search(ort_collector, histogram, 128)
        assert ours[0] == theirs[0] and ours[1] == theirs[1], (ours, theirs)


def test_issue22_write_ranges_names_an_unknown_method(export, tmp_path):
    folder, inputs = export
    with pytest.raises(ValueError, match="^unknown calibration method 'kl'$"):
        write_ranges(folder / "image.onnx", inputs["image"], "pixels", QUANT_OPS, {"kl": tmp_path / "kl.json"})
