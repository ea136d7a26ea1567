"""ELEVATER's image-classification protocol on local data: zero-shot, full linear probe, few-shot linear probe
(ELEVATER's shot counts and sampling seeds, mean ± std) and fine-tune; a table per data set and the ELEVATER
average, as JSON and markdown.

Each data set is scored with ELEVATER's metric for it (``accuracy``: top-1; ``mean-per-class``: mean per-class
recall; ``roc_auc``: area under the ROC of class 1; ``11point_mAP`` for the multilabel voc-2007-classification:
:func:`map_11_points` of the zero-shot probabilities, zero-shot only). The linear modes are ELEVATER's linear
probe: its fine-tune recipe with the image tower frozen (:mod:`clipzoo.eval.elevater_finetune` on precomputed
features: the language-initialised head, the same learning-rate / weight-decay search on the validation split, a
final run on train + val); few-shot subsets are drawn by vision-datasets' ``SampleFewShot`` exactly as ELEVATER
draws them.
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
from .elevater_data import ElevaterSet, catalog, fewshot_ids, open_sets, read_split
from .elevater_finetune import FinetuneConfig, finetune
from .linear_probe import validation_split
from .metrics import zeroshot_metrics
from .zeroshot import class_weights

__all__ = ["MODES", "DEFAULT_SHOTS", "DEFAULT_SEEDS", "run_elevater", "evaluate_set", "score_logits",
           "map_11_points", "multilabel_targets", "check_multilabel_mode", "elevater_markdown", "write_elevater"]

MODES = ("zeroshot", "linear", "fewshot", "finetune")
DEFAULT_SHOTS = 5
DEFAULT_SEEDS: tuple[int, ...] = tuple(catalog()["seeds"])
ZEROSHOT_SCALE = 100.0  # ELEVATER's zero-shot probabilities: softmax(100 * cosine) over the classes


def map_11_points(targets: np.ndarray, scores: np.ndarray, n_points: int = 11) -> float:
    """ELEVATER's ``11point_mAP`` (vision-evaluation's ``MeanAveragePrecisionNPointsEvaluator(11)``): for each
    class with a positive, the precision interpolated at recalls 1.0, 0.9, …, 0.0 (the best precision at a recall
    at least that) of sklearn's precision–recall curve of its scores, averaged; then the mean over classes."""
    from sklearn.metrics import precision_recall_curve

    targets, scores = np.asarray(targets), np.asarray(scores, dtype=float)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise EvalInputError(f"11-point mAP needs (N, C) targets and scores, got {targets.shape} and {scores.shape}")
    kept = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    if not kept:
        raise EvalInputError("11-point mAP needs at least one positive label in the test split")
    per_class = []
    for c in kept:
        precision, recall, _ = precision_recall_curve(targets[:, c], scores[:, c])
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0
                  for t in np.linspace(1, 0, n_points)]
        per_class.append(float(np.mean(points)))
    return float(np.mean(per_class))


def multilabel_targets(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(N, C) 0/1 targets from each image's class ids (ELEVATER's ``multilabel_to_vec``)."""
    out = np.zeros((len(labels), num_classes), dtype=int)
    for row, ids in enumerate(labels):
        out[row, list(ids)] = 1
    return out


def check_multilabel_mode(ds: ElevaterSet, mode: str) -> None:
    """A multilabel set is scored zero-shot only here (its linear / fine-tune heads are not implemented)."""
    if ds.multilabel and mode != "zeroshot":
        raise EvalInputError(f"data set {ds.name!r} is multilabel: only --mode zeroshot supports it here "
                             "(leave it out of --datasets for linear, fewshot and finetune)")


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


def _train_val(data_root, ds: ElevaterSet, shots, seed):
    """(train split, few-shot indices into it or None, val split or None)."""
    train = read_split(data_root, ds, "train")
    keep = None if shots is None else _index(train.ids, fewshot_ids(data_root, ds, shots, seed))
    val = read_split(data_root, ds, "val") if "val" in ds.splits and shots is None else None
    return train, keep, val


def _finetune_set(model, data_root, ds, test, weights, shots, seeds, cfg: FinetuneConfig) -> dict[str, Any]:
    x_test, y_test = model.pixels(test.images), torch.tensor(test.labels)
    runs, chosen = [], []
    for seed in seeds:
        train, keep, val = _train_val(data_root, ds, shots, seed)
        x, y = model.pixels(train.images), torch.tensor(train.labels)
        if keep is not None:
            x, y = x[keep], y[keep]
        if val is not None:
            xv, yv = model.pixels(val.images), torch.tensor(val.labels)
        else:
            fit, held = validation_split(y.numpy(), 0.2, seed)
            x, y, xv, yv = x[fit], y[fit], x[held], y[held]
        out = finetune(model, weights, (x, y), (xv, yv), (x_test, y_test),
                       FinetuneConfig(**{**cfg.__dict__, "seed": int(seed)}))
        runs.append(score_logits(out["logits"], y_test, ds.metric, len(ds.classnames)))
        chosen.append({"seed": int(seed), "lr": out["lr"], "wd": out["wd"], "val_acc1": out["val_acc1"]})
    return {**_mean_std(runs), "runs": chosen}


def evaluate_set(model, data_root: str | Path, ds: ElevaterSet, mode: str, *, shots: int | None = None,
                 seeds: Sequence[int] = DEFAULT_SEEDS, batch_size: int = 64,
                 finetune_config: FinetuneConfig | None = None) -> dict[str, Any]:
    """One data set in one mode: its metrics (``score`` is ELEVATER's metric), with ``_std`` over seeds."""
    if mode not in MODES:
        raise EvalInputError(f"unknown --mode {mode!r}: choose from {', '.join(MODES)}")
    check_multilabel_mode(ds, mode)
    test = read_split(data_root, ds, "test")
    n_cls = len(ds.classnames)
    weights = class_weights(model, ds.classnames, ds.templates)
    if ds.multilabel:
        f_test = F.normalize(model.encode_image(test.images, batch_size=batch_size, normalize=False).float(), dim=-1)
        probs = (ZEROSHOT_SCALE * f_test @ F.normalize(weights.float(), dim=-1).to(f_test.device).T).softmax(-1)
        score = map_11_points(multilabel_targets(test.labels, n_cls), probs.cpu().numpy())
        return {"map_11_points": score, "score": score}
    y_test = torch.tensor(test.labels)
    if mode == "finetune":
        return _finetune_set(model, data_root, ds, test, weights, shots, seeds if shots else seeds[:1],
                             finetune_config or FinetuneConfig())
    f_test = model.encode_image(test.images, batch_size=batch_size, normalize=False)
    if mode == "zeroshot":
        return score_logits(model.similarity(F.normalize(f_test, dim=-1), weights).float().cpu(), y_test, ds.metric,
                            n_cls)
    if mode == "fewshot" and shots is None:
        shots = DEFAULT_SHOTS
    runs, chosen, features = [], [], None
    cfg = finetune_config or FinetuneConfig()
    for seed in (seeds if mode == "fewshot" else seeds[:1]):
        train, keep, val = _train_val(data_root, ds, shots if mode == "fewshot" else None, seed)
        if features is None:  # one embedding pass; the seeds only choose rows
            features = model.encode_image(train.images, batch_size=batch_size, normalize=False)
        f, y = features, torch.tensor(train.labels)
        if keep is not None:
            f, y = f[keep], y[keep]
        if val is not None:
            fv, yv = model.encode_image(val.images, batch_size=batch_size, normalize=False), torch.tensor(val.labels)
        else:
            fit, held = validation_split(y.numpy(), 0.2, seed)
            f, y, fv, yv = f[fit], y[fit], f[held], y[held]
        out = finetune(model, weights, (f, y), (fv, yv), (f_test, y_test), FinetuneConfig(**{**cfg.__dict__,
                                                                                             "seed": int(seed)}))
        runs.append(score_logits(out["logits"], y_test, ds.metric, n_cls))
        chosen.append({"seed": int(seed), "lr": out["lr"], "wd": out["wd"], "val_acc1": out["val_acc1"]})
    return {**_mean_std(runs), "runs": chosen}


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
    for ds in sets:
        check_multilabel_mode(ds, mode)
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
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(elevater_markdown(result), encoding="utf-8")
    return {k: str(v) for k, v in paths.items()}
