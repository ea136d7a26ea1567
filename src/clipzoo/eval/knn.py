"""k-nearest-neighbour classification on frozen features (DINO-style weighted votes)."""
from __future__ import annotations

from .metrics import knn_metrics, knn_scores

__all__ = ["knn_metrics", "knn_scores"]
