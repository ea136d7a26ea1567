r"""RKD: relational knowledge distillation (distance-wise and angle-wise).

Park, Kim, Lu, Cho (2019), "Relational Knowledge Distillation", arXiv:1904.05068.

With pairwise Euclidean distances :math:`d_{ij} = \lVert x_i - x_j\rVert`, normalised by their mean over the
off-diagonal pairs :math:`\mu`, and the angle potential :math:`\cos\angle x_i x_j x_k =
\langle e^{ij}, e^{kj}\rangle` with :math:`e^{ij} = (x_i - x_j)/\lVert x_i - x_j\rVert`:

.. math::
    L_D = \frac{1}{N^2}\sum_{i,j} \ell_\delta\Big(\frac{d^t_{ij}}{\mu^t}, \frac{d^s_{ij}}{\mu^s}\Big),\quad
    L_A = \frac{1}{N^3}\sum_{i,j,k} \ell_\delta(\cos\angle^t_{ijk}, \cos\angle^s_{ijk}),\quad
    L = w_D L_D + w_A L_A

where :math:`\ell_\delta` is the Huber (smooth-L1, :math:`\delta=1`) loss, averaged over all index tuples as in the
authors' code (diagonal entries contribute zeros), with :math:`w_D = 25`, :math:`w_A = 50` (the authors' code
defaults). Student and teacher widths may differ. Under ``torch.distributed`` the batches are gathered (student
with gradient) so relations span the global batch.

Reads: (``image_features``, ``teacher_image_features``) and/or (``text_features``, ``teacher_text_features``).
Components: ``distance``, ``angle`` (unweighted).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective, check_non_negative
from .distributed import all_gather_no_grad, all_gather_with_grad

__all__ = ["RKDLoss", "pairwise_distances"]


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.T).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(e.shape[0], dtype=e.dtype, device=e.device))


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


class RKDLoss(Objective):
    uses = ("image_features", "teacher_image_features", "text_features", "teacher_text_features")

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        check_non_negative("RKDLoss", distance_weight=distance_weight, angle_weight=angle_weight)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def _one(self, s, t):
        s, t = all_gather_with_grad(s), all_gather_no_grad(t)
        n = s.shape[0]
        off = n * (n - 1)
        with torch.no_grad():
            td = pairwise_distances(t)
            td = td / (td.sum() / off)
            ta = _angles(t)
        sd = pairwise_distances(s)
        sd = sd / (sd.sum() / off)
        dist = F.smooth_l1_loss(sd, td)
        angle = F.smooth_l1_loss(_angles(s), ta)
        return {"loss": self.distance_weight * dist + self.angle_weight * angle, "distance": dist, "angle": angle}

    def compute(self, image_features=None, text_features=None, teacher_image_features=None,
                teacher_text_features=None, **_):
        pairs = self._pairs(image_features, text_features, teacher_image_features, teacher_text_features)
        return self._combine([(name, self._one(s, t)) for name, s, t in pairs])
