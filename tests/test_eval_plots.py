"""``clipzoo.eval.plots``: PNGs that open, hand-checked per-class recall, input validation, no leaked figures."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from clipzoo.errors import EvalInputError
from clipzoo.eval.plots import (
    confusion_matrix,
    per_class_recall,
    plot_confusion_matrix,
    plot_per_class_accuracy,
    plot_recall_at_k,
)

# 3 classes; class 2 never appears in the targets
TARGETS = [0, 0, 0, 1, 1, 0, 1]
PREDICTIONS = [0, 1, 0, 1, 2, 0, 1]


@pytest.fixture(autouse=True)
def no_leaked_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before == []


def _png(path, min_size=(100, 100)):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        return im.size


def _no_temp_files(folder):
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ per-class recall
def test_per_class_recall_by_hand():
    # class 0: targets at 0,1,2,5 -> predicted 0,1,0,0 -> 3/4; class 1: at 3,4,6 -> 1,2,1 -> 2/3; class 2: absent
    r = per_class_recall(TARGETS, PREDICTIONS, 3)
    assert r[0] == 0.75 and r[1] == pytest.approx(2 / 3) and math.isnan(r[2])
    assert confusion_matrix(TARGETS, PREDICTIONS, 3).tolist() == [[3, 1, 0], [0, 2, 1], [0, 0, 0]]
    # tensors and arrays work the same; the NaN-ignoring mean is mean_per_class_recall
    from clipzoo.eval import mean_per_class_recall

    r2 = per_class_recall(torch.tensor(TARGETS), np.array(PREDICTIONS), 3)
    assert r2[:2] == r[:2]
    assert np.nanmean(r2) == pytest.approx(mean_per_class_recall(TARGETS, PREDICTIONS))


@pytest.mark.parametrize("targets, predictions, n, message", [
    ([0, 1], [0], 2, r"targets \(2\) and predictions \(1\) differ in length"),
    ([0, 3], [0, 1], 3, r"targets hold class ids outside \[0, 3\) \(min 0, max 3\)"),
    ([0, 1], [-1, 1], 3, r"predictions hold class ids outside \[0, 3\) \(min -1, max 1\)"),
    ([], [], 3, "targets is empty"),
    ([0.5, 1], [0, 1], 3, "targets must be integer class ids"),
    ([[0, 1]], [[0, 1]], 3, r"targets must be 1-D class ids, got shape \(1, 2\)"),
    ([0], [0], 0, "num_classes must be at least 1"),
])
def test_bad_class_ids(targets, predictions, n, message):
    with pytest.raises(EvalInputError, match=message):
        per_class_recall(targets, predictions, n)


# ------------------------------------------------------------------ confusion matrix
def test_confusion_matrix_png(tmp_path):
    out = plot_confusion_matrix(TARGETS, PREDICTIONS, ["cat", "dog", "bird"], tmp_path / "sub" / "cm.png",
                                title="zero-shot")
    assert out == tmp_path / "sub" / "cm.png"
    _png(out)
    _no_temp_files(out.parent)
    counts = plot_confusion_matrix(torch.tensor(TARGETS), torch.tensor(PREDICTIONS), ["cat", "dog", "bird"],
                                   tmp_path / "counts.png", normalize=False)
    _png(counts)


def test_confusion_matrix_many_classes_grows(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    t = rng.integers(0, n, 600)
    p = np.where(rng.random(600) < 0.7, t, rng.integers(0, n, 600))
    big = _png(plot_confusion_matrix(t, p, [f"class_{i}" for i in range(n)], tmp_path / "big.png"))
    small = _png(plot_confusion_matrix(t % 4, p % 4, list("abcd"), tmp_path / "small.png"))
    assert big[0] > 2 * small[0] and big[1] > 2 * small[1]


def test_confusion_matrix_validation(tmp_path):
    with pytest.raises(EvalInputError, match=r"predictions hold class ids outside \[0, 2\) \(min 0, max 2\)"):
        plot_confusion_matrix(TARGETS, PREDICTIONS, ["cat", "dog"], tmp_path / "x.png")
    with pytest.raises(EvalInputError, match="classnames must be a non-empty list"):
        plot_confusion_matrix(TARGETS, PREDICTIONS, [], tmp_path / "x.png")
    with pytest.raises(EvalInputError, match="differ in length"):
        plot_confusion_matrix([0, 1], [0], ["a", "b"], tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ recall@k
def test_recall_at_k_png(tmp_path):
    curves = {"image_retrieval": {1: 0.3, 5: 0.6, 10: 0.7, 50: 0.9, 100: 0.95},
              "text_retrieval": {1: 0.4, 5: 0.7, 10: 0.8}}
    _png(plot_recall_at_k(curves, tmp_path / "rk.png", title="flickr"))
    # the metrics of a result record work too
    flat = {"image_retrieval_recall@1": 0.3, "image_retrieval_recall@5": 0.6, "text_retrieval_recall@1": 0.4,
            "text_retrieval_recall@5": 0.7}
    _png(plot_recall_at_k(flat, tmp_path / "flat.png"))
    _png(plot_recall_at_k({"only": {5: 0.5}}, tmp_path / "one.png"))
    _no_temp_files(tmp_path)


@pytest.mark.parametrize("curves, message", [
    ({}, "curves must be a non-empty mapping"),
    ({"image_retrieval": {1: 1.5}}, r"curve 'image_retrieval' recall@1 must be in \[0, 1\], got 1.5"),
    ({"image_retrieval": {0: 0.5}}, "k must be a positive integer, got 0"),
    ({"image_retrieval": {}}, "curve 'image_retrieval' must be a non-empty mapping"),
    ({"acc1": 0.5}, "holds no '<name>_recall@<k>' metric"),
])
def test_recall_at_k_validation(tmp_path, curves, message):
    with pytest.raises(EvalInputError, match=message):
        plot_recall_at_k(curves, tmp_path / "x.png")


# ------------------------------------------------------------------ per-class bars
def test_per_class_accuracy_png(tmp_path):
    recalls = per_class_recall(TARGETS, PREDICTIONS, 3)
    _png(plot_per_class_accuracy(dict(zip(["cat", "dog", "bird"], recalls)), tmp_path / "pc.png"))
    _png(plot_per_class_accuracy((["cat", "dog"], np.array([0.5, 1.0])), tmp_path / "pair.png", title="t"))
    tall = _png(plot_per_class_accuracy({f"c{i}": i / 99 for i in range(100)}, tmp_path / "tall.png"))
    assert tall[1] > 1000


@pytest.mark.parametrize("per_class, message", [
    ({}, "per_class is empty"),
    ((["a", "b"], [0.5]), "2 class names but 1 values"),
    ({"a": 2.0}, r"accuracy of class 'a' must be in \[0, 1\], got 2.0"),
    ({"a": "high"}, "accuracy of class 'a' must be a number"),
    (0.5, "per_class must be"),
])
def test_per_class_accuracy_validation(tmp_path, per_class, message):
    with pytest.raises(EvalInputError, match=message):
        plot_per_class_accuracy(per_class, tmp_path / "x.png")


def test_overwrites_an_existing_file(tmp_path):
    target = tmp_path / "pc.png"
    target.write_bytes(b"old")
    plot_per_class_accuracy({"a": 0.5}, target)
    _png(target, (50, 50))
    _no_temp_files(tmp_path)


def test_importing_eval_does_not_import_matplotlib():
    code = ("import sys, clipzoo.eval, clipzoo.eval.plots, clipzoo.eval.report; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
