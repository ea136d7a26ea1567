r"""VICReg: variance–invariance–covariance regularisation.

Bardes, Ponce, LeCun (2022), "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", arXiv:2105.04906.

For two batches of embeddings :math:`Z, Z' \in \mathbb R^{N\times D}`:

.. math::
    s(Z,Z') = \tfrac{1}{ND}\sum_{i,d}(z_{id}-z'_{id})^2,\quad
    v(Z) = \tfrac1D\sum_d \max\big(0, \gamma - \sqrt{\mathrm{Var}(z_{\cdot d}) + \epsilon}\big),\quad
    c(Z) = \tfrac1D\sum_{d\ne d'} C(Z)_{dd'}^2

with unbiased variance / covariance :math:`C(Z) = \frac{1}{N-1}\sum_i (z_i-\bar z)(z_i-\bar z)^\top`,
:math:`\gamma = 1`, :math:`\epsilon = 10^{-4}`, and

.. math:: L = \lambda\, s(Z,Z') + \mu\,\tfrac12[v(Z)+v(Z')] + \nu\,[c(Z)+c(Z')]

with the paper's defaults :math:`\lambda=\mu=25`, :math:`\nu=1` (the official code's halving of the variance term
and summing of both covariance terms). Under ``torch.distributed`` both batches are gathered with gradient first
(the official code's ``FullGatherLayer``), so every rank computes the global-batch loss.

Reads: (``image_features``, ``teacher_image_features``) and/or (``text_features``, ``teacher_text_features``); if
no teacher features are given, the image–text pair (``image_features``, ``text_features``).
Components: ``invariance``, ``variance``, ``covariance`` (unweighted).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective, check_non_negative, check_positive, off_diagonal
from .distributed import all_gather_with_grad

__all__ = ["VICRegLoss"]


class VICRegLoss(Objective):
    uses = ("image_features", "text_features", "teacher_image_features", "teacher_text_features")

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 gamma: float = 1.0, eps: float = 1e-4):
        super().__init__()
        check_non_negative("VICRegLoss", sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff, gamma=gamma)
        check_positive("VICRegLoss", eps=eps)
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff
        self.gamma, self.eps = gamma, eps

    def _one(self, x, y):
        x, y = all_gather_with_grad(x), all_gather_with_grad(y)
        n, d = x.shape
        inv = F.mse_loss(x, y)
        x = x - x.mean(dim=0)
        y = y - y.mean(dim=0)
        std_x = torch.sqrt(x.var(dim=0) + self.eps)
        std_y = torch.sqrt(y.var(dim=0) + self.eps)
        var = (F.relu(self.gamma - std_x).mean() + F.relu(self.gamma - std_y).mean()) / 2
        cov_x = x.T @ x / (n - 1)
        cov_y = y.T @ y / (n - 1)
        cov = off_diagonal(cov_x).pow(2).sum() / d + off_diagonal(cov_y).pow(2).sum() / d
        loss = self.sim_coeff * inv + self.std_coeff * var + self.cov_coeff * cov
        return {"loss": loss, "invariance": inv, "variance": var, "covariance": cov}

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        pairs = self._pairs(image_features, text_features, teacher_image_features, teacher_text_features,
                            cross_modal=True)
        return self._combine([(name, self._one(s, t)) for name, s, t in pairs])
