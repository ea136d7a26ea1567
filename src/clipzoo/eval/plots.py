"""Pictures of evaluation results: confusion matrix, per-class accuracy, retrieval recall@k.

Each function validates its input (:class:`EvalInputError`), draws with matplotlib's Agg renderer,
writes a PNG atomically (temporary file + ``os.replace``) and returns its path. matplotlib is
imported only when a plot is drawn (``import clipzoo.eval`` does not import it), and figures are
built as :class:`matplotlib.figure.Figure` objects on an Agg canvas, never through ``pyplot``: no
global backend switch (an interactive session keeps its backend) and no figure is left open
(``pyplot.get_fignums()`` is unchanged).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import MAX_PLOT_CLASSES
from ..errors import EvalInputError, MissingExtraError
from ..files import atomic_write

__all__ = ["per_class_recall", "confusion_matrix", "plot_confusion_matrix", "plot_recall_at_k",
           "plot_per_class_accuracy", "too_many_classes", "literal", "MAX_PLOT_CLASSES"]

DPI = 100
ANNOTATE_MAX_CLASSES = 20      # confusion-matrix cells get their value written up to this many classes
BAR_LABELS_MAX_CLASSES = 60    # per-class bars get their value written up to this many classes


# ------------------------------------------------------------------ inputs
def _ids(x: Any, name: str) -> np.ndarray:
    if x is None:
        raise EvalInputError(f"{name} is missing")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise EvalInputError(f"{name} cannot be read as an array ({err})") from None
    if a.ndim != 1:
        raise EvalInputError(f"{name} must be 1-D class ids, got shape {a.shape}")
    if a.size == 0:
        raise EvalInputError(f"{name} is empty: nothing to plot")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise EvalInputError(f"{name} must be integer class ids")
    elif a.dtype.kind not in "iub":
        raise EvalInputError(f"{name} must be integer class ids, got {a.dtype}")
    return a.astype(np.int64)


def _pair(targets: Any, predictions: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if int(num_classes) < 1:
        raise EvalInputError(f"num_classes must be at least 1, got {num_classes}")
    t, p = _ids(targets, "targets"), _ids(predictions, "predictions")
    if t.shape != p.shape:
        raise EvalInputError(f"targets ({t.shape[0]}) and predictions ({p.shape[0]}) differ in length")
    for name, a in (("targets", t), ("predictions", p)):
        if a.min() < 0 or a.max() >= num_classes:
            raise EvalInputError(f"{name} hold class ids outside [0, {num_classes}) "
                                 f"(min {int(a.min())}, max {int(a.max())})")
    return t, p


def confusion_matrix(targets: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """Counts, ``[true class, predicted class]``, shape ``(num_classes, num_classes)``."""
    t, p = _pair(targets, predictions, int(num_classes))
    n = int(num_classes)
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def per_class_recall(targets: Any, predictions: Any, num_classes: int) -> list[float]:
    """Recall (accuracy) of each class: correct / examples of that class; NaN for a class absent
    from ``targets``. Their NaN-ignoring mean is ``mean_per_class_recall``. Linear in the classes (the confusion
    matrix it was read from took 3.8 GB at 21,841 classes)."""
    t, p = _pair(targets, predictions, int(num_classes))
    support = np.bincount(t, minlength=int(num_classes))
    correct = np.bincount(t[t == p], minlength=int(num_classes))
    return [float(correct[i] / support[i]) if support[i] else math.nan for i in range(int(num_classes))]


def too_many_classes(num_classes: int) -> "str | None":
    """Why the per-class plots of ``num_classes`` classes are not drawn (None: they are)."""
    if num_classes <= MAX_PLOT_CLASSES:
        return None
    return (f"{num_classes} classes are more than a per-class plot takes ({MAX_PLOT_CLASSES}, "
            "clipzoo.constants.MAX_PLOT_CLASSES)")


def _finite_fraction(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EvalInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isnan(v) and not 0.0 <= v <= 1.0:
        raise EvalInputError(f"{name} must be in [0, 1], got {v}")
    return v


# ------------------------------------------------------------------ drawing
def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("plots need matplotlib, which is not installed; pip install 'clipzoo[eval]' "
                                "(or pass --no-plots)") from None
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: "str | os.PathLike") -> Path:
    """Write ``fig`` as PNG at ``path`` atomically, then release it."""
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))
    finally:
        fig.clear()


def literal(texts: Any) -> None:
    """Draw these matplotlib ``Text``s as they are: a ``$`` in a class, model or data set name is text, not the
    start of mathtext (``$\\undefined$`` stopped the run with a 340-line ParseException)."""
    for text in texts:
        text.set_parse_math(False)


def _label_size(n: int, base: float = 10.0, room: float = 300.0) -> float:
    return max(3.5, min(base, room / max(n, 1)))


def plot_confusion_matrix(targets: Any, predictions: Any, classnames: Sequence[str], path: "str | os.PathLike",
                          normalize: bool = True, title: str | None = None) -> Path:
    """Confusion matrix (rows = true class, columns = predicted class) as a PNG.

    ``normalize`` divides each row by its class's count (the diagonal is then the per-class recall;
    a class absent from ``targets`` has a row of zeros). Cells are annotated up to
    :data:`ANNOTATE_MAX_CLASSES` classes; the figure and tick labels scale so 100+ classes stay legible.
    """
    if isinstance(classnames, str) or not isinstance(classnames, Sequence) or len(classnames) == 0:
        raise EvalInputError("classnames must be a non-empty list of class names")
    n = len(classnames)
    if (why := too_many_classes(n)) is not None:  # its cells grow with the square of the classes
        raise EvalInputError(f"{why}; plot a subset of the classes")
    cm = confusion_matrix(targets, predictions, n).astype(np.float64)
    if normalize:
        support = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    side = min(max(5.0, 2.5 + 0.24 * n), 30.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(cm.max()), 1.0)
    im = ax.imshow(cm, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of the true class" if normalize else "examples")
    size = _label_size(n, 10.0, 700.0)
    ticks = np.arange(n)
    names = [str(c) for c in classnames]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=90, fontsize=size, parse_math=False)  # names are text, never mathtext
    ax.set_yticklabels(names, fontsize=size, parse_math=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= ANNOTATE_MAX_CLASSES:
        cell = max(5.0, min(9.0, 120.0 / n))
        for i in range(n):
            for j in range(n):
                v = cm[i, j]
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=cell,
                        color="white" if v > vmax / 2 else "black")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"),
                 parse_math=False)
    return _save(fig, path)


_CURVE_KEY = re.compile(r"^(?P<name>.+?)_?recall@(?P<k>\d+)$")


def _curves(curves: Any) -> dict[str, list[tuple[int, float]]]:
    if not isinstance(curves, Mapping) or not curves:
        raise EvalInputError("curves must be a non-empty mapping: {name: {k: recall}} or "
                             "{'image_retrieval_recall@1': …} metrics")
    if all(not isinstance(v, Mapping) for v in curves.values()):
        # flat retrieval metrics, CLIP_benchmark style: {"image_retrieval_recall@5": 0.8, …}
        grouped: dict[str, dict[int, Any]] = {}
        for key, v in curves.items():
            m = _CURVE_KEY.match(str(key))
            if m:
                grouped.setdefault(m["name"], {})[int(m["k"])] = v
        if not grouped:
            raise EvalInputError("curves holds no '<name>_recall@<k>' metric and no {k: recall} mapping")
        curves = grouped
    out = {}
    for name, points in curves.items():
        if not isinstance(points, Mapping) or not points:
            raise EvalInputError(f"curve {name!r} must be a non-empty mapping {{k: recall}}")
        pts = []
        for k, v in points.items():
            try:
                kk = int(k)
            except (TypeError, ValueError):
                raise EvalInputError(f"curve {name!r}: k must be a positive integer, got {k!r}") from None
            if kk < 1 or str(kk) != str(k).strip():
                raise EvalInputError(f"curve {name!r}: k must be a positive integer, got {k!r}")
            pts.append((kk, _finite_fraction(v, f"curve {name!r} recall@{kk}")))
        out[str(name)] = sorted(pts)
    return out


def plot_recall_at_k(curves: Mapping[str, Any], path: "str | os.PathLike", title: str | None = None) -> Path:
    """Recall@k curves (x = k, y = recall in [0, 1]) as a PNG.

    ``curves`` is ``{"image_retrieval": {1: r1, 5: r5, …}, "text_retrieval": {…}}`` (any names), or
    flat retrieval metrics ``{"image_retrieval_recall@1": …}`` as in a result record. The x axis is
    logarithmic when the largest k is at least 20 times the smallest.
    """
    data = _curves(curves)
    ks = sorted({k for pts in data.values() for k, _ in pts})
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    for name, pts in data.items():
        ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=name.replace("_", " "))
    if ks[-1] >= 20 * ks[0]:
        ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    if len(ks) == 1:
        ax.set_xlim(ks[0] - 1, ks[0] + 1)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.grid(True, alpha=0.3)
    literal(ax.legend(loc="lower right").get_texts())
    ax.set_title(title or "retrieval recall@k", parse_math=False)
    return _save(fig, path)


def _per_class(per_class: Any) -> tuple[list[str], list[float]]:
    if isinstance(per_class, Mapping):
        names, values = list(per_class.keys()), list(per_class.values())
    elif isinstance(per_class, (tuple, list)) and len(per_class) == 2:
        names, values = per_class
        if hasattr(values, "tolist"):
            values = values.tolist()
        names, values = list(names), list(values)
    else:
        raise EvalInputError("per_class must be {class name: accuracy} or (classnames, values)")
    if not names:
        raise EvalInputError("per_class is empty: nothing to plot")
    if len(names) != len(values):
        raise EvalInputError(f"{len(names)} class names but {len(values)} values")
    return [str(n) for n in names], [_finite_fraction(v, f"accuracy of class {n!r}") for n, v in zip(names, values)]


def plot_per_class_accuracy(per_class: "Mapping[str, float] | tuple[Sequence[str], Sequence[float]]",
                            path: "str | os.PathLike", title: str | None = None) -> Path:
    """Horizontal bars of each class's accuracy (recall), best at the top, as a PNG.

    Classes with NaN (absent from the evaluation data) come last, marked ``n/a``. A dashed line shows
    the mean over the other classes (``mean_per_class_recall``).
    """
    names, values = _per_class(per_class)
    if (why := too_many_classes(len(names))) is not None:
        raise EvalInputError(f"{why}; plot a subset of the classes")
    order = sorted(range(len(names)), key=lambda i: (math.isnan(values[i]), -values[i] if not math.isnan(values[i])
                                                      else 0.0, i))
    order = order[::-1]  # barh draws the first bar at the bottom: put the best at the top
    n = len(names)
    fig = _figure(7.0, min(max(3.0, 1.2 + 0.2 * n), 120.0))
    ax = fig.add_subplot()
    ys = np.arange(n)
    vals = [values[i] for i in order]
    ax.barh(ys, [0.0 if math.isnan(v) else v for v in vals], color="tab:blue", height=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([names[i] for i in order], fontsize=_label_size(n, 10.0, 600.0), parse_math=False)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlim(0.0, 1.08)
    finite = [v for v in vals if not math.isnan(v)]
    if finite:
        mean = sum(finite) / len(finite)
        ax.axvline(mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
        ax.legend(loc="lower right")
    if n <= BAR_LABELS_MAX_CLASSES:
        for y, v in zip(ys, vals):
            ax.text(0.005 if math.isnan(v) else v + 0.005, y, "n/a" if math.isnan(v) else f"{v:.2f}",
                    va="center", fontsize=_label_size(n, 8.0, 400.0))
    ax.set_xlabel("accuracy (recall of the class)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title or "per-class accuracy", parse_math=False)
    return _save(fig, path)
