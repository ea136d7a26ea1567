"""Image–text contrastive objectives: InfoNCE (CLIP) and the SigLIP sigmoid loss.

InfoNCE — Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(arXiv:2103.00020): with L2-normalised features and scale s,
``L = ½ [CE(s·I Tᵀ, y) + CE(s·T Iᵀ, y)]``, ``y = arange(N)``. Under torch.distributed the features are
gathered (open_clip's ``gather_with_grad`` / ``local_loss``), so every rank's loss is the global-batch
loss (``local_loss=False``) or its rows of it (``local_loss=True``).

SigLIP — Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training" (arXiv:2303.15343):
``L = −1/N Σ_ij log σ(z_ij (s·I_i·T_j + b))``, ``z_ij = 1`` on the diagonal and −1 elsewhere; under
torch.distributed each rank scores its images against every rank's texts (all-gathered with gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import all_gather_with_grad, gather_features, is_distributed, world_info

__all__ = ["InfoNCE", "SigLIP"]


class InfoNCE(torch.nn.Module):
    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True):
        super().__init__()
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad

    def forward(self, image_features, text_features, *, logit_scale, logit_bias=None, **_) -> dict:
        img, txt = gather_features(image_features, text_features, local_loss=self.local_loss,
                                   gather_with_grad=self.gather_with_grad)
        if self.local_loss and is_distributed():
            rank, _ = world_info()
            n = image_features.shape[0]
            logits_i = logit_scale * image_features @ txt.T
            logits_t = logit_scale * text_features @ img.T
            labels = torch.arange(n, device=img.device) + rank * n
        else:
            logits_i = logit_scale * img @ txt.T
            logits_t = logits_i.T
            labels = torch.arange(img.shape[0], device=img.device)
        loss = (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
        return {"loss": loss}


class SigLIP(torch.nn.Module):
    def forward(self, image_features, text_features, *, logit_scale, logit_bias=None, **_) -> dict:
        bias = logit_bias if logit_bias is not None else torch.zeros((), device=image_features.device)
        txt = all_gather_with_grad(text_features) if is_distributed() else text_features
        rank, _ = world_info() if is_distributed() else (0, 1)
        n = image_features.shape[0]
        logits = logit_scale * image_features @ txt.T + bias
        z = -torch.ones_like(logits)
        z[torch.arange(n), torch.arange(n) + rank * n] = 1
        return {"loss": -F.logsigmoid(z * logits).sum() / n}
