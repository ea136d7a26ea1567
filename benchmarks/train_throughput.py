"""Training throughput: ``clipzoo train`` vs open_clip's own trainer (``open_clip_train.main``), in one run.

Both train the same open_clip model config (a small ViT at 64 px by default, random init), on the same data
(generated shapes written as PNG files + a tab-separated CSV, open_clip's ``filepath`` / ``title`` layout),
with the same batch size, number of steps, optimiser settings (AdamW, lr, weight decay, warm-up, cosine),
fp32 on the CPU, the same number of DataLoader workers, no evaluation and no checkpoint before the last
step. open_clip_train runs as its CLI does (``python -m open_clip_train.main --dataset-type csv …``, the
config registered with ``open_clip.add_model_config``); clipzoo runs as ``clipzoo train --config run.json``.

Each run is its own process. A global optimiser post-step hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``) time-stamps every optimiser step in both, so
both are timed at the same point of their loops: samples/s = batch × (steps − warm-up) / (time of the last
step − time of the warm-up's last step) — start-up (imports, model build, data-loader start, the first
steps) is excluded; the processes' whole wall time is printed as well. Runs alternate
(open_clip_train, clipzoo, clipzoo, open_clip_train, …); medians are compared.

    python benchmarks/train_throughput.py --steps 20 --warmup-steps 5 --batch-size 64 --repeats 3

Needs ``open_clip_train`` (shipped in the ``open_clip_torch`` wheel) and pandas, which its data module
imports (``pip install pandas``; ``open_clip_torch[training]`` would also pin webdataset back to 0.2.x).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

MODEL_NAME = "bench-vit-64"
MODEL_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
}
LR, WD, LR_WARMUP = 5e-4, 0.2, 10


def write_data(root: Path, n: int, image_size: int) -> Path:
    """``n`` generated shapes as PNG files and ``train.csv`` (tab-separated: filepath, title)."""
    from clipzoo.datasets import ShapesDataset

    images = root / "images"
    images.mkdir(parents=True)
    ds = ShapesDataset(n, seed=0, image_size=image_size)
    lines = ["filepath\ttitle"]
    for i in range(n):
        s = ds[i]
        path = images / f"{i:06d}.png"
        s.image.save(path)
        lines.append(f"{path}\t{s.captions[0]}")
    csv = root / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


# ------------------------------------------------------------------ one training run (in its own process)
def _stamp_steps(stamps: list[float]) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *a, **k: stamps.append(time.perf_counter()))


def worker(kind: str, root: Path, args) -> None:
    stamps: list[float] = []
    _stamp_steps(stamps)
    csv, out = root / "train.csv", root / f"run-{kind}-{os.getpid()}"
    if kind == "open_clip_train":
        import open_clip
        from open_clip_train import main as oc_main

        open_clip.add_model_config(str(root / "model_configs"))
        oc_main.main([
            "--train-data", str(csv), "--dataset-type", "csv", "--csv-separator", "\t",
            "--csv-img-key", "filepath", "--csv-caption-key", "title",
            "--model", MODEL_NAME, "--batch-size", str(args.batch_size), "--epochs", "1",
            "--lr", str(LR), "--wd", str(WD), "--warmup", str(LR_WARMUP), "--workers", str(args.workers),
            "--precision", "fp32", "--device", "cpu", "--seed", "0", "--logs", str(out), "--name", "run",
            "--log-every-n-steps", "10", "--report-to", "",
        ])
    else:
        from clipzoo.cli import app

        config = {"model_config": MODEL_CONFIG, "data": [str(csv)], "img_key": "filepath", "caption_key": "title",
                  "separator": "\t", "batch_size": args.batch_size, "steps": args.steps, "lr": LR, "weight_decay": WD,
                  "warmup": LR_WARMUP, "workers": args.workers, "precision": "fp32", "device": "cpu", "seed": 0,
                  "output": str(out), "log_every": 10, "tensorboard": False, "progress": False}
        (root / "run.json").write_text(json.dumps(config, indent=1))
        try:
            app(["train", "--config", str(root / "run.json")], prog_name="clipzoo")
        except SystemExit as exc:
            if exc.code:
                raise
    Path(args.stamps).write_text(json.dumps(stamps))


def run_once(kind: str, root: Path, args) -> dict:
    stamps = root / f"stamps-{kind}.json"
    cmd = [sys.executable, __file__, "--_worker", kind, "--_root", str(root), "--_stamps", str(stamps),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{kind} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    t = json.loads(stamps.read_text())
    if len(t) != args.steps:
        sys.exit(f"{kind}: {len(t)} optimiser steps, expected {args.steps}")
    w = args.warmup_steps
    rate = args.batch_size * (len(t) - w) / (t[-1] - t[w - 1])
    step_times = [b - a for a, b in zip(t[w - 1:], t[w:])]
    return {"samples_per_s": rate, "wall_s": wall, "median_step_s": statistics.median(step_times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of the timing")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers, both trainers")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each trainer, alternating")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_root", help=argparse.SUPPRESS)
    ap.add_argument("--_stamps", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        args.stamps = args._stamps
        return worker(args._worker, Path(args._root), args)
    if not 0 < args.warmup_steps < args.steps:
        sys.exit("--warmup-steps must be between 1 and --steps - 1")

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = args.batch_size * args.steps  # one epoch = --steps steps for open_clip_train (drop_last)
        t0 = time.perf_counter()
        write_data(root, n, MODEL_CONFIG["vision_cfg"]["image_size"])
        (root / "model_configs").mkdir()
        (root / "model_configs" / f"{MODEL_NAME}.json").write_text(json.dumps(MODEL_CONFIG))
        load = os.getloadavg()
        print(f"{n} generated shapes (64 px PNG + CSV) written in {time.perf_counter() - t0:.1f} s; model "
              f"{json.dumps(MODEL_CONFIG)}")
        print(f"batch {args.batch_size}, {args.steps} steps (first {args.warmup_steps} not timed), fp32 CPU, "
              f"{args.workers} workers, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        results: dict[str, list[dict]] = {"open_clip_train": [], "clipzoo": []}
        order = ["open_clip_train", "clipzoo"]
        for r in range(args.repeats):
            for kind in (order if r % 2 == 0 else order[::-1]):
                res = run_once(kind, root, args)
                results[kind].append(res)
                print(f"  {kind:16s} {res['samples_per_s']:7.1f} samples/s (median step {res['median_step_s']:.3f} s, "
                      f"process wall {res['wall_s']:.1f} s)", flush=True)
        med = {k: statistics.median(x["samples_per_s"] for x in v) for k, v in results.items()}
        wall = {k: statistics.median(x["wall_s"] for x in v) for k, v in results.items()}
        load = os.getloadavg()
        print(f"medians of {args.repeats}: open_clip_train {med['open_clip_train']:.1f} samples/s, "
              f"clipzoo {med['clipzoo']:.1f} samples/s -> ratio clipzoo / open_clip_train "
              f"{med['clipzoo'] / med['open_clip_train']:.2f}x; process wall {wall['open_clip_train']:.1f} s vs "
              f"{wall['clipzoo']:.1f} s; load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print("\n| date | model | batch × steps (timed) | open_clip_train | clipzoo train | ratio | "
              "process wall (oc / cz) |")
        print("|---|---|---|---:|---:|---:|---:|")
        v, t = MODEL_CONFIG["vision_cfg"], MODEL_CONFIG["text_cfg"]
        print(f"| {time.strftime('%Y-%m-%d')} | ViT w{v['width']} L{v['layers']} @{v['image_size']} px, "
              f"text w{t['width']} L{t['layers']} | {args.batch_size} × {args.steps} "
              f"({args.steps - args.warmup_steps}) | {med['open_clip_train']:.1f} samples/s | "
              f"{med['clipzoo']:.1f} samples/s | **{med['clipzoo'] / med['open_clip_train']:.2f}×** | "
              f"{wall['open_clip_train']:.0f} s / {wall['clipzoo']:.0f} s |")


if __name__ == "__main__":
    main()
