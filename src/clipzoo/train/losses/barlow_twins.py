r"""Barlow Twins: redundancy reduction via the cross-correlation matrix.

Zbontar, Jing, Misra, LeCun, Deny (2021), "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
arXiv:2103.03230.

Each batch is standardised per dimension along the batch (BatchNorm without affine: biased variance,
:math:`\epsilon = 10^{-5}`), the cross-correlation :math:`C = \frac1N \tilde Z^\top \tilde Z'` is pushed to the
identity:

.. math:: L = \sum_d (1 - C_{dd})^2 + \lambda \sum_{d\ne d'} C_{dd'}^2,\qquad \lambda = 5\cdot10^{-3}.

Under ``torch.distributed`` both batches are gathered with gradient before standardising (equivalent to the
official code's SyncBatchNorm + all-reduce of :math:`C`), so every rank computes the global-batch loss.

Reads: (``image_features``, ``teacher_image_features``) and/or (``text_features``, ``teacher_text_features``); if
no teacher features are given, the image–text pair. Components: ``on_diagonal``, ``off_diagonal`` (unweighted).
"""
from __future__ import annotations

from .base import Objective, check_non_negative, check_positive, off_diagonal
from .distributed import all_gather_with_grad

__all__ = ["BarlowTwinsLoss"]


class BarlowTwinsLoss(Objective):
    uses = ("image_features", "text_features", "teacher_image_features", "teacher_text_features")

    def __init__(self, lambd: float = 5e-3, eps: float = 1e-5):
        super().__init__()
        check_non_negative("BarlowTwinsLoss", lambd=lambd)
        check_positive("BarlowTwinsLoss", eps=eps)
        self.lambd, self.eps = lambd, eps

    def _standardize(self, z):
        return (z - z.mean(dim=0)) / (z.var(dim=0, unbiased=False) + self.eps).sqrt()

    def _one(self, x, y):
        x, y = all_gather_with_grad(x), all_gather_with_grad(y)
        c = self._standardize(x).T @ self._standardize(y) / x.shape[0]
        on = (c.diagonal() - 1).pow(2).sum()
        off = off_diagonal(c).pow(2).sum()
        return {"loss": on + self.lambd * off, "on_diagonal": on, "off_diagonal": off}

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        pairs = self._pairs(image_features, text_features, teacher_image_features, teacher_text_features,
                            cross_modal=True)
        return self._combine([(name, self._one(s, t)) for name, s, t in pairs])
