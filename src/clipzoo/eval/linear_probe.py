"""Linear-probe classification on frozen, precomputed features (logistic regression).

Method (OpenAI CLIP paper, appendix A.3; CLIP_benchmark's ``linear_probe``):

1. optionally keep ``fewshot_k`` training examples per class (seeded);
2. hold out a stratified validation split of the training set (``val_fraction`` of each class,
   at least one example of every class that has two or more; seeded);
3. choose the inverse L2 regularisation strength ``C`` of a scikit-learn ``LogisticRegression``
   (L-BFGS; multinomial for three or more classes) by validation top-1 accuracy. CLIP used a
   parametric binary search; here a coarse grid ``1e-6, 1e-4, …, 1e6`` is refined twice around
   the best point (steps of 10x, then 10**0.5 x), so the chosen ``C`` is always a point of
   :data:`C_GRID` ``= np.logspace(-6, 6, 25)``. Ties go to the smaller ``C`` (stronger
   regularisation). ``regularization=C`` skips the search;
4. refit on train + validation with that ``C`` and score the test set.

Features are L2-normalised (``normalize=True``) and then standardised with statistics of the data
each model is fitted on. The numbers (``lp_acc1``, ``lp_acc5`` with at least 5 classes,
``lp_mean_per_class_recall``) come from :func:`~clipzoo.eval.metrics.zeroshot_metrics` on the
class probabilities, so they are defined exactly as the zero-shot ones; classes never seen in
training get a score below every probability (they are never predicted, but still count).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch.nn.functional as F

from ..errors import EvalInputError, MissingExtraError
from .metrics import as_targets, as_tensor, zeroshot_metrics

__all__ = ["C_GRID", "linear_probe", "fewshot_indices", "validation_split"]

C_GRID = np.logspace(-6, 6, 25)  # 10**-6, 10**-5.5, ..., 10**6: every C the search can choose
_COARSE = range(0, len(C_GRID), 4)  # 10**-6, 10**-4, ..., 10**6
_REFINE_STEPS = (2, 1)  # grid steps: 10x, then 10**0.5 x around the best so far


def fewshot_indices(labels: Any, k: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``k`` examples of each class present in ``labels`` (seeded, without replacement)."""
    labels = np.asarray(labels)
    if int(k) < 1:
        raise EvalInputError(f"fewshot_k must be at least 1, got {k}")
    rng = np.random.default_rng([int(seed), 0])
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise EvalInputError(f"fewshot_k={k} but class {int(c)} has only {len(idx)} training example(s); "
                                 "lower fewshot_k or leave that class out")
        keep.append(rng.choice(idx, int(k), replace=False))
    return np.sort(np.concatenate(keep))


def validation_split(labels: Any, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) index arrays, stratified: each class with ``n >= 2`` examples puts
    ``round(val_fraction * n)`` of them (at least 1, at most ``n - 1``) into validation."""
    if not 0 < val_fraction < 1:
        raise _said_for_cli(f"val_fraction must be in (0, 1) to choose the regularisation, got {val_fraction} "
                            "(or pass regularization=C)")
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 1])
    fit, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _said_for_cli(message: str) -> EvalInputError:
    """The error, with its ``cli_message`` naming ``clipzoo eval linear-probe``'s flags instead of the keywords."""
    error = EvalInputError(message)
    error.cli_message = (message.replace("val_fraction", "--val-fraction").replace("fewshot_k=1", "--fewshot-k 1")
                         .replace("regularization=C", "--regularization C"))
    return error


SKLEARN_REGRESSION_GUESS = r"The number of unique classes is greater than 50% of the number of samples"


def _standardize(x_fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = x_fit.mean(axis=0), x_fit.std(axis=0)
    std[std < 1e-12] = 1.0
    return [(x - mean) / std for x in (x_fit, *others)]


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, init: Any = None):
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise MissingExtraError("the linear probe needs scikit-learn, which is not installed; "
                                "pip install 'clipzoo[eval]'") from None
    clf = LogisticRegression(C=float(c), max_iter=int(max_iter), warm_start=init is not None)
    if init is not None:
        clf.coef_, clf.intercept_ = init.coef_.copy(), init.intercept_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # checked by the caller where it matters
        # y holds class indices by construction (as_targets); sklearn guesses "regression?" whenever there are
        # more classes than half the samples — every few-shot probe, and the quickstart's 77 classes in 150
        # images. Its guess does not apply here, so that one message (only) is not shown.
        warnings.filterwarnings("ignore", message=SKLEARN_REGRESSION_GUESS, category=UserWarning)
        clf.fit(x, y)
    return clf


def _select_c(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, max_iter: int) -> float:
    """Coarse-to-fine search over :data:`C_GRID` for the best validation top-1 accuracy."""
    correct: dict[int, int] = {}
    models: dict[int, Any] = {}

    def evaluate(i: int) -> None:
        if i in correct or not 0 <= i < len(C_GRID):
            return
        near = min(models, key=lambda j: (abs(j - i), j), default=None)  # warm start from the closest C
        clf = _fit(x_fit, y_fit, C_GRID[i], max_iter, models.get(near))
        models[i] = clf
        correct[i] = int((clf.predict(x_val) == y_val).sum())

    def best() -> int:
        return max(correct, key=lambda i: (correct[i], -i))  # ties: the smaller C

    for i in _COARSE:
        evaluate(i)
    for step in _REFINE_STEPS:
        b = best()
        evaluate(b - step)
        evaluate(b + step)
    return float(C_GRID[best()])


def linear_probe(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, *,
                 num_classes: int | None = None, val_fraction: float = 0.2, regularization: float | None = None,
                 fewshot_k: int | None = None, seed: int = 0, normalize: bool = True,
                 max_iter: int = 1000) -> dict[str, float]:
    """Fit a logistic-regression probe on train features, report test metrics (see module docstring).

    Returns ``lp_acc1``, ``lp_acc5`` (only with ``num_classes >= 5``), ``lp_mean_per_class_recall``,
    ``regularization`` (the ``C`` used) and ``fewshot_k`` when given.
    """
    x_train = as_tensor(train_features, "train_features", ndim=2).double()
    x_test = as_tensor(test_features, "test_features", ndim=2).double()
    if x_train.shape[1] != x_test.shape[1]:
        raise EvalInputError(f"train features ({x_train.shape[1]}) and test features ({x_test.shape[1]}) "
                             "differ in dimension")
    y_train = as_targets(train_labels, x_train.shape[0], num_classes, "train_labels")
    y_test = as_targets(test_labels, x_test.shape[0], num_classes, "test_labels")
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    if normalize:
        x_train, x_test = F.normalize(x_train, dim=-1), F.normalize(x_test, dim=-1)
    x, y, x_test = x_train.numpy(), y_train.numpy(), x_test.numpy()

    if fewshot_k is not None:
        keep = fewshot_indices(y, fewshot_k, seed)
        x, y = x[keep], y[keep]
    if len(np.unique(y)) < 2:
        raise EvalInputError(f"the training set holds a single class ({int(y[0])}); a linear probe needs at "
                             "least 2 classes")

    if regularization is None:
        fit, val = validation_split(y, val_fraction, seed)
        if len(val) == 0:
            raise _said_for_cli("cannot hold out a validation split: every class has a single training example "
                                "(e.g. fewshot_k=1); pass regularization=C")
        x_fit, x_val = _standardize(x[fit], x[val])
        c = _select_c(x_fit, y[fit], x_val, y[val], max_iter)
    else:
        c = float(regularization)
        if not c > 0:
            raise EvalInputError(f"regularization (C) must be positive, got {regularization}")

    x_all, x_test = _standardize(x, x_test)
    clf = _fit(x_all, y, c, max_iter)
    if int(np.max(clf.n_iter_)) >= max_iter:
        warnings.warn(f"linear probe: the final logistic regression (C={c:g}) did not converge in "
                      f"max_iter={max_iter} iterations; results may be off, raise max_iter", RuntimeWarning,
                      stacklevel=2)
    scores = np.full((x_test.shape[0], num_classes), -1.0)  # classes unseen in training rank last
    scores[:, clf.classes_] = clf.predict_proba(x_test)
    m = zeroshot_metrics(scores, y_test, num_classes)
    out = {f"lp_{k}": v for k, v in m.items()}
    out["regularization"] = c
    if fewshot_k is not None:
        out["fewshot_k"] = int(fewshot_k)
    return out
