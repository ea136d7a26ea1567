"""Write a task's result: the JSON record and, beside it, the pictures that go with it.

``result.json`` → ``result.confusion.png`` and ``result.per_class.png`` (classification tasks),
``result.recall_at_k.png`` (retrieval).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..datasets.shards import ListShard
from ..errors import warn_user
from ..files import check_output_file, inside
from .plots import (
    per_class_recall,
    plot_confusion_matrix,
    plot_per_class_accuracy,
    plot_recall_at_k,
    too_many_classes,
)
from .results import write_result

__all__ = ["save_task_result", "plot_paths", "data_inputs", "data_folders", "check_outputs", "SIDECARS"]

SIDECARS = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt", "manifest.json",
            "nshards.txt")
"""The files a data set's reader takes from beside the data, or one folder up (CLIP_benchmark's layout)."""

PLOTTED_TASKS = ("zeroshot_classification", "knn", "linear_probe", "zeroshot_retrieval")


def plot_paths(json_path: "str | os.PathLike") -> dict[str, Path]:
    p = Path(json_path)
    stem = p.with_suffix("") if p.suffix == ".json" else p
    return {name: stem.with_name(f"{stem.name}.{name}.png") for name in ("confusion", "per_class", "recall_at_k")}


def save_task_result(result, path: "str | os.PathLike", plots: bool = True,
                     note: "Callable[[str], object] | None" = None) -> list[Path]:
    """Write ``result.record`` as JSON at ``path`` and its plots beside it; returns the written paths. A plot left
    out (the per-class plots past :data:`~clipzoo.constants.MAX_PLOT_CLASSES` classes) is said in one line
    through ``note`` (by default a ``UserWarning``)."""
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
        if (why := too_many_classes(len(classnames))) is not None:
            say = note or warn_user
            say(f"{names['confusion'].name} and {names['per_class'].name} not drawn: {why}")
        else:
            written.append(plot_confusion_matrix(targets, preds, classnames, names["confusion"],
                                                 title=f"{task}: {title}"))
            recalls = per_class_recall(targets, preds, num_classes)
            written.append(plot_per_class_accuracy(dict(zip(classnames, recalls)), names["per_class"],
                                                   title=f"{task} per-class accuracy: {title}"))
    if "curves" in d:
        written.append(plot_recall_at_k(d["curves"], names["recall_at_k"], title=f"retrieval recall@k: {title}"))
    return written


def data_inputs(data) -> list[str]:
    """The local paths a :class:`~clipzoo.datasets.DataSource` reads: where it is, the :data:`SIDECARS` beside it
    (or one folder up), its shard files and each image a folder or a CSV lists — what an output must not replace
    (``-o`` onto a CSV's ``classnames.txt``, or onto one of its images, replaced them with the result JSON)."""
    location = str(data.location or "")
    if not location or "://" in location:
        return []
    out = [location]
    folder = location if os.path.isdir(location) else os.path.dirname(location) or "."
    for base in dict.fromkeys((folder, os.path.dirname(os.path.abspath(folder)))):
        out.extend(p for p in (os.path.join(base, name) for name in SIDECARS) if os.path.lexists(p))
    for shard in data.shards:
        if isinstance(shard, ListShard):
            out.extend(r.image for r in shard.records if isinstance(r.image, str) and "://" not in r.image)
        elif isinstance(getattr(shard, "name", None), str) and "://" not in shard.name:
            out.append(shard.name)
    return out


def data_folders(data) -> list[str]:
    """The local folder a data set is (an image folder, a folder of shards, a shapes or CLIP_benchmark folder): a
    file written inside it can become part of the data (a plot in a class folder is one more image)."""
    location = str(data.location or "")
    return [location] if location and "://" not in location and os.path.isdir(location) else []


def check_outputs(paths, inputs, folders, flag: str, error: type) -> None:
    """Before any work: ``error`` when one of ``paths`` (a result and its plots) would replace one of ``inputs``
    (:func:`~clipzoo.files.check_output_file`) or lands inside one of the data set ``folders``."""
    for path in paths:
        check_output_file(path, inputs, flag, error)
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
        for folder in folders:
            if inside(real, os.path.realpath(folder)):
                raise error(f"{flag} {os.fspath(path)!r} is inside the data set folder {folder!r}: a file written "
                            "there becomes part of the data; choose a place outside it")
