r"""CompRess: self-supervised compression by mimicking the teacher's similarity distribution over a memory queue.

Abbasi Koohpayegani, Tejankar, Pirsiavash (2020), "CompRess: Self-Supervised Learning by Compressing
Representations", NeurIPS 2020, arXiv:2010.14713.

A memory queue holds anchor embeddings (L2-normalised). For a sample with normalised student / teacher embeddings
:math:`s_i, t_i`, the teacher's and the student's distributions over the :math:`K` anchors are

.. math::
    p^t_{ik} = \mathrm{softmax}_k(t_i^\top a^t_k/\tau_t),\qquad
    \log p^s_{ik} = \mathrm{log\,softmax}_k(s_i^\top a^s_k/\tau_s),\qquad
    L = \frac1N\sum_i \mathrm{KL}(p^t_i\,\Vert\,p^s_i)

(``F.kl_div(..., reduction="batchmean")``), computed against the queue *before* this batch is enqueued.

* ``CompRess1qLoss`` (CompRess-1q): one shared queue of *teacher* embeddings; :math:`a^s = a^t` (student and
  teacher widths must match — a projection head is the trainer's business).
* ``CompRess2qLoss`` (CompRess-2q): separate queues; :math:`a^t` holds teacher embeddings and :math:`a^s` the
  student embeddings of the same past samples (so the widths may differ).

Defaults: queue size 128000 and :math:`\tau_t = \tau_s = 0.04`. Simplification: the 2q student queue receives the
current student's detached embeddings; feeding it from a momentum copy of the student is up to the trainer.

Under ``torch.distributed`` the loss is per sample (no gather needed; the mean over ranks is the global-batch loss)
and the queues enqueue the batch gathered from all ranks, so they stay identical on every rank.

Reads: ``image_features`` and ``teacher_image_features`` (``modality="image"``, default) or ``text_features`` and
``teacher_text_features`` (``modality="text"``).
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import FeatureQueue, LossInputError, Objective, check_modality, check_positive
from .distributed import all_gather_no_grad

__all__ = ["CompRess1qLoss", "CompRess2qLoss"]


class _CompRessBase(Objective):
    uses = ("image_features", "teacher_image_features", "text_features", "teacher_text_features")

    def __init__(self, teacher_temperature: float, student_temperature: float, modality: str):
        super().__init__()
        check_positive(type(self).__name__, teacher_temperature=teacher_temperature,
                       student_temperature=student_temperature)
        check_modality(type(self).__name__, modality)
        self.teacher_temperature, self.student_temperature = teacher_temperature, student_temperature
        self.modality = modality

    def _kl(self, s, t, student_anchors, teacher_anchors):
        log_ps = F.log_softmax(s @ student_anchors.T / self.student_temperature, dim=1)
        log_pt = F.log_softmax(t @ teacher_anchors.T / self.teacher_temperature, dim=1)
        return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)


class CompRess1qLoss(_CompRessBase):
    def __init__(self, dim: int, queue_size: int = 128000, teacher_temperature: float = 0.04,
                 student_temperature: float = 0.04, *, modality: str = "image", seed: int = 0):
        super().__init__(teacher_temperature, student_temperature, modality)
        self.queue = FeatureQueue(queue_size, dim, seed=seed)

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        s, t = self._pair(self.modality, image_features, text_features, teacher_image_features, teacher_text_features)
        if s.shape[1] != t.shape[1]:
            raise LossInputError("CompRess-1q compares student and teacher to one queue: widths must match "
                                 f"(student {s.shape[1]}, teacher {t.shape[1]}); use CompRess-2q or a projection.")
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        anchors = self.queue.queue.clone().to(s.dtype)
        loss = self._kl(s, t, anchors, anchors)
        if self.update_state:
            self.queue.enqueue(all_gather_no_grad(t))
        return {"loss": loss}


class CompRess2qLoss(_CompRessBase):
    def __init__(self, student_dim: int, teacher_dim: int, queue_size: int = 128000,
                 teacher_temperature: float = 0.04, student_temperature: float = 0.04, *,
                 modality: str = "image", seed: int = 0):
        super().__init__(teacher_temperature, student_temperature, modality)
        self.teacher_queue = FeatureQueue(queue_size, teacher_dim, seed=seed)
        self.student_queue = FeatureQueue(queue_size, student_dim, seed=seed + 1)

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        s, t = self._pair(self.modality, image_features, text_features, teacher_image_features, teacher_text_features)
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        queued_s = self.student_queue.queue.clone().to(s.dtype)
        queued_t = self.teacher_queue.queue.clone().to(t.dtype)
        loss = self._kl(s, t, queued_s, queued_t)
        if self.update_state:
            self.teacher_queue.enqueue(all_gather_no_grad(t))
            self.student_queue.enqueue(all_gather_no_grad(s))
        return {"loss": loss}
