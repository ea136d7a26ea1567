"""Rebuild the embedded default model ``clipzoo/tiny-shapes`` from its recipe and pack it into the package.

    python scripts/build_tiny_shapes.py [--output runs/tiny-shapes] [--steps N]
    python scripts/build_tiny_shapes.py --from-run runs/tiny-shapes   # pack a finished recipe run instead

Trains ``clipzoo train --recipe tiny-shapes`` (CPU, minutes), packs the result with
:func:`clipzoo.packing.pack` into ``src/clipzoo/catalog/tiny-shapes.{json,safetensors}``, then
loads the packed model through ``clipzoo.load("clipzoo/tiny-shapes")`` and evaluates it zero-shot on the
recipe's held-out shapes, recording the figures in the JSON, and draws the run's loss and acc1 curve into
``docs/img/tiny_shapes_curve.png``. The token rows kept are those of the
training captions and of the zero-shot class names in the shapes templates.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="runs/tiny-shapes")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--from-run", default=None, help="Pack the model of this finished `clipzoo train --recipe "
                                                     "tiny-shapes --output DIR` run instead of training.")
    args = ap.parse_args()

    import torch

    import clipzoo
    from clipzoo.datasets import shapes
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.eval.runner import Evaluator
    from clipzoo.packing import materialise, pack
    from clipzoo.train.data import shapes_data
    from clipzoo.train.engine import train
    from clipzoo.train.model import build_model
    from clipzoo.train.recipes import recipe_config, write_heldout

    cfg = recipe_config("tiny-shapes").replace(output=args.output)
    if args.steps:
        cfg = cfg.replace(steps=args.steps)
    t0 = time.time()
    model = build_model(cfg)
    data = shapes_data(cfg.data[0], model, cfg.seed, cfg.workers)
    if args.from_run:  # the same data (generated from the recipe's seed) gives the token ids to keep
        run = json.loads((Path(args.from_run) / "model" / "clipzoo_train.json").read_text())
        if run.get("config", {}).get("steps") not in (None, cfg.steps):
            raise SystemExit(f"{args.from_run} is not a run of this recipe (steps {run['config']['steps']})")
        model_dir, evals, seconds = Path(args.from_run) / "model", run.get("evals", []), None
    else:
        result = train(cfg, data=data, model=model)
        model_dir, evals, seconds = result.model_dir, result.evals, round(time.time() - t0, 1)
    ids = set(torch.unique(data.tokens).tolist())
    names = shapes.classnames("shape_color")
    ids |= set(torch.unique(model.tokenizer([t.format(c=n) for t in shapes.TEMPLATES for n in names])).tolist())
    pack(model_dir, "tiny-shapes", ids, extra={
        "recipe": "tiny-shapes", "train_seconds_incl_data": seconds, "recipe_evals": evals})

    # the packed model, loaded as users load it, on the recipe's held-out images
    with tempfile.TemporaryDirectory() as tmp:
        materialise("tiny-shapes", cache_dir=tmp)
        m = clipzoo.load("clipzoo/tiny-shapes", cache_dir=tmp)
        held = write_heldout(cfg.eval_data, f"{tmp}/heldout", m.image_size)
        metrics = Evaluator(m, workers=0).zeroshot(open_dataset(held)).metrics
    from clipzoo.catalog.embedded import packed_files

    meta_path, _ = packed_files("tiny-shapes")
    meta = json.loads(meta_path.read_text())
    meta["heldout_zeroshot"] = {"data": cfg.eval_data, **{k: round(float(v), 4) for k, v in metrics.items()}}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    from clipzoo.train.curves import plot_run, read_metrics

    run_dir = Path(model_dir).parent
    elapsed = seconds or read_metrics(run_dir)[0][-1].get("elapsed_s")
    took = f", {elapsed:.0f} s" if elapsed else ""
    curve = plot_run(run_dir, Path(__file__).resolve().parents[1] / "docs" / "img" / "tiny_shapes_curve.png",
                     title=f"clipzoo train --recipe tiny-shapes (2 CPU cores{took})")
    print(json.dumps({"seconds": seconds, "heldout_zeroshot": meta["heldout_zeroshot"], "curve": str(curve)}, indent=1))


if __name__ == "__main__":
    main()
