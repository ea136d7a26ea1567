"""Evaluation metrics as pure functions on features, logits and targets (CLIP_benchmark-compatible).

Every function takes torch tensors, NumPy arrays or lists and returns plain Python floats (or a
dict of them), so results go straight into JSON.

Ties: top-k accuracy and retrieval recall@k rank with the very call CLIP_benchmark makes —
``torch.topk(scores, k, dim=1, largest=True, sorted=True)`` on float32 CPU tensors (:func:`top_indices`), ``k``
the largest of the ``topk`` asked for accuracy (CLIP_benchmark's ``accuracy``) and each ``k`` in turn for recall@k
(its ``recall_at_k``). Among equal scores that call's order is PyTorch's choice, not the lower index first, but it
is deterministic on CPU: the same scores give CLIP_benchmark's numbers exactly, duplicate class names and captions
included. ``mean_per_class_recall`` takes ``argmax`` (the first of equal scores), as CLIP_benchmark does. k-NN's
neighbours (:func:`ranking`) are sorted stably: among equal similarities the lower index first.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import EvalInputError, MissingExtraError


def as_tensor(x: Any, name: str, *, dtype: torch.dtype | None = None, ndim: int | None = None) -> torch.Tensor:
    """Coerce ``x`` (tensor, array, list) to a CPU tensor, with a clear error on bad shape or emptiness."""
    if x is None:
        raise EvalInputError(f"{name} is missing")
    try:
        t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise EvalInputError(f"{name} cannot be read as a tensor ({err})") from None
    if dtype is not None:
        t = t.to(dtype)
    if t.numel() == 0 or (t.ndim > 0 and t.shape[0] == 0):
        raise EvalInputError(f"{name} is empty: nothing to evaluate (check the data set)")
    if ndim is not None and t.ndim != ndim:
        raise EvalInputError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    return t


def as_targets(targets: Any, n: int, num_classes: int | None = None, name: str = "targets") -> torch.Tensor:
    """``targets`` as ``n`` long class ids in ``[0, num_classes)``; :class:`EvalInputError` naming ``name`` if not."""
    t = as_tensor(targets, name, ndim=1)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise EvalInputError(f"{name} must be integer class ids")
    t = t.long()
    if t.shape[0] != n:
        raise EvalInputError(f"{name} has {t.shape[0]} entries but there are {n} examples")
    if t.min() < 0 or (num_classes is not None and t.max() >= num_classes):
        raise EvalInputError(f"{name} holds class ids outside [0, {num_classes}) "
                             f"(min {int(t.min())}, max {int(t.max())})")
    return t


def ranking(scores: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Column indices of each row sorted by decreasing score (ties: lower index first), first ``k``."""
    order = torch.sort(scores, dim=1, descending=True, stable=True)[1]
    return order if k is None else order[:, :k]


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best columns of each row, best first, as CLIP_benchmark ranks them: ``torch.topk(scores, k, dim=1,
    largest=True, sorted=True)`` — its tie order, deterministic on CPU (see the module docstring)."""
    return torch.topk(scores, k, dim=1, largest=True, sorted=True)[1]


def topk_correct(logits: Any, targets: Any, topk: Sequence[int] = (1,)) -> list[int]:
    """Number of examples whose target is among the ``k`` highest logits, for each ``k``."""
    logits = as_tensor(logits, "logits", ndim=2).float()
    targets = as_targets(targets, logits.shape[0], logits.shape[1])
    kmax = min(max(topk), logits.shape[1])
    hits = top_indices(logits, kmax).eq(targets[:, None])  # (N, kmax): one topk call, as CLIP_benchmark's accuracy
    return [int(hits[:, :min(k, kmax)].any(dim=1).sum()) for k in topk]


def accuracy(logits: Any, targets: Any, topk: Sequence[int] = (1,)) -> list[float]:
    """Top-k accuracies in ``[0, 1]``, in the order of ``topk`` (CLIP_benchmark's ``accuracy``)."""
    logits = as_tensor(logits, "logits", ndim=2)
    n = logits.shape[0]
    return [c / n for c in topk_correct(logits, targets, topk)]


def mean_per_class_recall(targets: Any, predictions: Any) -> float:
    """Mean over the classes present in ``targets`` of the recall of that class.

    This is scikit-learn's ``balanced_accuracy_score`` (what CLIP_benchmark reports as
    ``mean_per_class_recall``): classes that are predicted but never true are ignored.
    """
    targets = as_tensor(targets, "targets", ndim=1).long()
    predictions = as_tensor(predictions, "predictions", ndim=1).long()
    if targets.shape != predictions.shape:
        raise EvalInputError(f"targets ({targets.shape[0]}) and predictions ({predictions.shape[0]}) "
                             "differ in length")
    classes, inverse = torch.unique(targets, return_inverse=True)
    support = torch.bincount(inverse, minlength=len(classes)).double()
    correct = torch.bincount(inverse[predictions == targets], minlength=len(classes)).double()
    return float((correct / support).mean())


def zeroshot_metrics(logits: Any, targets: Any, num_classes: int | None = None) -> dict[str, float]:
    """``acc1``, ``acc5`` (only with at least 5 classes) and ``mean_per_class_recall`` from logits.

    ``logits`` is (N, C) (any monotone score: probabilities work too), ``targets`` (N,) class ids.
    CLIP_benchmark writes ``acc5: NaN`` below 5 classes; here the key is left out instead.
    """
    logits = as_tensor(logits, "logits", ndim=2).float()
    num_classes = int(num_classes if num_classes is not None else logits.shape[1])
    targets = as_targets(targets, logits.shape[0], logits.shape[1])
    n = logits.shape[0]
    if num_classes >= 5:
        c1, c5 = topk_correct(logits, targets, (1, 5))
        out = {"acc1": c1 / n, "acc5": c5 / n}
    else:
        out = {"acc1": topk_correct(logits, targets, (1,))[0] / n}
    out["mean_per_class_recall"] = mean_per_class_recall(targets, logits.argmax(dim=1))
    return out


def zeroshot_logits(image_features: Any, class_weights: Any, scale: float = 100.0) -> torch.Tensor:
    """Logits ``scale * normalize(images) @ normalize(weights).T``; weights are (C, D) or (D, C) as
    CLIP_benchmark's ``zero_shot_classifier`` returns them (transposed when D matches only that way)."""
    x = as_tensor(image_features, "image_features", ndim=2).float()
    w = as_tensor(class_weights, "class_weights", ndim=2).float()
    if w.shape[1] != x.shape[1]:
        if w.shape[0] == x.shape[1]:
            w = w.T
        else:
            raise EvalInputError(f"image features have dimension {x.shape[1]} but class weights have shape "
                                 f"{tuple(w.shape)}")
    return scale * F.normalize(x, dim=-1) @ F.normalize(w, dim=-1).T


def positives_from_index(text_image_index: Any, n_images: int | None = None) -> torch.Tensor:
    """Boolean (N_texts, N_images) matrix from the image index of each text (several texts per image)."""
    idx = as_tensor(text_image_index, "text_image_index", ndim=1).long()
    n_images = int(idx.max()) + 1 if n_images is None else int(n_images)
    if idx.min() < 0 or idx.max() >= n_images:
        raise EvalInputError(f"text_image_index refers to images outside [0, {n_images})")
    pos = torch.zeros(idx.shape[0], n_images, dtype=torch.bool)
    pos[torch.arange(idx.shape[0]), idx] = True
    return pos


def recall_at_k_hits(scores: Any, positives: Any, k: int, chunk: int = 1024) -> torch.Tensor:
    """For each row (query), whether any positive column is among its ``k`` best-scored columns.

    ``k`` larger than the number of columns is clamped (every positive is then found).
    """
    scores = as_tensor(scores, "scores", ndim=2).float()
    positives = as_tensor(positives, "positives", ndim=2).bool()
    if positives.shape != scores.shape:
        raise EvalInputError(f"positives {tuple(positives.shape)} and scores {tuple(scores.shape)} differ in shape")
    k = min(int(k), scores.shape[1])
    out = []
    for start in range(0, scores.shape[0], chunk):
        top = top_indices(scores[start:start + chunk], k)  # row by row: the chunk size changes nothing
        out.append(positives[start:start + chunk].gather(1, top).any(dim=1))
    return torch.cat(out)


def retrieval_metrics(image_features: Any, text_features: Any, text_image_index: Any,
                      recall_k: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """CLIP_benchmark's ``zeroshot_retrieval`` metrics from features.

    ``text_image_index[j]`` is the image of text ``j`` (several texts may share one image), or a
    boolean (N_texts, N_images) positives matrix. ``image_retrieval_recall@k``: share of texts whose
    image is in their top ``k`` images; ``text_retrieval_recall@k``: share of images with at least
    one of their texts in their top ``k`` texts.
    """
    img = F.normalize(as_tensor(image_features, "image_features", ndim=2).float(), dim=-1)
    txt = F.normalize(as_tensor(text_features, "text_features", ndim=2).float(), dim=-1)
    if img.shape[1] != txt.shape[1]:
        raise EvalInputError(f"image features ({img.shape[1]}) and text features ({txt.shape[1]}) differ in dimension")
    index = as_tensor(text_image_index, "text_image_index")
    if index.ndim == 2:
        positives = index.bool()
        if positives.shape != (txt.shape[0], img.shape[0]):
            raise EvalInputError(f"positives must have shape ({txt.shape[0]}, {img.shape[0]}), got "
                                 f"{tuple(positives.shape)}")
    else:
        if index.shape[0] != txt.shape[0]:
            raise EvalInputError(f"text_image_index has {index.shape[0]} entries for {txt.shape[0]} texts")
        positives = positives_from_index(index, img.shape[0])
    return retrieval_metrics_from_scores(txt @ img.T, positives, recall_k)


def retrieval_metrics_from_scores(scores: Any, positives: Any, recall_k: Sequence[int] = (1, 5, 10)
                                  ) -> dict[str, float]:
    """Retrieval recall@k from (N_texts, N_images) scores and the boolean positives matrix."""
    scores = as_tensor(scores, "scores", ndim=2).float()
    positives = as_tensor(positives, "positives", ndim=2).bool()
    if not positives.any(dim=1).all():
        raise EvalInputError("some texts have no matching image")
    metrics = {}
    for k in recall_k:
        metrics[f"image_retrieval_recall@{k}"] = float(recall_at_k_hits(scores, positives, k).float().mean())
        # images without any caption can never be hit; CLIP_benchmark counts them (as misses)
        metrics[f"text_retrieval_recall@{k}"] = float(recall_at_k_hits(scores.T, positives.T, k).float().mean())
    return metrics


def knn_scores(train_features: Any, train_labels: Any, test_features: Any, k: int = 20,
               temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Weighted k-NN class scores (N_test, C), DINO-style: cosine similarity, the ``k`` nearest
    training examples vote for their class with weight ``exp((sim - sim_nearest) / temperature)`` — DINO's
    ``exp(sim / temperature)`` scaled per row so that the nearest neighbour's weight is 1: the same votes relative
    to each other, with no overflow (``exp(1 / 0.01)`` is inf in float32, and every class then tied at inf)."""
    train = F.normalize(as_tensor(train_features, "train_features", ndim=2).float(), dim=-1)
    test = F.normalize(as_tensor(test_features, "test_features", ndim=2).float(), dim=-1)
    if train.shape[1] != test.shape[1]:
        raise EvalInputError(f"train features ({train.shape[1]}) and test features ({test.shape[1]}) "
                             "differ in dimension")
    labels = as_targets(train_labels, train.shape[0], num_classes, "train_labels")
    num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
    if k < 1:
        raise EvalInputError(f"k must be at least 1, got {k}")
    if not temperature > 0:  # 0 made every vote NaN (the NaN class won: 1-NN), below 0 reversed the votes
        raise EvalInputError(f"temperature must be above 0, got {temperature:g}")
    k = min(int(k), train.shape[0])
    out = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start:start + chunk] @ train.T
        order = ranking(sim, k)
        nearest = sim.gather(1, order)
        weights = ((nearest - nearest[:, :1]) / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, labels[order], weights)
        out.append(votes)
    return torch.cat(out)


def knn_metrics(train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None) -> dict[str, float]:
    """k-NN ``acc1``, ``acc5`` (with at least 5 classes) and ``mean_per_class_recall`` on test features."""
    train_labels_t = as_tensor(train_labels, "train_labels", ndim=1).long()
    test_labels_t = as_tensor(test_labels, "test_labels", ndim=1).long()
    if num_classes is None:
        num_classes = int(max(train_labels_t.max(), test_labels_t.max())) + 1
    scores = knn_scores(train_features, train_labels_t, test_features, k, temperature, num_classes)
    return zeroshot_metrics(scores, test_labels_t, num_classes)


def clustering_scores(targets: Any, cluster_ids: Any) -> dict[str, float]:
    """``nmi``, ``ami``, ``ari`` between true classes and cluster assignments (scikit-learn)."""
    try:
        from sklearn import metrics as skm
    except ImportError:
        raise MissingExtraError("clustering scores need scikit-learn, which is not installed; "
                                "pip install 'clipzoo[eval]'") from None
    t = as_tensor(targets, "targets", ndim=1).long().numpy()
    c = as_tensor(cluster_ids, "cluster_ids", ndim=1).long().numpy()
    if t.shape != c.shape:
        raise EvalInputError(f"targets ({len(t)}) and cluster_ids ({len(c)}) differ in length")
    return {"nmi": float(skm.normalized_mutual_info_score(t, c)),
            "ami": float(skm.adjusted_mutual_info_score(t, c)),
            "ari": float(skm.adjusted_rand_score(t, c))}
