"""The torch side of the JAX-vs-torch training-step parity tests: open_clip's model from the same converted start,
AdamW with the JAX engine's decay rule (2+-dim tensors), its schedule, InfoNCE, the logit-scale clamp."""
from __future__ import annotations

import math

import torch

from clipzoo.train.losses.infonce import InfoNCELoss


def torch_adamw_losses(model: torch.nn.Module, cfg, schedule, batches) -> list[float]:
    """Train ``model`` one AdamW step per NHWC ``(images, tokens)`` batch; the loss of each step."""
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                            lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    objective, losses = InfoNCELoss(), []
    for i, (images, tokens) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = float(schedule(i))
        img, txt, scale = model(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(tokens).long())
        loss = objective(img, txt, logit_scale=scale)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        losses.append(float(loss.detach()))
    return losses
