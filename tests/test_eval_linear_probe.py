"""Linear probe: toy problems with known answers, checks against scikit-learn run directly, errors."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from clipzoo.errors import EvalInputError
from clipzoo.eval.linear_probe import C_GRID, fewshot_indices, linear_probe, validation_split


def blobs(n_per_class, centers, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.normal(size=(n_per_class, len(c))) for c in centers])
    y = np.repeat(np.arange(len(centers)), n_per_class)
    return x, y


CENTERS_2D = [(3.0, 0.5), (-1.5, 2.5), (-1.5, -2.5)]  # separable by angle (features are L2-normalised)


def test_separable_2d_probe_is_perfect():
    x, y = blobs(30, CENTERS_2D, seed=0)
    xt, yt = blobs(20, CENTERS_2D, seed=1)
    m = linear_probe(x, y, xt, yt)
    assert m["lp_acc1"] == 1.0
    assert m["lp_mean_per_class_recall"] == 1.0
    assert "lp_acc5" not in m and "fewshot_k" not in m  # 3 classes: no top-5
    assert np.isclose(C_GRID, m["regularization"]).any()  # the chosen C is a grid point
    assert set(m) == {"lp_acc1", "lp_mean_per_class_recall", "regularization"}


def test_fixed_regularization_matches_sklearn():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(120, 8)), rng.integers(0, 6, 120)
    x[np.arange(120), y] += 1.0  # learnable but noisy
    xt, yt = rng.normal(size=(60, 8)), rng.integers(0, 6, 60)
    xt[np.arange(60), yt] += 1.0
    m = linear_probe(x, y, xt, yt, regularization=0.1, normalize=False)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(scaler.transform(x), y)
    proba = clf.predict_proba(scaler.transform(xt))
    pred = proba.argmax(1)
    top5 = np.argsort(-proba, axis=1, kind="stable")[:, :5]
    assert m["regularization"] == 0.1
    assert m["lp_acc1"] == pytest.approx(accuracy_score(yt, pred))
    assert m["lp_mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(yt, pred))
    assert m["lp_acc5"] == pytest.approx(np.mean([t in row for t, row in zip(yt, top5)]))


def test_chosen_regularization_is_best_on_validation():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(150, 10)), rng.integers(0, 3, 150)
    x[np.arange(150), y] += 0.8
    m = linear_probe(x, y, x[:10], y[:10], normalize=False, seed=2)
    c = m["regularization"]
    assert np.isclose(C_GRID, c).any()
    fit, val = validation_split(y, 0.2, seed=2)
    assert len(set(fit) | set(val)) == 150 and not set(fit) & set(val)
    scaler = StandardScaler().fit(x[fit])

    def val_correct(C):
        clf = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(x[fit]), y[fit])
        return (clf.predict(scaler.transform(x[val])) == y[val]).sum()

    coarse = [val_correct(C) for C in C_GRID[::4]]
    assert val_correct(c) >= max(coarse)  # the refined choice is at least as good as every coarse point


def test_fewshot_keeps_exactly_k_per_class_deterministically():
    x, y = blobs(10, CENTERS_2D, seed=0)
    idx = fewshot_indices(y, 4, seed=7)
    assert np.bincount(y[idx]).tolist() == [4, 4, 4]
    assert len(set(idx)) == 12
    assert idx.tolist() == fewshot_indices(y, 4, seed=7).tolist()
    assert idx.tolist() != fewshot_indices(y, 4, seed=8).tolist()
    xt, yt = blobs(5, CENTERS_2D, seed=1)
    m = linear_probe(x, y, xt, yt, fewshot_k=4, seed=7)
    assert m["fewshot_k"] == 4 and m["lp_acc1"] == 1.0


def test_fewshot_larger_than_a_class_names_the_class():
    x, y = blobs(10, CENTERS_2D)
    keep = np.flatnonzero((y != 2) | (np.arange(len(y)) % 10 < 3))  # class 2 keeps 3 examples
    with pytest.raises(EvalInputError, match=r"fewshot_k=5 but class 2 has only 3"):
        linear_probe(x[keep], y[keep], x, y, fewshot_k=5)


def test_one_shot_needs_explicit_regularization():
    x, y = blobs(5, CENTERS_2D)
    with pytest.raises(EvalInputError, match="regularization=C"):
        linear_probe(x, y, x, y, fewshot_k=1)
    m = linear_probe(x, y, x, y, fewshot_k=1, regularization=1.0)
    assert m["regularization"] == 1.0 and m["fewshot_k"] == 1


def test_test_classes_absent_from_training_are_counted():
    centers = [tuple(5.0 * np.eye(6)[i]) for i in range(6)]
    x, y = blobs(8, centers[:5], seed=0)  # train: classes 0..4
    xt, yt = blobs(4, centers, seed=1)  # test: classes 0..5
    m = linear_probe(x, y, xt, yt, num_classes=6)
    # class 5 is never predicted: 20 of 24 right; it still counts in the per-class recall (5 of 6 classes)
    assert m["lp_acc1"] == pytest.approx(20 / 24)
    assert m["lp_mean_per_class_recall"] == pytest.approx(5 / 6)
    assert m["lp_acc5"] == pytest.approx(20 / 24)  # class 5 ranks last, below the 5 seen classes


@pytest.mark.parametrize("kwargs, match", [
    (dict(train_labels=[0, 1, 0]), "train_labels has 3 entries but there are 4"),
    (dict(train_labels=[1, 1, 1, 1]), "single class"),
    (dict(train_features=np.zeros((0, 2)), train_labels=[]), "train_features is empty"),
    (dict(test_features=np.ones((2, 3))), "differ in dimension"),
    (dict(val_fraction=0.0), "val_fraction must be in"),
    (dict(regularization=-1.0), "must be positive"),
    (dict(num_classes=1), "outside"),
])
def test_errors(kwargs, match):
    args = dict(train_features=np.eye(4, 2) + 0.1, train_labels=[0, 1, 0, 1],
                test_features=np.eye(2), test_labels=[0, 1])
    args.update(kwargs)
    with pytest.raises(EvalInputError, match=match):
        linear_probe(args.pop("train_features"), args.pop("train_labels"), args.pop("test_features"),
                     args.pop("test_labels"), **args)
