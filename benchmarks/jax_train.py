"""The JAX engine's training: the tiny-shapes recipe's zero-shot accuracy and time, and training samples/s of the
JAX engine vs clipzoo's torch trainer on the same tiny model, data and settings.

``--mode recipe``: ``clipzoo train --engine jax --recipe tiny-shapes`` in this process (the torch recipe's model:
a width-16 ModifiedResNet with BatchNorm — clipzoo's JAX ResNet tower — and a 128-wide, 3-block text tower, at
64 px on ``shapes-classes:20000``, 800 steps of 128, zero-shot on 770 held-out shapes every 200 steps); the JSON
holds every evaluation with the wall time since start (process start to that point, data generation included),
and is rewritten every 25 steps, so a run stopped early still reports what it reached. Each of those records
also holds the process's CPU seconds (``process_cpu_s``: user + system of all its threads) and the load average,
so that on a shared machine the idle wall time can be estimated: an idle 2-core machine gives the process both
cores, so its wall time there is about the CPU time divided by the parallelism the run reaches when it has the
cores (measured apart, in a quiet window). At the end the run's
``params.pkl`` is converted to an open_clip torch model (``clipzoo convert --from jax``'s conversion) and both score
the held-out shapes: ``torch_conversion`` holds the torch model's acc1 and how many predictions agree.
``--recipe-steps N`` shortens the run for debugging (evaluated at its end, or every ``--eval-every``).

``--mode throughput``: the same model (the JAX recipe's config — its ResNet since the recipe trains the torch
recipe's model; ``benchmarks/results/jax_train_throughput.json`` was measured on the earlier ViT recipe, which
its ``model`` records — converted to an open_clip config for torch), the same generated shapes in memory,
batch, AdamW settings, fp32 on the CPU; each trainer runs ``--steps`` steps and
samples/s = batch × (steps − warm-up) / (time of the last step − time of the warm-up's last step), both timed
at the end of a step (JAX: after the loss is on the host, so the step has finished). Both run in this process,
alternating (torch, jax, jax, torch, …; ``--repeats`` each, medians compared), each with the CPU threads it
takes by default. The torch trainer runs the text tower only up to each batch's longest caption; the JAX step
runs the whole context (24 here).

    python benchmarks/jax_train.py --mode recipe --out benchmarks/results/jax_train_recipe.json
    python benchmarks/jax_train.py --mode recipe --seed 1 --out benchmarks/results/jax_train_recipe_seed1.json
    python benchmarks/jax_train.py --mode recipe --engine torch --seed 1 --out /tmp/torch_recipe_seed1.json
    python benchmarks/jax_train.py --mode recipe --recipe-steps 100 --out /tmp/recipe100.json
    python benchmarks/jax_train.py --mode throughput --steps 30 --warmup-steps 10 --batch-size 64 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import machine_info, scratch_dir  # noqa: E402

T0 = time.perf_counter()


def load_average() -> "list[float] | None":
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def recipe(args) -> dict:
    from clipzoo.train.jax import jax_recipe, train_jax

    if args.engine == "torch":
        return torch_recipe(args)
    cfg = jax_recipe("tiny-shapes").replace(output=args.output or str(scratch_dir("jax-recipe-")),
                                            progress=False)
    if args.seed is not None:  # another draw: initial weights, data order and augmentation
        cfg = cfg.replace(seed=args.seed)
    if args.init:
        cfg = cfg.replace(init=args.init)
    if args.model_config:  # another JAX config in open_clip_jax's JSON form (e.g. a tiny ConvNeXt)
        cfg = cfg.replace(model_config=json.loads(args.model_config))
    if args.recipe_steps:  # a shorter debugging run: fewer steps, evaluated at its end (and every --eval-every)
        cfg = cfg.replace(steps=args.recipe_steps, eval_every=args.eval_every or args.recipe_steps,
                          n_warmup_steps=min(cfg.n_warmup_steps, args.recipe_steps // 4))
    out = _recipe_record(cfg.as_dict(), "jax")
    train_jax(cfg, on_step=_progress(out, args.out, cfg.log_freq, Path(cfg.output)))
    _finish(out, Path(cfg.output))
    out["torch_conversion"] = converted_check(cfg, Path(cfg.output))
    _write(args.out, out)
    return out


def torch_recipe(args) -> dict:
    """The torch trainer's tiny-shapes recipe (``clipzoo train --recipe tiny-shapes``), recorded the same way, so
    the two engines can be compared seed for seed."""
    from clipzoo.train.engine import train as torch_train
    from clipzoo.train.recipes import recipe_config

    cfg = recipe_config("tiny-shapes").replace(output=args.output or str(scratch_dir("torch-recipe-")),
                                               progress=False, tensorboard=False, device="cpu")
    if args.seed is not None:
        cfg = cfg.replace(seed=args.seed)
    if args.recipe_steps:
        cfg = cfg.replace(steps=args.recipe_steps, eval_every=args.eval_every or args.recipe_steps,
                          warmup=min(cfg.warmup, args.recipe_steps // 4))
    out = _recipe_record(cfg.as_dict(), "torch")
    torch_train(cfg, on_step=_progress(out, args.out, cfg.log_every, Path(cfg.output)))
    _finish(out, Path(cfg.output))
    _write(args.out, out)
    return out


def _recipe_record(config: dict, engine: str) -> dict:
    return {"benchmark": "jax_train recipe", "recipe": "tiny-shapes", "engine": engine, "config": config,
            "evals": [], "cpu_count": os.cpu_count(), "machine": machine_info(), "progress": []}


def _evals(run: Path) -> list:
    """The run's zero-shot evaluations, from its ``metrics.jsonl`` (both engines write ``eval/acc1`` lines)."""
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return [json.loads(x) for x in lines if "eval/acc1" in x]


def _progress(out: dict, path: "str | None", every: int, run: Path):
    def on_step(step, record):
        if step % every == 0:
            out["last_step"], out["last_loss"] = step, float(record["loss"])
            out["elapsed_s"] = round(time.perf_counter() - T0, 1)
            out["load_average"] = load_average()
            out["progress"].append({"step": step, "loss": round(float(record["loss"]), 4),
                                    "elapsed_s": out["elapsed_s"], "process_cpu_s": round(time.process_time(), 1),
                                    "load_average": out["load_average"]})
            out["evals"] = _evals(run)
            _write(path, out)
    return on_step


def _finish(out: dict, run: Path) -> None:
    out["evals"] = [{"step": e["step"], "acc1": e["eval/acc1"], "acc5": e.get("eval/acc5"),
                     "mean_per_class_recall": e.get("eval/mean_per_class_recall")} for e in _evals(run)]
    out["final_acc1"] = out["evals"][-1]["acc1"]
    out["total_s"] = round(time.perf_counter() - T0, 1)
    out["process_cpu_s"] = round(time.process_time(), 1)
    out["load_average"] = load_average()
    out["reached_95"] = out["final_acc1"] >= 0.95


def converted_check(cfg, run: Path) -> dict:
    """The run's ``params.pkl`` converted to an open_clip torch model (``clipzoo convert --from jax``'s
    conversion): its zero-shot acc1 on the held-out shapes through the Evaluator, and how many of the 770
    per-image predictions (one prompt per class) equal the JAX model's."""
    import open_clip
    import torch

    import clipzoo
    from clipzoo.backends.jax import read_params
    from clipzoo.backends.open_clip import OpenClipComparator
    from clipzoo.cards import ModelCard
    from clipzoo.convert.jax import jax_to_open_clip, open_clip_config
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.datasets.records import decode_image
    from clipzoo.eval.runner import Evaluator

    params = run / "model" / "params.pkl"
    jx = clipzoo.load(str(params))  # params.config.json beside it names the config
    tm = open_clip.CLIP(**open_clip_config(cfg.model, cfg.image_size, cfg.context_len)).eval()
    tm.load_state_dict(jax_to_open_clip(read_params(params), cfg.model))
    card = ModelCard(architecture="clip", publisher="local", id="converted", backend="open_clip")
    torch_cmp = OpenClipComparator(card, tm, transform=jx.transform, tokenizer=jx.tokenizer, precision="fp32",
                                   model_name=None, model_config=None, preprocess_config={"size": cfg.image_size})
    held = cfg.eval_data.startswith("shapes-heldout:")  # the trainer wrote it into the run folder
    data = open_dataset(str(run / "heldout") if held else cfg.eval_data)
    acc1 = Evaluator(torch_cmp, workers=0, batch_size=256).zeroshot(data).metrics["acc1"]
    records = list(data)
    pixels = torch.stack([jx.transform(decode_image(r)) for r in records])
    prompts = jx.tokenize([f"a photo of a {c}." for c in data.classnames])
    with torch.no_grad():
        ji, jt = jx.encode_pixels(pixels), jx.encode_tokens(prompts)
        ti, tt = tm.encode_image(pixels), tm.encode_text(prompts)
    norm = torch.nn.functional.normalize
    jpred, tpred = (norm(ji, dim=-1) @ norm(jt, dim=-1).T).argmax(1), (norm(ti, dim=-1) @ norm(tt, dim=-1).T).argmax(1)
    return {"torch_acc1": acc1, "images": len(records), "same_predictions": int((jpred == tpred).sum()),
            "max_abs_diff_image_features": float((ji - ti).abs().max()),
            "max_abs_diff_text_features": float((jt - tt).abs().max())}


def _timed(times: list):
    return lambda step, record: times.append(time.perf_counter())


def throughput(args) -> dict:
    import torch

    from clipzoo.convert.jax import open_clip_config
    from clipzoo.train.config import from_mapping
    from clipzoo.train.engine import train as torch_train
    from clipzoo.train.jax import jax_recipe, train_jax
    from clipzoo.train.jax.config import TINY_SHAPES_JAX_MODEL

    data = f"shapes-classes:{args.batch_size * args.steps}"
    jcfg = jax_recipe("tiny-shapes").replace(train_path=data, global_batch_size=args.batch_size, steps=args.steps,
                                             n_warmup_steps=2, eval_data=None, eval_every=None, progress=False,
                                             output=str(scratch_dir("jax-tp-")), log_freq=10 ** 6)
    tcfg = from_mapping({"model_config": open_clip_config(TINY_SHAPES_JAX_MODEL, 64, 24), "data": [data],
                         "batch_size": args.batch_size, "steps": args.steps, "lr": jcfg.learning_rate,
                         "weight_decay": jcfg.weight_decay, "warmup": 2, "progress": False, "tensorboard": False,
                         "output": str(scratch_dir("torch-tp-")), "device": "cpu", "log_every": 10 ** 6})
    runners = {"torch": lambda t: torch_train(tcfg, on_step=_timed(t)),
               "jax": lambda t: train_jax(jcfg.replace(output=str(scratch_dir("jax-tp-"))), on_step=_timed(t))}
    runs: dict[str, list[float]] = {"torch": [], "jax": []}
    order = [("torch", "jax"), ("jax", "torch")]
    for r in range(args.repeats):  # alternate: torch, jax, jax, torch, …
        for name in order[r % 2]:
            times: list = []
            runners[name](times)
            w = args.warmup_steps
            runs[name].append(args.batch_size * (len(times) - w) / (times[-1] - times[w - 1]))
    rates = {k: statistics.median(v) for k, v in runs.items()}
    return {"runs_samples_per_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
            "benchmark": "jax_train throughput", "model": TINY_SHAPES_JAX_MODEL, "image_size": 64,
            "context_len": 24, "batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup_steps,
            "samples_per_s": {k: round(v, 2) for k, v in rates.items()},
            "jax_over_torch": round(rates["jax"] / rates["torch"], 3), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "load_average": load_average()}


def _write(path: "str | None", out: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("recipe", "throughput"), default="throughput")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="throughput: runs of each trainer, alternating")
    ap.add_argument("--model-config", default=None, help="recipe: a JAX model config (JSON) instead of the recipe's")
    ap.add_argument("--recipe-steps", type=int, default=None, help="recipe: train this many steps (default: the "
                    "recipe's 800)")
    ap.add_argument("--eval-every", type=int, default=None, help="recipe, with --recipe-steps: evaluate every N steps")
    ap.add_argument("--engine", choices=("jax", "torch"), default="jax", help="recipe: which trainer runs the "
                    "recipe (torch: clipzoo train --recipe tiny-shapes, for a seed-for-seed comparison)")
    ap.add_argument("--seed", type=int, default=None, help="recipe: the run's seed (default: the recipe's, 0)")
    ap.add_argument("--init", choices=("flax", "torch"), default=None, help="recipe: the initial weights (default: "
                    "the recipe's, torch — the torch trainer's draw for the seed)")
    ap.add_argument("--output", default=None, help="recipe: the run folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args()
    out = recipe(args) if args.mode == "recipe" else throughput(args)
    _write(args.out, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
