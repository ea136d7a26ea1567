"""k-means clustering of features with k = number of classes; NMI, AMI, ARI against the classes."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from ..errors import MissingExtraError
from .metrics import EvalInputError, as_tensor, clustering_scores

__all__ = ["kmeans", "cluster_metrics", "clustering_scores"]


def kmeans(features: Any, n_clusters: int, seed: int = 0, n_init: int = 10, normalize: bool = True):
    """Cluster ids (N,) from scikit-learn's KMeans on (L2-normalised) features."""
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise MissingExtraError("clustering needs scikit-learn, which is not installed; "
                                "pip install 'clipzoo[eval]'") from None
    x = as_tensor(features, "features", ndim=2).float()
    if normalize:
        x = F.normalize(x, dim=-1)
    if not 1 <= n_clusters <= x.shape[0]:
        raise EvalInputError(f"cannot make {n_clusters} clusters from {x.shape[0]} examples")
    return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(x.numpy())


def cluster_metrics(features: Any, targets: Any, num_classes: int | None = None, seed: int = 0,
                    n_init: int = 10) -> dict[str, float]:
    """k-means with k = number of classes, scored by ``nmi``, ``ami`` and ``ari``."""
    t = as_tensor(targets, "targets", ndim=1).long()
    k = int(num_classes) if num_classes is not None else int(t.unique().numel())
    x = as_tensor(features, "features", ndim=2)
    if x.shape[0] != t.shape[0]:
        raise EvalInputError(f"{x.shape[0]} feature rows but {t.shape[0]} targets")
    return clustering_scores(t, kmeans(x, k, seed=seed, n_init=n_init))
