r"""DINO: self-distillation with a centred, sharpened teacher.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin (2021), "Emerging Properties in Self-Supervised Vision
Transformers", arXiv:2104.14294.

For student and teacher head outputs :math:`s_i, t_i \in \mathbb R^K` and a center :math:`c`:

.. math::
    P^t_i = \mathrm{softmax}\big((t_i - c)/\tau_t\big),\qquad
    L = -\frac1N\sum_i \sum_k P^t_{ik}\,\log\mathrm{softmax}(s_i/\tau_s)_k

then, after the loss, :math:`c \leftarrow m\,c + (1-m)\,\frac1{N}\sum_i t_i` (EMA, :math:`m = 0.9`, batch mean over
all ranks via all-reduce). Defaults :math:`\tau_s = 0.1`, :math:`\tau_t = 0.04`. The teacher temperature's warm-up
schedule (0.04 → 0.07 in the paper) is the trainer's business: set ``loss.teacher_temperature`` each epoch.
Multi-crop pairing is also the trainer's business: call once per (student view, teacher view) pair and average,
updating the center once per step (``update_center=False`` on the others).

``center`` is a registered buffer (saved in checkpoints). Under ``torch.distributed`` the loss is per sample and the
center update uses the all-reduced batch mean, so centers stay identical on all ranks.

Reads: ``image_features`` (student head output) + ``teacher_image_features`` (``modality="image"``), or the text
pair with ``modality="text"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective, check_count, check_fraction, check_modality, check_positive
from .distributed import all_reduce_sum, world_info

__all__ = ["DINOLoss"]


class DINOLoss(Objective):
    uses = ("image_features", "teacher_image_features", "text_features", "teacher_text_features")
    head_scores = True

    def __init__(self, dim: int, student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                 center_momentum: float = 0.9, *, modality: str = "image"):
        super().__init__()
        check_count("DINOLoss", dim=dim)
        check_positive("DINOLoss", student_temperature=student_temperature, teacher_temperature=teacher_temperature)
        check_fraction("DINOLoss", center_momentum=center_momentum)
        check_modality("DINOLoss", modality)
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.modality = modality
        self.update_center = True
        self.register_buffer("center", torch.zeros(1, dim))

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        s, t = self._pair(self.modality, image_features, text_features, teacher_image_features, teacher_text_features)
        target = F.softmax((t - self.center.to(t.dtype)) / self.teacher_temperature, dim=-1)
        loss = -(target * F.log_softmax(s / self.student_temperature, dim=-1)).sum(dim=-1).mean()
        if self.update_center and self.update_state and self.training:
            self.ema_center(t)
        return {"loss": loss, "teacher_temperature": torch.tensor(self.teacher_temperature)}

    @torch.no_grad()
    def ema_center(self, teacher_output: torch.Tensor) -> None:
        """``center ← m·center + (1−m)·mean(teacher_output)``, the mean over the global batch."""
        _, world = world_info()
        batch_center = all_reduce_sum(teacher_output.sum(dim=0, keepdim=True)) / (teacher_output.shape[0] * world)
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype), alpha=1 - self.center_momentum)
