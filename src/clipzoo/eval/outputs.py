"""Write a task's result: the JSON record and, beside it, the pictures that go with it.

``result.json`` → ``result.confusion.png`` and ``result.per_class.png`` (classification tasks),
``result.recall_at_k.png`` (retrieval).
"""
from __future__ import annotations

import os
from pathlib import Path

from .plots import per_class_recall, plot_confusion_matrix, plot_per_class_accuracy, plot_recall_at_k
from .results import write_result

__all__ = ["save_task_result", "plot_paths"]

# classification plots get unreadable (and slow) past this many classes: bars and matrix still work,
# but annotations are dropped by the plot functions themselves
PLOTTED_TASKS = ("zeroshot_classification", "knn", "linear_probe", "zeroshot_retrieval")


def plot_paths(json_path: "str | os.PathLike") -> dict[str, Path]:
    p = Path(json_path)
    stem = p.with_suffix("") if p.suffix == ".json" else p
    return {name: stem.with_name(f"{stem.name}.{name}.png") for name in ("confusion", "per_class", "recall_at_k")}


def save_task_result(result, path: "str | os.PathLike", plots: bool = True) -> list[Path]:
    """Write ``result.record`` as JSON at ``path`` and its plots beside it; returns the written paths."""
    written = [write_result(path, result.record)]
    if not plots:
        return written
    d = result.details
    names = plot_paths(path)
    name = " ".join(str(result.record[k]) for k in ("model", "pretrained") if result.record[k])  # clipzoo/tiny-shapes
    title = f"{name} — {result.record['dataset']}"
    if "predictions" in d and d.get("targets") is not None:
        targets, preds = d["targets"], d["predictions"]
        classnames = d.get("classnames")
        num_classes = len(classnames) if classnames else int(max(int(targets.max()), int(preds.max()))) + 1
        if not classnames:
            classnames = [str(i) for i in range(num_classes)]
        task = result.record["task"]
        written.append(plot_confusion_matrix(targets, preds, classnames, names["confusion"],
                                             title=f"{task}: {title}"))
        recalls = per_class_recall(targets, preds, num_classes)
        written.append(plot_per_class_accuracy(dict(zip(classnames, recalls)), names["per_class"],
                                               title=f"{task} per-class accuracy: {title}"))
    if "curves" in d:
        written.append(plot_recall_at_k(d["curves"], names["recall_at_k"], title=f"retrieval recall@k: {title}"))
    return written
