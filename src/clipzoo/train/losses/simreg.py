r"""SimReg: feature regression for self-supervised knowledge distillation.

Navaneet, Abbasi Koohpayegani, Tejankar, Pirsiavash (2022), "SimReg: Regression as a Simple Yet Effective Tool for
Self-supervised Knowledge Distillation", arXiv:2201.05131.

The student's features (after its prediction head — that head is the trainer's business) regress onto the frozen
teacher's features. With :math:`\hat p = p/\lVert p\rVert_2` and :math:`\hat t = t/\lVert t\rVert_2`:

* ``SimRegLoss`` (the paper's cosine / L2 loss): :math:`L = \frac1N\sum_i \lVert \hat p_i - \hat t_i\rVert_2^2
  = \frac1N\sum_i (2 - 2\cos(p_i, t_i))`.
* ``SimRegL1Loss``: :math:`L = \frac{1}{ND}\sum_{i,d} |\hat p_{id} - \hat t_{id}|` (mean absolute error).
* ``SimRegSmoothL1Loss``: mean Huber / smooth-L1 with threshold ``beta`` (default 1.0, PyTorch's) on the
  normalised features.

The L1 / smooth-L1 variants follow the ITRA codebase's naming; normalising before the regression is our choice
(``normalize=False`` regresses raw features instead).

Reads: ``image_features`` with ``teacher_image_features`` and/or ``text_features`` with ``teacher_text_features``;
with both pairs the loss is their mean (``loss_image``/``loss_text`` components). Per-sample, so no gathering is
needed under ``torch.distributed``.
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import LossInputError, Objective, check_non_negative

__all__ = ["SimRegLoss", "SimRegL1Loss", "SimRegSmoothL1Loss"]


class _SimRegBase(Objective):
    uses = ("image_features", "teacher_image_features", "text_features", "teacher_text_features")

    def __init__(self, normalize: bool = True):
        super().__init__()
        self.normalize = normalize

    def _regress(self, student, teacher):  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        results = []
        for name, s, t in self._pairs(image_features, text_features, teacher_image_features, teacher_text_features):
            if s.shape != t.shape:
                raise LossInputError(f"{type(self).__name__}: student {tuple(s.shape)} and teacher {tuple(t.shape)} "
                                     "features differ in shape; project the student to the teacher's width first.")
            if self.normalize:
                s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
            results.append((name, {"loss": self._regress(s, t)}))
        return self._combine(results)


class SimRegLoss(_SimRegBase):
    """SimReg, squared L2 between normalised features (= 2 − 2·cosine), mean over the batch."""

    def _regress(self, s, t):
        return (s - t).pow(2).sum(dim=-1).mean()


class SimRegL1Loss(_SimRegBase):
    """SimReg-L1: mean absolute error between (normalised) features."""

    def _regress(self, s, t):
        return F.l1_loss(s, t)


class SimRegSmoothL1Loss(_SimRegBase):
    """SimReg-SmoothL1: mean smooth-L1 (Huber, ``beta``) between (normalised) features."""

    def __init__(self, normalize: bool = True, beta: float = 1.0):
        super().__init__(normalize)
        check_non_negative("SimRegSmoothL1Loss", beta=beta)
        self.beta = beta

    def _regress(self, s, t):
        return F.smooth_l1_loss(s, t, beta=self.beta)
