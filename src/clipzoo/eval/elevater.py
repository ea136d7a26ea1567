"""ELEVATER's image-classification protocol on local data: zero-shot, full linear probe, few-shot linear probe
(ELEVATER's shot counts and sampling seeds, mean ± std) and fine-tune; a table per data set and the ELEVATER
average, as JSON and markdown.

Each data set is scored with ELEVATER's metric for it (``accuracy``: top-1; ``mean-per-class``: mean per-class
recall; ``roc_auc``: area under the ROC of class 1; ``11point_mAP`` for the multilabel voc-2007-classification:
:func:`map_11_points` of the class probabilities). The linear modes are ELEVATER's linear probe: its fine-tune
recipe with the image tower frozen (:mod:`clipzoo.eval.elevater_finetune` on precomputed features: the
language-initialised head, the same learning-rate / weight-decay search on the validation split, a final run on
train + val); few-shot subsets are drawn by vision-datasets' ``SampleFewShot`` exactly as ELEVATER draws them.

A multilabel set runs in every mode as ELEVATER runs it: zero-shot probabilities ``softmax(100 · cosine)``; the
linear, fewshot and finetune heads train on (N, C) 0/1 targets with BCE-with-logits, the search and the test score
being the 11-point mAP of ``softmax(logits)``; without a val split on disk the validation images are ELEVATER's
greedy multilabel split of train (:func:`~clipzoo.eval.elevater_data.multilabel_val_split`, deterministic; a
multiclass set's is the seeded stratified one).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import EvalInputError
from ..files import atomic_write_text
from .elevater_data import ElevaterSet, ElevaterSplit, catalog, fewshot_ids, multilabel_val_split, open_sets, read_split
from .elevater_finetune import FinetuneConfig, finetune
from .linear_probe import validation_split
from .metrics import zeroshot_metrics
from .multilabel_metrics import map_11_points, multilabel_targets
from .zeroshot import class_weights

__all__ = ["MODES", "DEFAULT_SHOTS", "DEFAULT_SEEDS", "VAL_FRACTION", "run_elevater", "evaluate_set", "score_logits",
           "score_set", "map_11_points", "multilabel_targets", "elevater_markdown", "write_elevater"]

MODES = ("zeroshot", "linear", "fewshot", "finetune")
DEFAULT_SHOTS = 5
DEFAULT_SEEDS: tuple[int, ...] = tuple(catalog()["seeds"])
ZEROSHOT_SCALE = 100.0  # ELEVATER's zero-shot probabilities: softmax(100 * cosine) over the classes
VAL_FRACTION = 0.2  # ELEVATER's val_split of train when a set has no val split on disk


def score_logits(logits: torch.Tensor, targets: torch.Tensor, metric: str, num_classes: int) -> dict[str, float]:
    """acc1 (acc5 with ≥ 5 classes), mean per-class recall, and ``score``: ELEVATER's metric for the data set."""
    out = zeroshot_metrics(logits, targets, num_classes=num_classes)
    if metric == "mean-per-class":
        out["score"] = out["mean_per_class_recall"]
    elif metric == "roc_auc":
        from sklearn.metrics import roc_auc_score

        if len(torch.unique(targets)) < 2:
            raise EvalInputError("roc_auc needs both classes in the test split")
        out["score"] = float(roc_auc_score(targets.numpy(), torch.softmax(logits.float(), 1)[:, 1].numpy()))
    else:
        out["score"] = out["acc1"]
    return out


def _mean_std(runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = np.array([r[key] for r in runs], dtype=float)
        out[key], out[key + "_std"] = float(values.mean()), float(values.std())
    return out


def _index(ids: list[Any], wanted: list[Any]) -> np.ndarray:
    where = {i: n for n, i in enumerate(ids)}
    return np.array([where[i] for i in wanted], dtype=int)


def _targets(ds: ElevaterSet, split: ElevaterSplit) -> torch.Tensor:
    """Class ids (N,), or (N, C) 0/1 float targets for a multilabel set."""
    if ds.multilabel:
        return torch.tensor(multilabel_targets(split.labels, len(ds.classnames)), dtype=torch.float32)
    return torch.tensor(split.labels)


def score_set(ds: ElevaterSet, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """A data set's test metrics from its head's logits: :func:`score_logits`, or for a multilabel set
    ``map_11_points`` (= ``score``) of ``softmax(logits)``, the probabilities ELEVATER's metric reads."""
    if ds.multilabel:
        score = map_11_points(targets.numpy(), logits.float().softmax(-1).cpu().numpy())
        return {"map_11_points": score, "score": score}
    return score_logits(logits, targets, ds.metric, len(ds.classnames))


def _hold_out(ds: ElevaterSet, y: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if ds.multilabel:
        return multilabel_val_split(y.numpy(), VAL_FRACTION)
    return validation_split(y.numpy(), VAL_FRACTION, seed)


def _train_val(data_root, ds: ElevaterSet, shots, seed):
    """(train split, few-shot indices into it or None, val split or None)."""
    train = read_split(data_root, ds, "train")
    keep = None if shots is None else _index(train.ids, fewshot_ids(data_root, ds, shots, seed))
    val = read_split(data_root, ds, "val") if "val" in ds.splits and shots is None else None
    return train, keep, val


def _fit_seeds(model, data_root, ds, test, weights, shots, seeds, cfg: FinetuneConfig, encode) -> dict[str, Any]:
    """Train a head per seed (``encode`` maps a split's images to pixels, or to frozen features) and score it on
    ``test`` = (encoded test images, test targets)."""
    runs, chosen, cache = [], [], {}
    for seed in seeds:
        train, keep, val = _train_val(data_root, ds, shots, seed)
        if "train" not in cache:  # one pass over the train images; the seeds only choose rows
            cache["train"] = encode(train.images)
        x, y = cache["train"], _targets(ds, train)
        if keep is not None:
            x, y = x[keep], y[keep]
        if val is not None:
            xv, yv = encode(val.images), _targets(ds, val)
        else:
            fit, held = _hold_out(ds, y, seed)
            x, y, xv, yv = x[fit], y[fit], x[held], y[held]
        out = finetune(model, weights, (x, y), (xv, yv), test, FinetuneConfig(**{**cfg.__dict__, "seed": int(seed)}))
        runs.append(score_set(ds, out["logits"], test[1]))
        chosen.append({"seed": int(seed), "lr": out["lr"], "wd": out["wd"],
                       **{k: v for k, v in out.items() if k.startswith("val_")}})
    return {**_mean_std(runs), "runs": chosen}


def evaluate_set(model, data_root: str | Path, ds: ElevaterSet, mode: str, *, shots: int | None = None,
                 seeds: Sequence[int] = DEFAULT_SEEDS, batch_size: int = 64,
                 finetune_config: FinetuneConfig | None = None) -> dict[str, Any]:
    """One data set in one mode: its metrics (``score`` is ELEVATER's metric), with ``_std`` over seeds."""
    if mode not in MODES:
        raise EvalInputError(f"unknown --mode {mode!r}: choose from {', '.join(MODES)}")
    test = read_split(data_root, ds, "test")
    weights = class_weights(model, ds.classnames, ds.templates)
    y_test = _targets(ds, test)
    if mode == "zeroshot":
        f_test = F.normalize(model.encode_image(test.images, batch_size=batch_size, normalize=False), dim=-1)
        if ds.multilabel:
            cosine = f_test.float() @ F.normalize(weights.float(), dim=-1).to(f_test.device).T
            score = map_11_points(y_test.numpy(), (ZEROSHOT_SCALE * cosine).softmax(-1).cpu().numpy())
            return {"map_11_points": score, "score": score}
        return score_logits(model.similarity(f_test, weights).float().cpu(), y_test, ds.metric, len(ds.classnames))
    if mode == "finetune":  # pixels: the image tower trains
        def encode(images):
            return model.pixels(images)
        seeds = seeds if shots else seeds[:1]
    else:  # frozen features: the head alone trains
        def encode(images):
            return model.encode_image(images, batch_size=batch_size, normalize=False)
        shots = (shots or DEFAULT_SHOTS) if mode == "fewshot" else None
        seeds = seeds if mode == "fewshot" else seeds[:1]
    return _fit_seeds(model, data_root, ds, (encode(test.images), y_test), weights, shots, seeds,
                      finetune_config or FinetuneConfig(), encode)


def run_elevater(model, data_root: str | Path, mode: str, *, datasets: Sequence[str] | None = None,
                 shots: int | None = None, seeds: Sequence[int] = DEFAULT_SEEDS, batch_size: int = 64,
                 finetune_config: FinetuneConfig | None = None, model_name: str | None = None) -> dict[str, Any]:
    """Every data set found under ``data_root`` (or ``datasets``) in ``mode``; ``average`` is ELEVATER's
    (the mean of the per-data-set scores)."""
    if mode not in MODES:
        raise EvalInputError(f"unknown --mode {mode!r}: choose from {', '.join(MODES)}")
    if shots is not None and shots < 1:
        raise EvalInputError(f"--shots must be at least 1, got {shots}")
    if not seeds:
        raise EvalInputError("give at least one seed")
    if mode == "fewshot" and shots is None:
        shots = DEFAULT_SHOTS
    sets = open_sets(data_root, list(datasets) if datasets else None)
    rows = {}
    for ds in sets:
        row = evaluate_set(model, data_root, ds, mode, shots=shots if mode in ("fewshot", "finetune") else None,
                           seeds=seeds, batch_size=batch_size, finetune_config=finetune_config)
        rows[ds.name] = {"metric": ds.metric, **row}
    scores = [r["score"] for r in rows.values()]
    return {"benchmark": "elevater", "mode": mode, "model": model_name or model.card.alias,
            "shots": shots if mode in ("fewshot", "finetune") else None,
            "seeds": list(seeds) if mode == "fewshot" or (mode == "finetune" and shots) else list(seeds[:1]),
            "datasets": rows, "average": float(np.mean(scores))}


def elevater_markdown(result: dict[str, Any]) -> str:
    """The table: one row per data set (metric, score [± std], acc1), then the ELEVATER average."""
    shots = f", {result['shots']} shots" if result.get("shots") else ""
    lines = [f"# ELEVATER {result['mode']}{shots}: {result['model']}", "",
             "| data set | metric | score | acc1 |", "|---|---|---:|---:|"]
    for name, row in result["datasets"].items():
        std = f" ± {100 * row['score_std']:.2f}" if "score_std" in row and len(result["seeds"]) > 1 else ""
        acc1 = f"{100 * row['acc1']:.2f}" if "acc1" in row else "–"  # a multilabel set has no top-1
        lines.append(f"| {name} | {row['metric']} | {100 * row['score']:.2f}{std} | {acc1} |")
    lines.append(f"| **ELEVATER average** | | **{100 * result['average']:.2f}** | |")
    return "\n".join(lines) + "\n"


def write_elevater(result: dict[str, Any], out: str | Path) -> dict[str, str]:
    """Write ``OUT.json`` and ``OUT.md`` (``out`` is a prefix; a folder gets ``elevater_MODE``)."""
    out = Path(out)
    if out.is_dir() or str(out).endswith("/"):
        out = out / f"elevater_{result['mode']}"
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": out.with_name(out.name + ".json"), "md": out.with_name(out.name + ".md")}
    atomic_write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    atomic_write_text(paths["md"], elevater_markdown(result))
    return {k: str(v) for k, v in paths.items()}
