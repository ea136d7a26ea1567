r"""SigLIP pairwise sigmoid loss.

Zhai, Mustafa, Kolesnikov, Beyer (2023), "Sigmoid Loss for Language Image Pre-Training", arXiv:2303.15343.

With L2-normalised features, logit scale :math:`s = e^{t'}` and bias :math:`b` (paper init: :math:`t' = \log 10`,
:math:`b = -10`), labels :math:`z_{ij} = 1` if :math:`i = j` else :math:`-1`:

.. math::
    L = -\frac{1}{n}\sum_{i}\sum_{j}\log\sigma\big(z_{ij}(s\,x_i^\top y_j + b)\big)

summed over every text of the *global* batch for the local images and divided by the local batch size ``n``
(``F.logsigmoid``, stable) — open_clip's ``SigLipLoss``. Under ``torch.distributed`` the text features of the
other ranks are obtained either by passing them around the ring with gradient (``dist_impl="exchange"``, open_clip's
"shift") or by one all-gather with gradient (``dist_impl="gather"``); both give equal values. The mean over ranks of
the per-rank loss equals the single-process loss on the global batch, and the gradient on a rank's local features is
``world_size ×`` the global-batch gradient (DDP's averaging divides it back).

Reads: ``image_features``, ``text_features``, ``logit_scale`` and ``logit_bias`` (either may be omitted when
``learn_logit_scale=True``; then the module's own parameters, initialised as in the paper, are used).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossInputError, Objective, check_positive, clamp_scale
from .distributed import all_gather_with_grad, neighbour_exchange_with_grad, world_info

__all__ = ["SigLIPLoss"]


class SigLIPLoss(Objective):
    uses = ("image_features", "text_features", "logit_scale", "logit_bias")

    def __init__(self, dist_impl: str = "exchange", *, learn_logit_scale: bool = False, init_logit_scale: float = 10.0,
                 init_logit_bias: float = -10.0, max_logit_scale: float = 100.0):
        super().__init__()
        if dist_impl not in ("exchange", "gather"):
            raise LossInputError(f"SigLIPLoss: dist_impl must be 'exchange' or 'gather', got {dist_impl!r}")
        check_positive("SigLIPLoss", init_logit_scale=init_logit_scale, max_logit_scale=max_logit_scale)
        if not math.isfinite(float(init_logit_bias)):
            raise LossInputError(f"SigLIPLoss: init_logit_bias must be a finite number, got {init_logit_bias!r}")
        self.dist_impl = dist_impl
        self.max_logit_scale = max_logit_scale
        if learn_logit_scale:
            self.log_logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))
            self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
        else:
            self.log_logit_scale = self.logit_bias = None

    @staticmethod
    def _block(img, txt, scale, bias, positives: bool):
        logits = scale * img @ txt.T
        if bias is not None:
            logits = logits + bias
        labels = -torch.ones_like(logits)
        if positives:
            labels = labels + 2 * torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device)
        return -F.logsigmoid(labels * logits).sum() / img.shape[0]

    def compute(self, image_features=None, text_features=None, logit_scale=None, logit_bias=None, **_):
        img = self._need("image_features", image_features)
        txt = self._need("text_features", text_features)
        self._paired(img, txt)
        if logit_scale is None:
            if self.log_logit_scale is None:
                self._need("logit_scale", None)
            logit_scale = clamp_scale(self.log_logit_scale, self.max_logit_scale)
        if logit_bias is None and self.logit_bias is not None:
            logit_bias = self.logit_bias
        loss = self._block(img, txt, logit_scale, logit_bias, positives=True)
        rank, world = world_info()
        if world > 1:
            if self.dist_impl == "exchange":
                right, left = (rank + 1) % world, (rank - 1) % world
                to_right = txt
                for _ in range(world - 1):
                    from_left = neighbour_exchange_with_grad(left, right, to_right)
                    loss = loss + self._block(img, from_left, logit_scale, logit_bias, positives=False)
                    to_right = from_left
            else:
                parts = all_gather_with_grad(txt).chunk(world, dim=0)
                for i, part in enumerate(parts):
                    if i != rank:
                        loss = loss + self._block(img, part, logit_scale, logit_bias, positives=False)
        out = {"loss": loss, "logit_scale": torch.as_tensor(logit_scale).detach()}
        if logit_bias is not None:
            out["logit_bias"] = torch.as_tensor(logit_bias).detach()
        return out
