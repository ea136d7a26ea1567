r"""InfoNCE / CLIP contrastive loss.

Radford, Kim, Hallacy, Ramesh, Goh, Agarwal, Sastry, Askell, Mishkin, Clark, Krueger, Sutskever (2021),
"Learning Transferable Visual Models From Natural Language Supervision", arXiv:2103.00020.

With L2-normalised image features :math:`x_i`, text features :math:`y_j` and logit scale :math:`s = e^{t}`
(learnable, clamped at 100):

.. math::
    L = \frac{1}{2N}\sum_i \Big[-\log\frac{e^{s x_i^\top y_i}}{\sum_j e^{s x_i^\top y_j}}
        -\log\frac{e^{s y_i^\top x_i}}{\sum_j e^{s y_i^\top x_j}}\Big]

computed with ``F.cross_entropy`` (log-softmax, stable). Semantics of open_clip's ``ClipLoss`` under
``torch.distributed`` (features gathered by :func:`~clipzoo.train.losses.distributed.gather_features`):

* ``local_loss=False``: every rank computes the global N×N logits (N = global batch) and the loss equals the
  single-process loss on the concatenated global batch.
* ``local_loss=True``: each rank computes its local rows against all columns (labels offset by ``rank·n``); the
  mean over ranks equals the global-batch loss.
* ``gather_with_grad=True``: gradients flow through the gather, so after every rank back-propagates its own loss the
  gradient on a rank's local features is ``world_size × d(global loss)/d(features)`` in both modes (DDP's
  gradient averaging divides by ``world_size`` again). With ``gather_with_grad=False`` only local slots carry
  gradient (open_clip's default).

Reads: ``image_features``, ``text_features``, ``logit_scale`` (optional if ``learn_logit_scale=True``, in which
case the module's own parameter is used), ``logit_bias`` (optional, added to the logits).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Objective, check_positive, clamp_scale
from .distributed import gather_features, world_info

__all__ = ["InfoNCELoss"]


class InfoNCELoss(Objective):
    uses = ("image_features", "text_features", "logit_scale", "logit_bias")

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, *, learn_logit_scale: bool = False,
                 init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        check_positive("InfoNCELoss", init_temperature=init_temperature, max_logit_scale=max_logit_scale)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.max_logit_scale = max_logit_scale
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature))) if learn_logit_scale else None

    def scale(self, logit_scale):
        if logit_scale is not None:
            return logit_scale
        if self.log_logit_scale is None:
            self._need("logit_scale", None)
        return clamp_scale(self.log_logit_scale, self.max_logit_scale)

    def logits(self, image_features, text_features, logit_scale, logit_bias=None):
        """(logits_per_image, logits_per_text) with open_clip's gathering semantics."""
        rank, world = world_info()
        if world > 1:
            all_img, all_txt = gather_features(image_features, text_features, local_loss=self.local_loss,
                                               gather_with_grad=self.gather_with_grad)
            if self.local_loss:
                per_image = logit_scale * image_features @ all_txt.T
                per_text = logit_scale * text_features @ all_img.T
            else:
                per_image = logit_scale * all_img @ all_txt.T
                per_text = per_image.T
        else:
            per_image = logit_scale * image_features @ text_features.T
            per_text = logit_scale * text_features @ image_features.T
        if logit_bias is not None:
            per_image = per_image + logit_bias
            per_text = per_text + logit_bias
        return per_image, per_text

    def compute(self, image_features=None, text_features=None, logit_scale=None, logit_bias=None, **_):
        img = self._need("image_features", image_features)
        txt = self._need("text_features", text_features)
        self._paired(img, txt)
        scale = self.scale(logit_scale)
        per_image, per_text = self.logits(img, txt, scale, logit_bias)
        labels = torch.arange(per_image.shape[0], device=img.device)
        rank, world = world_info()
        if world > 1 and self.local_loss:
            labels = labels + per_image.shape[0] * rank
        li = F.cross_entropy(per_image, labels)
        lt = F.cross_entropy(per_text, labels)
        return {"loss": (li + lt) / 2, "loss_image": li, "loss_text": lt, "logit_scale": scale.detach()}
