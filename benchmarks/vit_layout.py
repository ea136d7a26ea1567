"""Which ViT graph layout OpenVINO runs fastest under static int8 (issue 22 §1; ``openvino-int8``'s export).

ViT-B/32's image tower (the speed model of benchmarks/runtimes.py, random weights, seed 0) exported twice, both
with standard ONNX ops only (what OpenVINO reads): ``plain``, as torch writes open_clip's
``nn.MultiheadAttention`` (sequence-first, q / k / v split apart, the patch embedding a Conv), and ``standard``,
the blocks written out by clipzoo (``export_onnx(..., vit="standard")``: one QKV MatMul, one head split and one
merge, the patch embedding a MatMul). Both are calibrated the same way (``static_int8_folder``: generated
shapes, every method, the best min cosine kept) and compiled by OpenVINO with the runtime's settings; then, in
one run:

- **model ms per image** on ``--images`` generated photo-like JPEGs (clipzoo's loader, batches of
  ``--batch-size``), ``--rounds`` rounds of both layouts in turn, the median counting, and the median of the
  rounds' ratios;
- **min cosine to fp32** (the PyTorch model) on those images;
- the Transposes and Convolutions each graph holds, in ONNX and in OpenVINO's compiled model.

    python benchmarks/vit_layout.py --out benchmarks/results/vit_layout_xeon_amx.json

Writes JSON (with the machine's CPU model, flags, cores and load average) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore")

from decode_share import crop_batches, model_ms, prepare  # noqa: E402
from embed_folder import speed_model, write_photos  # noqa: E402
from tables import write_result  # noqa: E402

LAYOUTS = ("plain", "standard")


def layout_models(weights: Path, tmp: Path) -> dict:
    """{layout: the OpenVINO comparator of its static int8 export}."""
    import clipzoo
    from clipzoo.runtime import openvino_int8
    from clipzoo.runtime.onnx_export import export_onnx
    from clipzoo.runtime.onnx_static_int8 import static_int8_folder

    eager = clipzoo.load(str(weights))
    return {layout: openvino_int8.load_folder(static_int8_folder(export_onnx(eager, tmp / layout, vit=layout)))
            for layout in LAYOUTS}


def graph_counts(comparator) -> dict:
    """Transposes and Convolutions in the image graph, as written and as OpenVINO compiled it."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(comparator.model.folder / "image.onnx")).graph.node]
    kernels = comparator.model.kernels("image")
    compiled = {kind: sum(n for (layer, _), n in kernels.items() if layer == kind)
                for kind in ("Transpose", "Convolution", "FullyConnected")}
    return {"onnx_transposes": ops.count("Transpose"), "onnx_convs": ops.count("Conv"), "openvino_layers": compiled}


def min_cosine(comparator, reference, batches, split) -> float:
    import torch

    from clipzoo.embed.handover import normalize_uint8

    with torch.no_grad():
        pixels = (normalize_uint8(b, split) for b in batches)
        return min(float((comparator.encode_image(x) * reference.encode_image(x)).sum(-1).min()) for x in pixels)


def measure(args, tmp: Path) -> dict:
    import torch

    import clipzoo
    from clipzoo.backends.onnx_format import read_meta

    torch.set_num_threads(args.threads)
    weights = speed_model(args.cache_dir)  # the file benchmarks/runtimes.py keeps
    files = write_photos(tmp / "photos", args.images)
    models = layout_models(weights, tmp)
    reference = clipzoo.load(str(weights))
    data, split = prepare(files, reference, fast=True)
    batches = crop_batches(data, args.batch_size)
    runs: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.rounds):
        for layout, comparator in models.items():
            runs[layout].append(model_ms(comparator, batches, split))
    layouts = {}
    for layout, comparator in models.items():
        quant = read_meta(comparator.model.folder)["quantization"]
        layouts[layout] = {"model_ms_per_image": round(statistics.median(runs[layout]), 2),
                           "model_ms_per_image_runs": [round(t, 2) for t in runs[layout]],
                           "min_cosine_to_fp32": round(min_cosine(comparator, reference, batches, split), 5),
                           "calibration": quant["method"]["image"], **graph_counts(comparator)}
    ratios = [p / s for p, s in zip(runs["plain"], runs["standard"])]
    return {"model": "ViT-B-32", "images": len(files), "batch_size": args.batch_size, "rounds": args.rounds,
            "threads": args.threads, "openvino_precision": models["standard"].model.precision,
            "layouts": layouts, "standard_speedup_median_of_rounds": round(statistics.median(ratios), 3),
            "standard_speedup_per_round": [round(r, 3) for r in ratios],
            "load_average_1min": round(os.getloadavg()[0], 2)}


def table(result: dict) -> dict:
    rows = [[f"`{name}`", v["model_ms_per_image"], f"{min(v['model_ms_per_image_runs'])}–"
             f"{max(v['model_ms_per_image_runs'])}", v["min_cosine_to_fp32"], v["calibration"], v["onnx_transposes"],
             v["openvino_layers"]["Transpose"], v["onnx_convs"]] for name, v in result["layouts"].items()]
    return {"columns": ["ViT-B/32 image graph", "model ms / image (median)", "rounds", "min cos to fp32",
                        "calibration", "ONNX Transposes", "OpenVINO Transpose layers", "Convs"], "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="generated JPEGs the layouts embed")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=7, help="rounds of both layouts in turn (the median counts)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "clipzoo" / "bench-runtimes")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vit_layout.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clipzoo-vit-layout-") as tmp:
        result = measure(args, Path(tmp))
    result["table"] = table(result)
    write_result(args.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
