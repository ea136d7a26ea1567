r"""ProtoCPC: prototypical contrastive predictive coding.

Lee (2022), "Prototypical Contrastive Predictive Coding", ICLR 2022 (Kyungmin Lee; OpenReview, no arXiv id known
to us).

Teacher and student score :math:`K` prototypes (DINO-style heads, outputs :math:`t_i, s_i \in \mathbb R^K`). The
teacher's sharpened assignment :math:`q_i = \mathrm{softmax}(t_i/\tau_t)` is the target, and the student is scored
by the *pointwise mutual information* between sample and prototype, the prototype marginal being estimated over the
batch — the CPC / InfoNCE normalisation across samples that replaces DINO's centering as the anti-collapse device:

.. math::
    \log p_s(k\mid x_i) = \mathrm{log\,softmax}(s_i/\tau_s)_k,\qquad
    \log \hat p_s(k) = \log\frac1N\sum_j p_s(k\mid x_j),\qquad
    L = -\frac1N\sum_i\sum_k q_{ik}\,\big[\log p_s(k\mid x_i) - \log \hat p_s(k)\big]

(``logsumexp`` for the marginal). Defaults :math:`\tau_s = 0.1`, :math:`\tau_t = 0.04` (as DINO; the teacher's
warm-up schedule is the trainer's business — set ``teacher_temperature``).

Honest note: this is implemented from our reading of the paper's objective (a prototype-level InfoNCE/PMI bound
with a batch-estimated marginal); it has not been checked line by line against the author's code, whose
normalisation details may differ.

Under ``torch.distributed`` the marginal is estimated over the global batch (student outputs gathered with
gradient); the per-rank loss is the local rows' mean, so the mean over ranks equals the global-batch loss.

Reads: ``image_features`` + ``teacher_image_features`` (``modality="image"``) or the text pair.
Component: ``marginal_entropy`` (entropy of the student's batch marginal, a collapse monitor).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Objective, check_modality, check_positive
from .distributed import all_gather_with_grad

__all__ = ["ProtoCPCLoss"]


class ProtoCPCLoss(Objective):
    uses = ("image_features", "teacher_image_features", "text_features", "teacher_text_features")
    head_scores = True

    def __init__(self, student_temperature: float = 0.1, teacher_temperature: float = 0.04, *,
                 modality: str = "image"):
        super().__init__()
        check_positive("ProtoCPCLoss", student_temperature=student_temperature, teacher_temperature=teacher_temperature)
        check_modality("ProtoCPCLoss", modality)
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.modality = modality

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        s, t = self._pair(self.modality, image_features, text_features, teacher_image_features, teacher_text_features)
        q = F.softmax(t / self.teacher_temperature, dim=-1)
        log_p = F.log_softmax(s / self.student_temperature, dim=-1)
        log_p_all = F.log_softmax(all_gather_with_grad(s) / self.student_temperature, dim=-1)
        log_marginal = torch.logsumexp(log_p_all, dim=0) - math.log(log_p_all.shape[0])
        loss = -(q * (log_p - log_marginal)).sum(dim=-1).mean()
        ent = -(log_marginal.exp() * log_marginal).sum().detach()
        return {"loss": loss, "marginal_entropy": ent}
