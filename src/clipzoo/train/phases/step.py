"""The step phase: one optimisation step's forward and backward.

Gradient accumulation caches the features of every micro-batch first (as open_clip does), so a contrastive loss
still sees the whole batch and the gradient equals the unaccumulated one. A stateful objective (a SEED / CompRess
queue, a DINO centre) updates its state on the last micro-batch only: every micro-batch reads the state the
unaccumulated step reads, and the state then moves once, from the whole batch.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["forward_backward", "features", "loss_parts"]


def features(module, images, tokens):
    """(image features, text features, logit scale, logit bias or None) of a model's forward."""
    out = module(images, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    return out[0], out[1], out[2], (out[3] if len(out) > 3 else None)


def loss_parts(out: dict) -> dict[str, float]:
    """The objective's named scalar components, as ``loss/NAME`` entries of a step's record."""
    return {f"loss/{k}": float(v.detach()) for k, v in out.items()
            if k != "loss" and torch.is_tensor(v) and v.ndim == 0}


def _objective(loss_fn, img, txt, scale, bias, targets: dict[str, Any]) -> dict:
    return loss_fn(img.float(), txt.float(), logit_scale=scale.float(),
                   logit_bias=None if bias is None else bias.float(), **targets)


def forward_backward(module, loss_fn, images, tokens, micro: int, accum: int, device, amp_dtype, scaler,
                     targets=None):
    """One optimisation step's forward/backward (with feature caching for accumulation). ``targets``: teacher
    features of the whole local batch, passed to the objective as they are. Returns (loss, components, logit
    scale, the local batch's features as the objective saw them, detached)."""
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    targets = targets or {}
    module.train()
    if accum == 1:
        with autocast:
            img, txt, scale, bias = features(module, images, tokens)
            out = _objective(loss_fn, img, txt, scale, bias, targets)
        scaler.scale(out["loss"]).backward()
        return (float(out["loss"].detach()), loss_parts(out), float(scale.detach()),
                (img.detach().float(), txt.detach().float()))
    return _accumulated(module, loss_fn, images, tokens, micro, autocast, scaler, targets)


@contextlib.contextmanager
def _state_updates(loss_fn, enabled: bool):
    """The objective may update its state (``Objective.update_state``) only while ``enabled``; objectives without
    state, or plain callables, are left alone."""
    if not hasattr(loss_fn, "update_state"):
        yield
        return
    before = loss_fn.update_state
    loss_fn.update_state = enabled and before
    try:
        yield
    finally:
        loss_fn.update_state = before


def _accumulated(module, loss_fn, images, tokens, micro: int, autocast, scaler, targets: dict[str, Any]):
    """Micro-batches of ``micro``: every micro-batch's features first (no gradient), then each micro-batch's
    forward and backward with the others' cached features, DDP's gradient sync only on the last."""
    chunks = list(zip(images.split(micro), tokens.split(micro)))
    with torch.no_grad(), autocast:
        cached = [features(module, x, t)[:2] for x, t in chunks]
    total = 0.0
    for j, (x, t) in enumerate(chunks):
        final = j == len(chunks) - 1
        sync = final or not hasattr(module, "no_sync")
        with contextlib.nullcontext() if sync else module.no_sync(), autocast, _state_updates(loss_fn, final):
            img, txt, scale, bias = features(module, x, t)
            all_img = torch.cat([c[0] for c in cached[:j]] + [img] + [c[0] for c in cached[j + 1:]]).float()
            all_txt = torch.cat([c[1] for c in cached[:j]] + [txt] + [c[1] for c in cached[j + 1:]]).float()
            if j:  # the logit scale / bias get their gradient once, not once per micro-batch
                scale = scale.detach()
                bias = None if bias is None else bias.detach()
            out = _objective(loss_fn, all_img, all_txt, scale, bias, targets)
            scaler.scale(out["loss"]).backward()
        total = float(out["loss"].detach())
    return total, loss_parts(out), float(scale.detach()), (all_img.detach(), all_txt.detach())
