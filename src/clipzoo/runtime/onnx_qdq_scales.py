"""A QDQ graph's activation scales re-derived from another calibration's ranges, its int8 weights kept.

ONNX Runtime's ``quantize_static`` quantises every weight per output channel each time it runs — a Python loop
over the channels, twice (its parameters, then the data): on ViT-B/32 most of each call's 9 s (profiled) — even
when the calibration methods differ only in their activation ranges. In a QDQ graph an activation's
quantisation is one pair of initializers, ``<tensor>_scale`` and ``<tensor>_zero_point``, shared by its
QuantizeLinear and DequantizeLinear; when no bias is quantised (an int32 bias is scaled by its input's scale:
Conv / Gemm with a bias), nothing else depends on them. :func:`rescaled` rewrites that pair from a ranges file
as ONNX Runtime computes it (``compute_scale_zp``: uint8, asymmetric, the full range, no overrides), and
returns ``None`` for a graph it cannot rewrite that way, so the caller quantises it in full.
:func:`reproduces` checks the formula on the graph ONNX Runtime just wrote: its own ranges must give back its
own scales, value for value.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["activation_pairs", "rescaled", "reproduces"]

BIAS_SUFFIX = "_quantized"  # ONNX Runtime's name for a quantised initializer (int32 for a bias)


def activation_pairs(model) -> dict[str, tuple[str, str]] | None:
    """``{activation: (scale, zero point)}`` initializer names of the activations ``model`` quantises; ``None``
    when one of them does not use ONNX Runtime's ``<tensor>_scale`` / ``<tensor>_zero_point`` pair or a bias is
    quantised (int32: its scale depends on the activation's)."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    if any(i.data_type == TensorProto.INT32 and n.endswith(BIAS_SUFFIX) for n, i in inits.items()):
        return None
    pairs: dict[str, tuple[str, str]] = {}
    quantised: dict[str, tuple[str, str]] = {}  # a QuantizeLinear's output: the pair its DequantizeLinear must use
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            pair = (f"{node.input[0]}_scale", f"{node.input[0]}_zero_point")
            if tuple(node.input[1:3]) != pair or not all(n in inits for n in pair):
                return None
            pairs[node.input[0]] = quantised[node.output[0]] = pair
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in quantised \
                and tuple(node.input[1:3]) != quantised[node.input[0]]:
            return None
    return pairs


def uint8_params(low, high):
    """ONNX Runtime's (scale, zero point) for a uint8 activation in [low, high] (``calc_quant_params`` with no
    overrides, asymmetric, the full range)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.UINT8, reduce_range=False, symmetric=False)
    zero, scale = compute_scale_zp(low, high, qmin, qmax, False, None)
    return scale.squeeze(), zero.squeeze()


def rescaled(model, ranges: Path, pairs: dict[str, tuple[str, str]] | None = None):
    """A copy of the QDQ ``model`` whose activation scales and zero points come from the ranges file ``ranges``
    (as ``write_ranges`` / ``quantize_static`` write it); ``None`` when :func:`activation_pairs` refuses the
    graph or the file lacks one of its activations. ``pairs``: ``activation_pairs(model)`` when the caller has it."""
    import onnx
    from onnxruntime.quantization.calibrate import load_tensors_data

    pairs = activation_pairs(model) if pairs is None else pairs
    data = load_tensors_data(ranges).data
    if pairs is None or any(t not in data for t in pairs):
        return None
    values = {}
    for tensor, (scale_name, zero_name) in pairs.items():
        scale, zero = uint8_params(*data[tensor].range_value)
        values[scale_name] = onnx.helper.make_tensor(scale_name, onnx.TensorProto.FLOAT, scale.shape,
                                                     scale.ravel().tolist())
        values[zero_name] = onnx.helper.make_tensor(zero_name, onnx.TensorProto.UINT8, zero.shape,
                                                    zero.ravel().tolist())
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(values[init.name])
    return out


def reproduces(model, ranges: Path) -> bool:
    """Whether :func:`rescaled` gives back ``model``'s own activation scales and zero points from the ranges it
    was quantised with (ONNX Runtime's formula unchanged, its names as expected)."""
    from onnx import numpy_helper

    pairs = activation_pairs(model)
    again = None if pairs is None else rescaled(model, ranges, pairs)
    if again is None:
        return False
    names = {n for pair in pairs.values() for n in pair}
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in names}
    after = {i.name: numpy_helper.to_array(i) for i in again.graph.initializer if i.name in names}
    return bool(pairs) and all(before[n].dtype == after[n].dtype and before[n].tobytes() == after[n].tobytes()
                               for n in names)
