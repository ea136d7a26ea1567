"""InfoNCE in MindSpore: MindSpore-CLIP's ``open_clip`` ``loss.py`` ``ClipLoss`` for one process, written as
clipzoo's torch :class:`~clipzoo.train.losses.infonce.InfoNCELoss` computes it — logits ``(s·x) yᵀ`` and
``(s·y) xᵀ`` of the normalised features, cross-entropy against the diagonal in both directions, averaged."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

__all__ = ["ClipLoss"]


class ClipLoss(nn.Cell):
    """``(loss, loss_image, loss_text)`` of normalised image / text features and the (exponentiated) logit scale."""

    def construct(self, image_features, text_features, logit_scale):
        per_image = ops.matmul(logit_scale * image_features, text_features.T)
        per_text = ops.matmul(logit_scale * text_features, image_features.T)
        labels = ops.arange(per_image.shape[0], dtype=ms.int32)
        loss_image = ops.cross_entropy(per_image, labels)
        loss_text = ops.cross_entropy(per_text, labels)
        return (loss_image + loss_text) / 2, loss_image, loss_text
