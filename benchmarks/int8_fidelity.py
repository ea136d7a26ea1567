"""How close the int8 runtimes' features are to eager fp32, and how much they move with the batch size.

For one model (default: the embedded ``clipzoo/tiny-shapes``, what a new user runs first), N generated captioned
shapes and their captions are embedded with eager fp32 and with each int8 runtime, at several batch sizes. For
each runtime and batch size: the min and mean cosine of each row against eager's row of the same input (image
and text), and — since the dynamic int8 runtimes quantise activations per batch — the largest change of a row
between batch sizes (1 − cosine of the same input's rows at batch 1 and at the largest batch).

    python benchmarks/int8_fidelity.py --out int8_fidelity.json
    python benchmarks/int8_fidelity.py --model clipzoo/tiny-shapes --n 256 --batch-sizes 1 8 64 \
        --runtimes onnx-int8 torch-int8 onnx-int8-static openvino-int8 --out int8_fidelity.json

Writes a JSON file and prints it. No download: the embedded model and generated images.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import clipzoo

if TYPE_CHECKING:  # torch (and clipzoo.demo, which imports it) where it runs: --help stays instant
    import torch


def rows(model, kind: str, items: list, batch_size: int) -> torch.Tensor:
    import torch

    encode = model.encode_image if kind == "image" else model.encode_text
    with torch.no_grad():
        return encode(items, batch_size=batch_size).float().cpu()


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="clipzoo/tiny-shapes")
    ap.add_argument("--n", type=int, default=256, help="Generated images (and their captions).")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--runtimes", nargs="+", default=["onnx-int8", "torch-int8", "onnx-int8-static", "openvino-int8"])
    ap.add_argument("--out", default="int8_fidelity.json")
    args = ap.parse_args()
    import torch

    from clipzoo.demo import make_shapes

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_shapes(Path(tmp) / "shapes", args.n, image_size=64)
        images = sorted(str(p) for p in folder.rglob("*.png"))[: args.n]
        texts = [Path(p).with_suffix(".txt").read_text().strip() for p in images]
        inputs = {"image": images, "text": texts}
        eager = clipzoo.load(args.model, device="cpu", runtime="eager")
        reference = {kind: rows(eager, kind, items, 64) for kind, items in inputs.items()}
        result = {"model": args.model, "n": len(images), "batch_sizes": args.batch_sizes, "torch": torch.__version__,
                  "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"), "runtimes": {}}
        for runtime in args.runtimes:
            model = clipzoo.load(args.model, device="cpu", runtime=runtime)
            entry: dict = {}
            for kind, items in inputs.items():
                per_batch = {b: rows(model, kind, items, b) for b in args.batch_sizes}
                entry[kind] = {
                    "min_cosine": {str(b): float(cosines(x, reference[kind]).min()) for b, x in per_batch.items()},
                    "mean_cosine": {str(b): float(cosines(x, reference[kind]).mean()) for b, x in per_batch.items()},
                    "max_change_across_batch_sizes": float(
                        1 - cosines(per_batch[min(args.batch_sizes)], per_batch[max(args.batch_sizes)]).min()),
                }
            result["runtimes"][runtime] = entry
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
