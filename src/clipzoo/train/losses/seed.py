r"""SEED: self-supervised distillation against a memory queue of teacher embeddings.

Fang, Wang, Wang, Zhang, Yang, Liu (2021), "SEED: Self-supervised Distillation For Visual Representation",
ICLR 2021, arXiv:2101.04731.

With normalised student / teacher embeddings :math:`s_i, t_i` and a queue :math:`D = [d_1..d_K]` of past teacher
embeddings, the anchor set of sample *i* is :math:`[t_i; d_1..d_K]` (its own teacher embedding first, as in the
authors' code). Teacher and student similarity distributions over it are

.. math::
    p^T_{ij} = \mathrm{softmax}_j(t_i^\top a_j/\tau_T),\qquad p^S_{ij} = \mathrm{softmax}_j(s_i^\top a_j/\tau_S),\qquad
    L = -\frac1N\sum_i\sum_j p^T_{ij}\log p^S_{ij}

(cross-entropy via ``log_softmax``), with the paper's temperatures :math:`\tau_T = 0.01`, :math:`\tau_S = 0.2` and
queue size 65536. The queue is read before this batch's teacher embeddings are enqueued (FIFO with wrap-around).

Under ``torch.distributed`` the loss is per sample (mean over ranks = global-batch loss; the gradient on a rank's
local features is ``world_size ×`` the global-batch gradient) and the queue enqueues the teacher batch gathered from
all ranks (rank order), so it stays identical on every rank.

Reads: ``image_features`` + ``teacher_image_features`` (``modality="image"``) or ``text_features`` +
``teacher_text_features`` (``modality="text"``). Student and teacher widths must match (the student's projection
head is the trainer's business).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import FeatureQueue, LossInputError, Objective, check_modality, check_positive
from .distributed import all_gather_no_grad

__all__ = ["SEEDLoss"]


class SEEDLoss(Objective):
    uses = ("image_features", "teacher_image_features", "text_features", "teacher_text_features")

    def __init__(self, dim: int, queue_size: int = 65536, teacher_temperature: float = 0.01,
                 student_temperature: float = 0.2, *, modality: str = "image", seed: int = 0):
        super().__init__()
        check_positive("SEEDLoss", teacher_temperature=teacher_temperature, student_temperature=student_temperature)
        check_modality("SEEDLoss", modality)
        self.queue = FeatureQueue(queue_size, dim, seed=seed)
        self.teacher_temperature, self.student_temperature = teacher_temperature, student_temperature
        self.modality = modality

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        s, t = self._pair(self.modality, image_features, text_features, teacher_image_features, teacher_text_features)
        if s.shape[1] != t.shape[1]:
            raise LossInputError(f"SEED needs student and teacher of one width (student {s.shape[1]}, "
                                 f"teacher {t.shape[1]}); add a projection head to the student.")
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        queue = self.queue.queue.clone().to(s.dtype)
        logit_s = torch.cat([(s * t).sum(dim=1, keepdim=True), s @ queue.T], dim=1)
        logit_t = torch.cat([(t * t).sum(dim=1, keepdim=True), t @ queue.T], dim=1)
        target = F.softmax(logit_t / self.teacher_temperature, dim=1)
        loss = -(target * F.log_softmax(logit_s / self.student_temperature, dim=1)).sum(dim=1).mean()
        if self.update_state:
            self.queue.enqueue(all_gather_no_grad(t))
        return {"loss": loss}
