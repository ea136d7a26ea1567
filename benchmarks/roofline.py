"""How near the hardware the image runtimes are (issue 22 §1): the ceiling this CPU allows, beside the peer.

For ViT-B/32's image tower (the speed model of benchmarks/runtimes.py, random weights, seed 0), in one run:

- **ops per image**: 2 × the multiply-adds of its matmuls (patch embedding, QKV, attention scores and values,
  attention output, MLP, projection), counted from the model's shapes;
- **the GEMM rate** of this CPU at each precision on the tower's largest matmul, at the shape a batch of
  ``--batch-size`` images gives it (batch × 50 tokens, 768 → 3072), with ``--threads`` threads: fp32 and bf16
  through ``torch.matmul`` (oneDNN), int8 through ONNX Runtime (MLAS, the kernels of the ``onnx-int8`` runtimes):
  the faster of ``MatMulInteger`` (u8 × s8 → int32) and ``DynamicQuantizeMatMul`` (float in and out);
- **decode**: CPU ms per image of clipzoo's loader (JPEG decode at the draft scale, resize, crop) on
  ``--images`` generated photo-like 640×480 JPEGs;
- **model ms per image** of each of ``--runtimes`` on those images (after their decode, one warm-up batch),
  ``--rounds`` rounds of every runtime in turn, the median counting;
- **the peer**: the open_clip loop of runtimes.py on the same JPEGs (folder → embeddings).

The ceiling at a precision is ``cores / (cores × ops / GEMM rate + decode seconds)`` images/s: every matmul at
the big GEMM's rate, everything else (norms, softmax, GELU, quantising activations) free, the decode sharing
the cores. ``ceiling ÷ peer`` is the most any runtime at that precision could reach against the peer here;
``model share of GEMM peak`` says how close each runtime's model already runs.

    python benchmarks/roofline.py --out benchmarks/results/roofline.json

Writes JSON (with the machine's CPU model, flags, cores and load average) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore")

from decode_share import crop_batches, decode_ms, model_ms, prepare  # noqa: E402
from embed_folder import speed_model, write_photos  # noqa: E402
from runtimes import peer_images, timed  # noqa: E402
from tables import machine_info, write_result  # noqa: E402

TOKENS = 50  # ViT-B/32 at 224: 7 × 7 patches + the class token


def vit_macs(width: int = 768, layers: int = 12, patch: int = 32, image: int = 224, mlp: int = 3072,
             out: int = 512) -> int:
    """Multiply-adds of one image through a ViT image tower's matmuls."""
    grid = (image // patch) ** 2
    tokens = grid + 1
    block = tokens * width * 3 * width + 2 * tokens * tokens * width + tokens * width * width \
        + 2 * tokens * width * mlp
    return grid * 3 * patch * patch * width + layers * block + width * out


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_gemm_rate(m: int, k: int, n: int, dtype: str, repeats: int) -> float:
    """Ops/s (2 per multiply-add) of torch.matmul at [m, k] × [k, n]."""
    import torch

    a = torch.randn(m, k).to(getattr(torch, dtype))
    b = torch.randn(k, n).to(getattr(torch, dtype))
    with torch.inference_mode():
        return 2 * m * k * n / median_seconds(lambda: torch.matmul(a, b), repeats)


def ort_int8_gemm_rate(m: int, k: int, n: int, threads: int, repeats: int) -> dict[str, float]:
    """Ops/s of ONNX Runtime's int8 GEMMs at [m, k] × [k, n] with constant s8 weights: ``MatMulInteger``
    (u8 activations in, int32 out) and ``DynamicQuantizeMatMul`` (float in, quantised per call, float out: what
    the dynamic ``onnx-int8`` runtime runs)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    graphs = {
        "MatMulInteger": ([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], TensorProto.UINT8,
                          TensorProto.INT32, rng.integers(0, 256, (m, k), dtype=np.uint8)),
        "DynamicQuantizeMatMul": ([helper.make_node("DynamicQuantizeMatMul", ["a", "w", "scale"], ["y"],
                                                    domain="com.microsoft")], TensorProto.FLOAT,
                                  TensorProto.FLOAT, rng.standard_normal((m, k), dtype=np.float32)),
    }
    rates = {}
    for name, (nodes, a_type, y_type, a) in graphs.items():
        graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("a", a_type, [m, k])],
                                  [helper.make_tensor_value_info("y", y_type, [m, n])], [w, scale])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                        helper.make_opsetid("com.microsoft", 1)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # MatMulInteger's graph leaves the scale unused: no warning for it
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        rates[name] = 2 * m * k * n / median_seconds(lambda s=session, x=a: s.run(None, {"a": x}), repeats)
    return rates


PRECISION = {"eager": "fp32", "onnx": "fp32", "bf16": "bf16", "onnx-int8": "int8", "onnx-int8-static": "int8",
             "openvino-int8": "int8"}


def runtime_models(runtimes: list[str], weights: Path, files: list[str], batch_size: int) -> dict:
    """{runtime: (comparator, its crop batches, split)}; the exports are the ones benchmarks/runtimes.py keeps
    beside ``weights`` (its ``--cache-dir``), built here only when it has not run."""
    import clipzoo

    out = {}
    for runtime in runtimes:
        comparator = clipzoo.load(str(weights), runtime=runtime, cache_dir=str(weights.parent))
        data, split = prepare(files, comparator, fast=True)
        out[runtime] = (comparator, crop_batches(data, batch_size), split)
    return out


def interleaved_model_ms(models: dict, rounds: int) -> dict[str, list[float]]:
    """Model-only milliseconds an image of each runtime, ``rounds`` rounds of every runtime in turn (so a change
    in the host's speed between minutes hits them alike; the median counts)."""
    times: dict[str, list[float]] = {r: [] for r in models}
    for _ in range(rounds):
        for runtime, (comparator, batches, split) in models.items():
            times[runtime].append(model_ms(comparator, batches, split))
    return times


def measure(args, tmp: Path) -> dict:
    import torch

    import clipzoo

    torch.set_num_threads(args.threads)
    weights = speed_model(args.cache_dir)  # the file benchmarks/runtimes.py keeps
    files = write_photos(tmp / "photos", args.images)
    m, k, n = args.batch_size * TOKENS, 768, 3072
    int8 = ort_int8_gemm_rate(m, k, n, args.threads, args.repeats)
    rates = {"fp32": torch_gemm_rate(m, k, n, "float32", args.repeats),
             "bf16": torch_gemm_rate(m, k, n, "bfloat16", args.repeats), "int8": max(int8.values())}
    decode = decode_ms(prepare(files, clipzoo.load(str(weights)), fast=True)[0])
    _, run = peer_images("ViT-B-32", weights, files, args.batch_size)
    run(1)
    peer = len(files) / timed(run)[1]
    ops = 2 * vit_macs()
    cores = args.threads
    precisions = {}
    for name, rate in rates.items():
        ceiling = cores / (cores * ops / rate + decode / 1e3)
        precisions[name] = {"gemm_gops": round(rate / 1e9, 1), "model_only_ceiling_images_per_s":
                            round(rate / ops, 1), "ceiling_images_per_s": round(ceiling, 1),
                            "ceiling_x_peer": round(ceiling / peer, 2)}
    runtimes = {}
    models = runtime_models(args.runtimes.split(","), weights, files, args.batch_size)
    for runtime, runs in interleaved_model_ms(models, args.rounds).items():
        ms = statistics.median(runs)
        precision = PRECISION[runtime]
        runtimes[runtime] = {"precision": precision, "model_ms_per_image": round(ms, 2),
                             "model_ms_per_image_runs": [round(t, 2) for t in runs],
                             "model_gops": round(ops / ms / 1e6, 1),
                             "share_of_gemm_peak": round(ops / ms * 1e3 / rates[precision], 3)}
    return {"ops_per_image": ops, "gemm_shape": [m, k, n],
            "int8_gemm_gops": {name: round(rate / 1e9, 1) for name, rate in int8.items()},
            "decode_ms_per_image": round(decode, 2),
            "peer_images_per_s": round(peer, 2), "precisions": precisions, "runtimes": runtimes,
            "load_average_1min": round(os.getloadavg()[0], 2)}


def table(result: dict) -> dict:
    rows = [[f"{p} GEMM", v["gemm_gops"], v["model_only_ceiling_images_per_s"], v["ceiling_images_per_s"],
             v["ceiling_x_peer"], ""] for p, v in result["precisions"].items()]
    rows += [[f"`{r}` model ({v['precision']})", v["model_gops"], round(1e3 / v["model_ms_per_image"], 1), "", "",
              v["share_of_gemm_peak"]] for r, v in result["runtimes"].items()]
    return {"columns": ["", "GOPS", "images/s, model only", "ceiling images/s with decode", "ceiling × peer",
                        "share of the GEMM peak"], "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="generated JPEGs (decode, the peer, the runtimes)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=20, help="timed GEMMs per precision (the median counts)")
    ap.add_argument("--runtimes", default="eager,bf16,onnx-int8,onnx-int8-static,openvino-int8")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every runtime's model in turn (the median counts)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "clipzoo" / "bench-runtimes")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "roofline.json")
    args = ap.parse_args(argv)
    result = {"benchmark": "roofline", "model": "ViT-B-32 (random weights, seed 0)", "images": args.images,
              "batch_size": args.batch_size, "threads": args.threads, "machine_before": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        result.update(measure(args, Path(tmp)))
    result["table"] = table(result)
    write_result(args.out, result)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
