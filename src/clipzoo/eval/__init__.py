"""Evaluation: zero-shot classification, retrieval, linear probe, k-NN, clustering, text retrieval and
text similarity; CLIP_benchmark-compatible results, reports and plots.

The metric functions (:mod:`clipzoo.eval.metrics` and the task modules) work on features, logits and
targets; :class:`~clipzoo.eval.runner.Evaluator` adds the model and the data (one embedding pass per
data set, shared by every task). Plots and reports import matplotlib only when called.
"""
from __future__ import annotations

from .clustering import cluster_metrics, kmeans
from .linear_probe import linear_probe
from .metrics import (
                      EvalInputError,
                      accuracy,
                      clustering_scores,
                      knn_metrics,
                      knn_scores,
                      mean_per_class_recall,
                      retrieval_metrics,
                      retrieval_metrics_from_scores,
                      zeroshot_logits,
                      zeroshot_metrics,
)
from .results import make_result, output_path, read_result, write_result
from .retrieval import flatten_captions, retrieval_evaluate
from .runner import IMAGE_TASKS, TASKS, TEXT_TASKS, DatasetFeatures, Evaluator, TaskResult, supported_tasks
from .similarity import read_pairs, similarity_evaluate, similarity_metrics
from .text_retrieval import load_text_retrieval, text_retrieval_evaluate, text_retrieval_metrics
from .zeroshot import class_weights, zeroshot_classify, zeroshot_predict

__all__ = [
    "EvalInputError", "accuracy", "mean_per_class_recall", "zeroshot_metrics", "zeroshot_logits",
    "zeroshot_classify", "zeroshot_predict", "class_weights", "retrieval_metrics",
    "retrieval_metrics_from_scores", "retrieval_evaluate", "flatten_captions", "knn_scores", "knn_metrics",
    "kmeans", "cluster_metrics", "clustering_scores", "linear_probe", "text_retrieval_metrics",
    "text_retrieval_evaluate", "load_text_retrieval", "similarity_metrics", "similarity_evaluate", "read_pairs",
    "make_result", "write_result", "read_result", "output_path", "Evaluator", "TaskResult", "DatasetFeatures",
    "supported_tasks", "TASKS", "IMAGE_TASKS", "TEXT_TASKS",
]
