"""Multi-label metrics: each class's average precision over the images' ranking, and their mean.

CLIP_benchmark's metric for ``voc2007_multilabel`` (its ``average_precision_per_class``, from torchnet's
meter): no interpolation, every image ranked, 0 for a class no image has. ELEVATER's ``11point_mAP`` for
voc-2007-classification (:func:`map_11_points`, interpolated at 11 recalls, classes without a positive left out).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .metrics import EvalInputError

__all__ = ["average_precision_per_class", "multilabel_metrics", "map_11_points", "multilabel_targets"]


def average_precision_per_class(scores: Any, targets: Any) -> torch.Tensor:
    """(C,) average precision of each class's ranking of the images: the mean, over the images that have
    the class, of the precision among the images ranked at or above them (0 for a class no image has)."""
    scores = torch.as_tensor(scores).float()
    targets = torch.as_tensor(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise EvalInputError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be (N, C)")
    order = torch.argsort(scores, dim=0, descending=True)
    hits = torch.gather(targets.float() > 0, 0, order).float()  # (N, C): is the image at rank r positive?
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float32).unsqueeze(1)
    precision = hits.cumsum(0) / ranks
    positives = hits.sum(0)
    return (precision * hits).sum(0) / positives.clamp(min=1)


def multilabel_metrics(scores: Any, targets: Any, classnames: Sequence[str] | None = None) -> dict[str, Any]:
    """``mean_average_precision`` (CLIP_benchmark's metric) and the per-class values."""
    ap = average_precision_per_class(scores, targets)
    names = list(classnames) if classnames is not None else [str(i) for i in range(len(ap))]
    return {"mean_average_precision": ap.mean().item(),
            "average_precision_per_class": dict(zip(names, ap.tolist()))}


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
