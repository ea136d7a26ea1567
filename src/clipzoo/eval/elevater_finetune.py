"""ELEVATER's fine-tune mode: end-to-end training of the image tower with a linear head initialised from the
text classifier (its language-initialised head), learning rate and weight decay searched on a validation split,
then a final run on train + validation scored on the test split.

As ELEVATER's ``full_model_finetune``: SGD with momentum 0.9, weight decay = the searched L2 strength,
cross-entropy on ``logit_scale * head(normalize(image_features))`` where the head's rows start as the zero-shot
class weights (bias 0) and ``logit_scale`` is the model's own (so epoch 0 is exactly zero-shot); the text tower
stays frozen. The search: for each learning rate of ``lrs`` (ELEVATER: ``logspace(-6, -1, 6)``) the weight decay
is searched over ``logspace(-6, 6, 97)`` — 7 coarse points, then refined around the best with steps 8, 4, 2, 1 —
scoring the best validation top-1 over the epochs (ties keep the earlier point); ``wds=[...]`` replaces that
search by a plain grid. The final run reports its last epoch on test (ELEVATER logs the best epoch's test
score; choosing an epoch on test is left out here). No data augmentation: images go through the model's own
preprocessing. The model is restored to its original weights afterwards.

Multilabel targets ((N, C) 0/1 rows instead of class ids (N,)) train as ELEVATER trains its multilabel sets
(``MULTILABEL_DATASETS`` in its ``full_model_finetune``): the same head and search with ``BCEWithLogitsLoss`` as
the criterion (:func:`head_loss`), each epoch scored by its ``11point_mAP`` of ``softmax(logits)`` (its
``validate`` hands the softmax to the metric) instead of top-1 (:func:`eval_score`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import EvalInputError
from .multilabel_metrics import map_11_points

__all__ = ["LR_GRID", "WD_GRID", "FinetuneConfig", "image_tower_parameters", "train_head_and_tower", "finetune",
           "search_weight_decay", "head_loss", "eval_score", "val_key"]

LR_GRID: tuple[float, ...] = tuple(float(x) for x in np.logspace(-6, -1, 6))
WD_GRID: tuple[float, ...] = tuple(float(x) for x in np.logspace(-6, 6, 97))
_WD_COARSE = tuple(range(0, 97, 16))  # logspace(-6, 6, 7) inside WD_GRID
_WD_STEPS = (8, 4, 2, 1)


@dataclass
class FinetuneConfig:
    """Training settings; ``lrs`` / ``wds`` the search grids (``wds=None``: ELEVATER's coarse-to-fine search)."""

    epochs: int = 10
    batch_size: int = 32
    lrs: Sequence[float] = LR_GRID
    wds: Sequence[float] | None = None
    momentum: float = 0.9
    seed: int = 0


def image_tower_parameters(model, pixels: torch.Tensor) -> list[torch.nn.Parameter]:
    """The parameters the image features depend on (found by one backward pass through ``encode_pixels``)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    with torch.enable_grad():
        model.encode_pixels(pixels[:2].to(model.device, model.dtype)).float().sum().backward()
    tower = [p for p in params if p.grad is not None]
    for p, flag in zip(params, flags):
        p.grad = None
        p.requires_grad_(flag)
    if not tower:
        raise EvalInputError(f"{model.card.alias}: no trainable image-tower parameter; fine-tuning needs an eager "
                             "torch model (not an ONNX or int8 runtime)")
    return tower


def _logits(model, head: torch.nn.Linear, scale: float, x: torch.Tensor) -> torch.Tensor:
    """``x``: pixels (N, 3, H, W) through the image tower, or frozen features (N, D) as they are."""
    raw = x.to(model.device).float() if x.dim() == 2 else model.encode_pixels(x.to(model.device, model.dtype))
    feats = F.normalize(raw.float(), dim=-1)
    return scale * head(feats)


def head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ELEVATER's criterion: cross-entropy on class ids (N,); BCE with logits (each class its own sigmoid) on
    (N, C) 0/1 multilabel targets."""
    if targets.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets)


def eval_score(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The score the search maximises: top-1 on class ids; ELEVATER's 11-point mAP of ``softmax(logits)`` on
    (N, C) multilabel targets."""
    if targets.dim() == 2:
        return map_11_points(targets.cpu().numpy(), logits.float().softmax(-1).cpu().numpy())
    return float((logits.argmax(1) == targets).float().mean())


def val_key(targets: torch.Tensor) -> str:
    """The name of the validation score in results: ``val_acc1``, or ``val_map_11_points`` for multilabel."""
    return "val_map_11_points" if targets.dim() == 2 else "val_acc1"


def _predict(model, head, scale, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([_logits(model, head, scale, x[i:i + batch_size]).cpu() for i in range(0, len(x), batch_size)])


def train_head_and_tower(model, tower: list[torch.nn.Parameter], head_init: torch.Tensor, x: torch.Tensor,
                         y: torch.Tensor, x_eval: torch.Tensor, y_eval: torch.Tensor | None, lr: float, wd: float,
                         cfg: FinetuneConfig) -> tuple[float, torch.Tensor]:
    """Train from the model's current weights; returns (best eval score over the epochs — top-1, or 11-point mAP
    for (N, C) multilabel targets — and the last epoch's eval logits)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = torch.nn.Linear(head_init.shape[1], head_init.shape[0]).to(model.device)
    with torch.no_grad():
        head.weight.copy_(head_init.to(model.device, head.weight.dtype))
        head.bias.zero_()
    scale = float(model.logit_scale)
    opt = torch.optim.SGD([*tower, *head.parameters()], lr=float(lr), momentum=cfg.momentum, weight_decay=float(wd))
    best, logits = 0.0, None
    for _ in range(int(cfg.epochs)):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            with torch.enable_grad():
                loss = head_loss(_logits(model, head, scale, x[idx]), y[idx].to(model.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
        logits = _predict(model, head, scale, x_eval, cfg.batch_size)
        if y_eval is not None:
            best = max(best, eval_score(logits, y_eval))
    return best, logits


def _run(model, tower, saved, head_init, x, y, x_eval, y_eval, lr, wd, cfg):
    try:
        return train_head_and_tower(model, tower, head_init, x, y, x_eval, y_eval, lr, wd, cfg)
    finally:
        if saved is not None:
            model.load_state_dict(saved)


def search_weight_decay(score) -> tuple[float, float]:
    """ELEVATER's weight-decay search over WD_GRID for one learning rate: (best wd, its score)."""
    scores: dict[int, float] = {}
    for i in _WD_COARSE:
        scores[i] = score(WD_GRID[i])
    peak = max(scores, key=lambda i: (scores[i], -i))
    for step in _WD_STEPS:
        for i in (max(peak - step, 0), min(peak + step, len(WD_GRID) - 1)):
            if i not in scores:
                scores[i] = score(WD_GRID[i])
        peak = max(scores, key=lambda i: (scores[i], -i))
    return WD_GRID[peak], scores[peak]


def finetune(model, head_init: torch.Tensor, train: tuple[torch.Tensor, torch.Tensor],
             val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
             cfg: FinetuneConfig | None = None) -> dict[str, Any]:
    """Search (lr, wd) on ``val``, train on train + val, return test ``logits`` and the chosen ``lr``, ``wd``.

    Each of ``train``, ``val``, ``test`` is (pixels (N, 3, H, W), class ids (N,) or multilabel (N, C) 0/1
    targets); ``head_init`` (C, D) the zero-shot class weights. The validation score is reported as
    :func:`val_key` names it. Given frozen features (N, D) instead of pixels, only the head trains: ELEVATER's
    linear probe (its ``FREEZE_IMAGE_BACKBONE``), with the same search.
    """
    cfg = cfg or FinetuneConfig()
    if cfg.epochs < 1 or cfg.batch_size < 1 or not list(cfg.lrs):
        raise EvalInputError("fine-tuning needs epochs >= 1, batch_size >= 1 and at least one learning rate")
    frozen = train[0].dim() == 2
    saved = None if frozen else {k: v.detach().clone() for k, v in model.state_dict().items()}
    tower = [] if frozen else image_tower_parameters(model, train[0])
    search: list[dict[str, float]] = []
    key = val_key(train[1])
    best = (-1.0, 0.0, 0.0)
    for lr in cfg.lrs:
        def score(wd, lr=lr):
            acc = _run(model, tower, saved, head_init, *train, *val, lr, wd, cfg)[0]
            search.append({"lr": float(lr), "wd": float(wd), key: acc})
            return acc

        if cfg.wds is None:
            wd, acc = search_weight_decay(score)
        else:
            accs = [(score(w), -i, w) for i, w in enumerate(cfg.wds)]
            acc, _, wd = max(accs)
        if acc > best[0]:
            best = (acc, float(lr), float(wd))
    x_all, y_all = torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])
    _, logits = _run(model, tower, saved, head_init, x_all, y_all, test[0], None, best[1], best[2], cfg)
    return {"logits": logits, "lr": best[1], "wd": best[2], key: best[0], "search": search}
