"""The activation ranges of every static-int8 calibration method from one pass over the sample.

ONNX Runtime calibrates one method at a time: each of its calibrators re-reads the graph with shape inference,
writes an augmented copy and runs the whole sample through it — three passes for MinMax, entropy and
percentile. :func:`write_ranges` augments the graph once (every tensor to calibrate as an output), runs each
batch once, and hands the same arrays to each method's collector: ONNX Runtime's own ``HistogramCollector`` for
entropy and percentile, per-batch minima and maxima for MinMax. The ranges are the ones ONNX Runtime's
calibrators compute, value for value (``tests/test_runtime_onnx_calibration.py`` compares them).

Entropy's threshold search is ONNX Runtime's (KL divergence over the candidate thresholds, the same integer
bin merges, the same smoothing and float32 entropy), with its per-bin Python loops written as numpy array
operations (:func:`entropy_threshold`): on ViT-B/32 ONNX Runtime's search took 30 s of the build (profiled).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["METHODS", "ENTROPY_BINS", "calibration_method", "write_ranges", "entropy_threshold"]

METHODS = ("minmax", "entropy", "percentile")
ENTROPY_BINS = 512  # ONNX Runtime's default keeps 128 (quantised bins 128: the MinMax range)
ENTROPY_QUANTIZED_BINS = 128
PERCENTILE_BINS = 2048  # ONNX Runtime's create_calibrator defaults for percentile: 2048 bins, symmetric,
PERCENTILE = 99.999  # 99.999 %


def calibration_method(method: str):
    """ONNX Runtime's ``CalibrationMethod`` for one of :data:`METHODS`."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def write_ranges(src: Path, batches: list, input_name: str, ops: Sequence[str], outputs: dict[str, Path]) -> None:
    """The ranges of each method in ``outputs`` (``{method: path}``) for the inputs of the ``ops`` nodes of the
    graph at ``src``, computed from one run of ``batches``, written where ``quantize_static`` reads its calibration
    cache. Batches of one shape are collected together (ONNX Runtime's histogram collectors stack them; a text
    graph that takes any length gets one group per length bucket), the histograms accumulating across groups;
    MinMax without a moving average."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import HistogramCalibrater, TensorsData, save_tensors_data

    bad = sorted(set(outputs) - set(METHODS))
    if bad:
        raise ValueError(f"unknown calibration method {bad[0]!r}")
    collectors = {m: collector(m) for m in outputs if m != "minmax"}
    lows: dict[str, list] = {}
    highs: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="clipzoo-calib-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        augmented = Path(tmp) / "augmented.onnx"
        calibrator = HistogramCalibrater(src, list(ops), augmented_model_path=str(augmented))
        calibrator.augment_graph()
        tensors = calibrator.tensors_to_calibrate
        del calibrator
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(str(augmented), sess_options=options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for group in shape_groups(batches):
            arrays: dict[str, list] = {}
            for b in group:
                for name, value in zip(names, session.run(None, {input_name: b})):
                    if name in tensors:  # a graph input among the outputs is copied, as ONNX Runtime does
                        arrays.setdefault(name, []).append(value.copy() if name == input_name else value)
            for c in collectors.values():
                c.collect(arrays)
            for name, values in arrays.items() if "minmax" in outputs else ():
                lows.setdefault(name, []).extend(np.min(v, keepdims=True).reshape(-1) for v in values)
                highs.setdefault(name, []).extend(np.max(v, keepdims=True).reshape(-1) for v in values)
        for method, path in outputs.items():  # (the collectors print their progress)
            if method == "minmax":
                data = {t: (np.nanmin(lows[t], axis=0), np.nanmax(highs[t], axis=0)) for t in lows}
            else:
                data = collectors[method].compute_collection_result()
            save_tensors_data(TensorsData(calibration_method(method), data), path)


def shape_groups(batches: list) -> list[list]:
    """``batches`` grouped by shape, in order of first appearance."""
    groups: dict[tuple, list] = {}
    for b in batches:
        groups.setdefault(tuple(b.shape), []).append(b)
    return list(groups.values())


def collector(method: str):
    """ONNX Runtime's histogram collector of ``method`` with the settings its calibrators use (entropy: asymmetric,
    :data:`ENTROPY_BINS`; percentile: symmetric, :data:`PERCENTILE_BINS`), entropy's search vectorised."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    class EntropyCollector(HistogramCollector):
        def get_entropy_threshold(self, histogram, num_quantized_bins):
            return entropy_threshold(histogram, num_quantized_bins)

    if method == "entropy":
        return EntropyCollector(method="entropy", symmetric=False, num_bins=ENTROPY_BINS,
                                num_quantized_bins=ENTROPY_QUANTIZED_BINS, percentile=PERCENTILE, scenario="same")
    if method != "percentile":
        raise ValueError(f"no histogram collector for {method!r}")
    return HistogramCollector(method="percentile", symmetric=True, num_bins=PERCENTILE_BINS,
                              num_quantized_bins=PERCENTILE_BINS, percentile=PERCENTILE, scenario="same")


def entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple:
    """ONNX Runtime's ``HistogramCollector.get_entropy_threshold``: the (low, high) edges around the zero bin
    whose clipped distribution, merged into ``num_quantized_bins``, is nearest in KL divergence to the full
    one — then clamped to the observed min / max. The same integer arithmetic (the expanded bins truncated to
    integers, as ONNX Runtime's int64 array does) and the same float32 smoothing and entropy, per candidate."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges, min_value, max_value = histogram[:4]
    n = hist.size
    zero = n // 2
    half = num_quantized_bins // 2
    dtype = edges.dtype
    prefix = np.concatenate([[0], np.cumsum(hist, dtype=np.int64)])
    kl = np.zeros(zero - half + 1)
    thresholds = []
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, n)
        thresholds.append((edges[start], edges[end]))
        sliced = hist[start:end].astype(np.int64)
        p = sliced.copy()
        p[0] += prefix[start]
        p[-1] += prefix[n] - prefix[end]
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(1)
        quantized[-1] += sliced[body:].sum()
        norm = (p[:body] != 0).reshape(num_quantized_bins, merged).sum(1)
        expanded = np.where(norm != 0, quantized / np.maximum(norm, 1), 0).astype(np.int64)
        q = np.zeros(p.size, dtype=np.int64)
        q[:body] = np.repeat(expanded, merged)
        p, q = smooth_distribution(p), smooth_distribution(q)
        kl[i - half] = np.inf if p is None or q is None else np.array(entropy(p, q), dtype=dtype)
    low, high = thresholds[int(np.argmin(kl))]
    return (min_value if low < min_value else low), (max_value if high > max_value else high)
