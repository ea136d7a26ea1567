"""Multi-label metrics: each class's average precision over the images' ranking, and their mean.

CLIP_benchmark's metric for ``voc2007_multilabel`` (its ``average_precision_per_class``, from torchnet's
meter): no interpolation, every image ranked, 0 for a class no image has.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .metrics import EvalInputError

__all__ = ["average_precision_per_class", "multilabel_metrics"]


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
