"""``runtime="onnx-int8-static"``: static int8 (QDQ) quantisation of the cached ONNX export.

Weights int8 per output channel (the full int8 range, which VNNI / AMX compute exactly; 7-bit on an x86 CPU
without them, whose int16 pair sums would saturate: :func:`clipzoo.runtime.onnx_int8.weights_reduce_range`),
activations uint8 with scales fixed by a calibration — so a row does not depend on what else is in
its batch (the dynamic ``onnx-int8`` quantises activations per batch). The MatMul / Gemm / Conv nodes with a
weight (not the activation × activation products of attention, nor the convolution stem on the raw pixels)
are quantised; MatMul / Gemm keep a float output, which ONNX Runtime runs as ``MatMulIntegerToFloat`` /
``QGemm`` — its integer kernels (AVX512-VNNI, AMX-INT8), without requantising between layers. In a fused ViT
graph (:mod:`clipzoo.runtime.onnx_vision`) each block's quantised QKV projection and its attention then run as
one ``QAttention`` (:func:`clipzoo.runtime.onnx_vision.quantized_attention`).

Calibration: a sample of images and texts (the caller's through :func:`static_int8_folder`, else
:data:`CALIBRATION_IMAGES` generated shapes and their captions) run through the fp32 graphs; two thirds of
it calibrate each of the :data:`METHODS` (MinMax, entropy, percentile), and the method whose graph has the
highest min cosine to fp32 on the last third is kept, per tower. A text graph that takes any length
(:mod:`clipzoo.runtime.onnx_columns`) is calibrated on the rows as the runtime runs them — each cut to its
length bucket — so the ranges see no padding columns, and the ranges of every method accumulate over those
groups of one shape. One run of the sample gives every method its ranges
(:func:`clipzoo.runtime.onnx_calibration.write_ranges`), and the weights are quantised once per graph where it
has no quantised bias: the other methods get that graph with their own activation scales
(:mod:`clipzoo.runtime.onnx_qdq_scales`). The result lives in the cache beside the export
(``<export>-int8s-<sample digest>``) with the chosen method's tensor ranges (``calibration-<tower>.json``) and the
measured cosines in its JSON; later loads reuse it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..backends.onnx_format import META_FILE, read_meta
from ..cards import IMAGE, TEXT
from ..datasets import ShapesDataset
from ..errors import ClipzooError
from . import onnx_qdq_scales, onnx_vision
from .onnx import build_entry, derived_base, exported_folder, load_exported, load_or_rebuild
from .onnx_calibration import METHODS, calibration_method, write_ranges
from .onnx_columns import row_lengths
from .onnx_int8 import quiet_root_logger, weights_reduce_range

QUANT_OPS = ["MatMul", "Gemm", "Conv"]
FLOAT_OUTPUT_OPS = ["MatMul", "Gemm"]  # int8 inputs, float output: ORT's MatMulIntegerToFloat / QGemm kernels
FLOAT_CONV_SUFFIX = "+float-conv-out"  # the variant whose Conv outputs stay float (see quantize_graph)
MIN_COSINE = 0.998  # the guard a variant with int8 Conv outputs must meet to be kept over float ones: the
# issue's 0.995 plus a margin — on the embedded ResNet percentile measured 0.9964 on the held-back calibration
# images and 0.9946 on held-out shapes (benchmarks/runtimes.py)
CALIBRATION_IMAGES = 96  # two thirds calibrate, one third validates the choice
STEM_NODES = 3
CALIBRATION_BATCH = 16
SEED = 20260


def apply(card, build: Callable[..., Any], *, device: str, precision: str, cache_dir, load_kwargs: dict) -> Any:
    """The static-int8 ONNX Runtime comparator of ``card`` (exported, calibrated and quantised now when the
    cache has none yet; calibrated on generated shapes)."""
    def run():
        folder = exported_folder(card, build, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs)
        return load_exported(static_int8_folder(folder, base=derived_base(card, folder, cache_dir)), device=device,
                             cache_dir=cache_dir)

    return load_or_rebuild(card, cache_dir, load_kwargs, run)


def static_int8_folder(folder: Path, images: Sequence | None = None, texts: Sequence[str] | None = None,
                       methods: Sequence[str] | None = None, *, base: Path | None = None) -> Path:
    """The static-int8 version of the fp32 export ``folder`` calibrated on ``images`` / ``texts`` (PIL images
    or paths; default: generated shapes and captions), built once and cached beside ``folder`` — or beside
    ``base`` (the runtimes: :func:`clipzoo.runtime.onnx.derived_base`, a cache path for a user's export)."""
    meta = read_meta(folder)
    if meta.get("quantization"):
        raise ClipzooError(f"{folder} is already quantised ({meta['quantization'].get('kind')}); "
                           "calibrate the fp32 export instead")
    methods = METHODS if methods is None else tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ClipzooError(f"unknown calibration method {bad[0] if bad else None!r}; use some of {', '.join(METHODS)}")
    images, texts, source = calibration_sample(images, texts)
    reduce_range = weights_reduce_range()
    key = [[sample_key(i) for i in images], list(texts), list(methods)] + (["reduce_range"] if reduce_range else [])
    digest = hashlib.sha256(json.dumps(key).encode())
    base = folder if base is None else Path(base)
    dst = base.with_name(f"{base.name}-int8s-{digest.hexdigest()[:10]}")
    if not (dst / META_FILE).is_file():
        build_entry(dst, lambda tmp: quantize_static_folder(folder, tmp, images, texts, methods, source,
                                                            reduce_range=reduce_range))
    return dst


def calibration_sample(images, texts) -> tuple[list, list[str], str]:
    """The caller's sample, or generated shapes and their captions (fixed seed) for what is missing."""
    source = "given" if images is not None or texts is not None else "generated shapes"
    if images is None or texts is None:
        shapes = ShapesDataset(CALIBRATION_IMAGES, seed=SEED, image_size=224, two_object_prob=0.25)
        samples = list(shapes)
        images = [s.image for s in samples] if images is None else images
        texts = [c for s in samples for c in s.captions[:1]] if texts is None else texts
    images, texts = list(images), [str(t) for t in texts]
    if not images or not texts:
        raise ClipzooError("static int8 calibration needs at least one image and one text; pass some or none")
    return images, texts, source


def sample_key(image) -> str:
    """A path as itself; an in-memory image by a digest of its pixels."""
    if isinstance(image, (str, Path)):
        return str(image)
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()[:16]


def calibration_inputs(folder: Path, images, texts) -> dict[str, list]:
    """The fp32 export's own preprocessing of the sample: {modality: [input batches as numpy]}."""
    fp32 = load_exported(folder, device="cpu", cache_dir=None)
    out: dict[str, list] = {}
    graphs = read_meta(folder)["graphs"]
    for modality, items in ((IMAGE, images), (TEXT, texts)):
        if modality not in graphs:
            continue
        batches = []
        for start in range(0, len(items), CALIBRATION_BATCH):
            chunk = items[start:start + CALIBRATION_BATCH]
            x = fp32.pixels(chunk) if modality == IMAGE else fp32.tokenize(chunk, truncate=True)
            batches.extend(as_run(x.cpu().numpy().astype(graphs[modality]["input_dtype"]), graphs[modality]))
        out[modality] = batches
    return out


def as_run(x, graph: dict) -> list:
    """``x`` as the runtime feeds it to ``graph``: a text graph that takes any length sees each row cut to its
    length bucket (:mod:`clipzoo.runtime.onnx_columns`), so the calibration sees no padding columns either."""
    if graph.get("dynamic_length") != "argmax":
        return [x]
    lengths = row_lengths(x)
    return [x[lengths == n, :n] for n in sorted(set(lengths.tolist()))]


def quantize_static_folder(src: Path, dst: Path, images, texts, methods: Sequence[str], source: str, *,
                           reduce_range: bool = False) -> None:
    """Write into ``dst`` the export in ``src`` with each graph statically quantised by its best method (7-bit
    weights when ``reduce_range``)."""
    meta = read_meta(src)
    graphs = meta["graphs"]
    files = [g["file"] for g in graphs.values()]
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(META_FILE, *files, *[f + ".data" for f in files]))
    inputs = calibration_inputs(src, images, texts)
    chosen: dict[str, str] = {}
    cosines: dict[str, dict[str, float]] = {}
    for modality, g in graphs.items():
        chosen[modality], cosines[modality] = quantize_graph(src / g["file"], dst, modality, g, inputs[modality],
                                                             methods, reduce_range=reduce_range)
    meta = {**meta, "quantization": {
        "kind": "static", "format": "QDQ", "weights": "int8 per channel" + (" (7-bit range)" if reduce_range else ""),
        "reduce_range": reduce_range, "activations": "uint8", "ops": QUANT_OPS,
        "method": chosen, "min_cosine": cosines,
        "calibration": {"source": source, "images": len(images), "texts": len(texts)}, "from": str(src)}}
    meta.pop("max_abs_diff", None)  # measured for the fp32 graphs
    (dst / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def quantize_graph(path: Path, dst: Path, modality: str, graph: dict, batches: list,
                   methods: Sequence[str], *, reduce_range: bool = False) -> tuple[str, dict[str, float]]:
    """Quantise one graph by every method in ``methods``, measure each one's min cosine to fp32 on validation
    batches the calibration did not see (the last third of ``batches``), and keep the best as ``dst/<file>``,
    its ranges in ``dst/calibration-<modality>.json``; returns (choice, cosines). The convolution stem
    (:func:`weight_nodes`) stays float. A graph with quantised Convs is tried a second way per method, its Conv
    outputs left float (``<method>+float-conv-out``: int8 inputs and weights, no requantised output — on the
    embedded ResNet the requantised Conv outputs cost 0.004 of min cosine, the rest of its int8 layers 0.002);
    the int8-output variant is kept when its best method meets :data:`MIN_COSINE` on the held-back images
    (QLinearConv, faster), else the most faithful of all. The weights are quantised once per variant kind where
    the graph allows (:func:`reusable`); the other methods get that graph with their own activation scales."""
    import onnx

    split = max(1, len(batches) * 2 // 3) if len(batches) > 1 else 1
    calibrate, validate = batches[:split], batches[split:] or batches
    reference = run_graph(path, graph, validate)
    nodes, convs = quantised_nodes(path)
    variants = [(m, "") for m in methods] + [(m, FLOAT_CONV_SUFFIX) for m in methods if convs]
    write_ranges(path, calibrate, graph["input"], QUANT_OPS,
                 {m: dst / f"calibration-{modality}-{m}.json" for m in methods})
    cosines: dict[str, float] = {}
    bases: dict[str, Any] = {}  # per variant kind: the first method's QDQ graph, when the others can reuse it
    for method, suffix in variants:
        out = dst / f"{method}{suffix}-{graph['file']}"
        ranges = dst / f"calibration-{modality}-{method}.json"
        quantized = onnx_qdq_scales.rescaled(bases[suffix], ranges) if bases.get(suffix) is not None else None
        if quantized is not None:  # the same int8 weights, this method's activation scales
            onnx.save(quantized, str(out))
        else:
            quantize_with(path, out, calibrate, graph["input"], method, ranges, nodes,
                          float_outputs=FLOAT_OUTPUT_OPS + (["Conv"] if suffix else []), reduce_range=reduce_range)
            if suffix not in bases:
                bases[suffix] = reusable(out, ranges)
        onnx_vision.quantized_attention(out)  # a fused ViT's QKV MatMul + attention: one QAttention
        cosines[method + suffix] = min_cosine(run_graph(out, graph, validate), reference)
    best = choose(cosines)
    kept = {dst / f"{best}-{graph['file']}": dst / graph["file"],
            dst / f"calibration-{modality}-{best.removesuffix(FLOAT_CONV_SUFFIX)}.json":
                dst / f"calibration-{modality}.json"}
    for path_ in {p for m, s in variants for p in (dst / f"{m}{s}-{graph['file']}",
                                                    dst / f"calibration-{modality}-{m}.json")}:
        if path_ in kept:
            path_.rename(kept[path_])
        else:
            path_.unlink(missing_ok=True)
    return best, {m: round(c, 6) for m, c in cosines.items()}


def reusable(path: Path, ranges: Path):
    """The QDQ graph at ``path`` when the other methods can take it with their own activation scales
    (:mod:`clipzoo.runtime.onnx_qdq_scales`: no quantised bias, ONNX Runtime's names and formula), else ``None``
    (each method is then quantised in full)."""
    import onnx

    model = onnx.load(str(path))
    return model if onnx_qdq_scales.reproduces(model, ranges) else None


def choose(cosines: dict[str, float]) -> str:
    """The variant to keep: the best int8-output one when it meets :data:`MIN_COSINE`, else the best of all."""
    fast = {k: c for k, c in cosines.items() if not k.endswith(FLOAT_CONV_SUFFIX)}
    best = max(fast, key=fast.get)
    return best if fast[best] >= MIN_COSINE else max(cosines, key=cosines.get)


def quantised_nodes(path: Path) -> tuple[list[str], list[str]]:
    """The nodes to quantise (:func:`weight_nodes` without the stem) and the Convs among them."""
    import onnx

    quantisable, stem = weight_nodes(path)
    nodes = [n for n in quantisable if n not in stem]
    model = onnx.load(str(path), load_external_data=False)
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    return nodes, [n for n in nodes if n in convs]


def weight_nodes(path: Path) -> tuple[list[str], list[str]]:
    """The graph's MatMul / Gemm / Conv nodes with a weight (not attention's activation × activation products),
    and its stem: the convolutions among the first :data:`STEM_NODES` of them (a ResNet's three stem convs),
    which stay float — on the embedded ResNet, quantising them cost 0.004–0.006 of min cosine on held-out shapes
    (benchmarks/runtimes.py), for a small share of the compute. A fused ViT's patch embedding is a MatMul
    (:func:`clipzoo.runtime.onnx_vision.patch_embedding`) and is quantised (ViT-B/32: min cosine 0.9998)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    nodes = [n for n in model.graph.node if n.op_type in QUANT_OPS and n.input[1:2] and n.input[1] in weights]
    return [n.name for n in nodes], [n.name for n in nodes[:STEM_NODES] if n.op_type == "Conv"]


def quantize_with(src: Path, out: Path, batches: list, input_name: str, method: str, ranges: Path,
                  nodes: list[str], float_outputs: Sequence[str] = tuple(FLOAT_OUTPUT_OPS), *,
                  reduce_range: bool = False) -> None:
    """QDQ-quantise ``nodes`` of ``src`` into ``out``: int8 weights per channel, uint8 activations with the
    ranges of ``method`` (computed into ``ranges`` on ``batches`` when that file does not exist yet, else read
    from it); the ops in ``float_outputs`` (MatMul / Gemm) keep a float output, so ONNX Runtime runs them as
    MatMulIntegerToFloat / QGemm (VNNI / AMX integer kernels, no requantisation); 7-bit weights when
    ``reduce_range``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    calibrate = calibration_method(method)
    with warnings.catch_warnings(), quiet_root_logger(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the calibrators print their progress
        if not ranges.is_file():
            write_ranges(src, batches, input_name, QUANT_OPS, {method: ranges})
        quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANT_OPS,
                        nodes_to_quantize=nodes,
                        per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=calibrate, calibration_cache_path=str(ranges),
                        extra_options={"CalibMovingAverage": False,
                                       "OpTypesToExcludeOutputQuantization": list(float_outputs)})


def run_graph(path: Path, graph: dict, batches: list):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([graph["output"]], {graph["input"]: b})[0] for b in batches])


def min_cosine(a, b) -> float:
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())
