"""One optimisation step in MindSpore: forward (the CLIP cell in training mode: batch-norm statistics of the
batch), InfoNCE, gradients (``mindspore.value_and_grad``), AdamW (``mindspore.experimental.optim.AdamW``,
PyTorch's algorithm) over the torch trainer's parameter groups, its lr schedule (``LambdaLR`` with
:func:`~clipzoo.train.phases.optimiser.lr_lambda`), then the logit scale clamped to ``[0, log max]``."""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import mindspore as ms
from mindspore import ops
from mindspore.experimental import optim

from ..config import TrainConfig
from ..phases.optimiser import lr_lambda
from .loss import ClipLoss

__all__ = ["TrainStep"]


class QuietRecompileNote(logging.Filter):
    """MindSpore's AdamW hands each group's gradients to its compiled kernel as a plain tuple, so MindSpore logs, on
    every step, a warning that prints every gradient tensor (the kernel is compiled once all the same)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Constant value tensor are detected in tuple or list")


def quiet_mindspore_log() -> None:
    """Keep that note off stderr (MindSpore's logger is ``ME.mindspore.log.<pid>``)."""
    log = logging.getLogger(f"ME.mindspore.log.{os.getpid()}")
    if not any(isinstance(f, QuietRecompileNote) for f in log.filters):
        log.addFilter(QuietRecompileNote())


class TrainStep:
    """AdamW and its schedule over ``groups`` (``[{"params": [Parameter…], "weight_decay": float}]``) of ``net``."""

    def __init__(self, net, groups: Sequence[dict[str, Any]], cfg: TrainConfig, total: int):
        self.net, self.loss = net, ClipLoss()
        self.optimizer = optim.AdamW([dict(g) for g in groups], lr=float(cfg.lr), betas=tuple(cfg.betas),
                                     eps=float(cfg.eps), weight_decay=float(cfg.weight_decay))
        self.scheduler = optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.warmup, total, cfg.schedule))
        self.grad = ms.value_and_grad(self.forward, None, self.optimizer.parameters, has_aux=True)
        # the forward and backward compiled as one graph (mindspore.jit): in PyNative the backward of a tiny ViT took
        # seconds a step; the update stays outside (compiled into the same graph, the first step took 3x longer)
        self.compiled = ms.jit(self.grad)
        self.max_log_scale = math.log(cfg.logit_scale_max)
        quiet_mindspore_log()

    def forward(self, images, tokens):
        image_features, text_features, scale = self.net(images, tokens)
        loss, loss_image, loss_text = self.loss(image_features, text_features, scale)
        return loss, loss_image, loss_text, scale

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def __call__(self, images, tokens) -> dict[str, float]:
        """One step on a batch (NCHW float32 pixels, int32 token ids); the step's loss and its parts."""
        self.net.set_train(True)
        (loss, loss_image, loss_text, scale), grads = self.compiled(images, tokens)
        self.optimizer(ms.mutable(grads))
        self.scheduler.step()
        scale_param = self.net.logit_scale  # in place: set_data would leave the optimizer a stale Parameter
        ops.assign(scale_param, ops.clamp(scale_param, 0.0, self.max_log_scale))
        return {"loss": float(loss.asnumpy()), "loss/loss_image": float(loss_image.asnumpy()),
                "loss/loss_text": float(loss_text.asnumpy()), "logit_scale": float(scale.asnumpy())}
