"""Evaluation: zero-shot classification, retrieval, k-NN, clustering; CLIP_benchmark-compatible results.

The metric functions (:mod:`clipzoo.eval.metrics`) work on features, logits and targets; the task
modules add the model side (encoding images and class names).
"""
from __future__ import annotations

from .clustering import cluster_metrics, kmeans
from .metrics import (EvalInputError, accuracy, clustering_scores, knn_metrics, knn_scores,
                      mean_per_class_recall, retrieval_metrics, retrieval_metrics_from_scores,
                      zeroshot_logits, zeroshot_metrics)
from .results import make_result, output_path, read_result, write_result
from .retrieval import flatten_captions, retrieval_evaluate
from .zeroshot import class_weights, zeroshot_classify, zeroshot_predict

__all__ = [
    "EvalInputError", "accuracy", "mean_per_class_recall", "zeroshot_metrics", "zeroshot_logits",
    "zeroshot_classify", "zeroshot_predict", "class_weights", "retrieval_metrics",
    "retrieval_metrics_from_scores", "retrieval_evaluate", "flatten_captions", "knn_scores", "knn_metrics",
    "kmeans", "cluster_metrics", "clustering_scores", "make_result", "write_result", "read_result",
    "output_path",
]
