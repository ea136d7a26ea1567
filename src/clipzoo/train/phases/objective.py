"""The objective: the loss the config names, with the widths a stateful objective needs filled in from the
student (and teacher), and ProtoCLIP's episode bank — the features of an episode's steps, re-clustered at its end.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import losses as objectives
from ..config import ConfigError, TrainConfig
from ..distill import Teacher, fill_loss_options, student_dim
from ..model import TrainModel

__all__ = ["build_objective", "ProtoBank"]


def build_objective(cfg: TrainConfig, model: TrainModel, module: torch.nn.Module, teacher: "Teacher | None",
                    device: torch.device):
    """The loss module on ``device``; a composite model's DINO heads give it raw prototype scores when it reads
    them."""
    options = dict(cfg.loss_options)
    if cfg.loss.lower() in ("infonce", "clip"):
        # gradients through the gather: with DDP's averaging, N processes then give one process's gradient
        options.setdefault("gather_with_grad", True)
    options = fill_loss_options(cfg.loss, options, student_dim(module, model.model_cfg),
                                teacher.embed_dim if teacher is not None else None)
    loss_fn = objectives.build_loss(cfg.loss, **options).to(device)  # looked up here: tests wrap build_loss
    if hasattr(module, "raw_head_scores"):  # composite models: DINO heads' prototype scores, unnormalised
        module.raw_head_scores = bool(getattr(loss_fn, "head_scores", False))
    return loss_fn


def proto_refresh(cfg: TrainConfig, loss_fn, steps_per_epoch: int) -> "int | None":
    """Steps per ProtoCLIP episode (``proto_refresh_every``, default one epoch); None for other objectives."""
    if not isinstance(loss_fn, objectives.ProtoCLIPLoss):
        if cfg.proto_refresh_every is not None:
            raise ConfigError(f"proto_refresh_every is for the protoclip loss; the loss is {cfg.loss!r}")
        return None
    every = cfg.proto_refresh_every or steps_per_epoch
    if every * cfg.batch_size < loss_fn.num_prototypes:
        raise ConfigError(f"protoclip: an episode of {every} step(s) × batch {cfg.batch_size} holds fewer samples "
                          f"than num_prototypes={loss_fn.num_prototypes}; raise proto_refresh_every or lower "
                          "num_prototypes")
    return every


class ProtoBank:
    """ProtoCLIP: each step's features join the episode's bank; every ``every`` steps the objective re-clusters
    its prototypes from the bank, which then starts empty."""

    def __init__(self, loss_fn, every: int):
        self.loss_fn, self.every = loss_fn, every
        self.bank: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "teacher_text": []}

    @classmethod
    def of(cls, cfg: TrainConfig, loss_fn, steps_per_epoch: int) -> "ProtoBank | None":
        """The bank of a ProtoCLIP objective; None for other objectives."""
        every = proto_refresh(cfg, loss_fn, steps_per_epoch)
        return cls(loss_fn, every) if every else None

    def add(self, step: int, features: tuple[torch.Tensor, torch.Tensor], targets: dict[str, Any]) -> None:
        """Bank step ``step``'s features (and teacher text features); re-cluster at the end of an episode."""
        self.bank["image"].append(features[0])
        self.bank["text"].append(features[1])
        if targets.get("teacher_text_features") is not None:
            self.bank["teacher_text"].append(targets["teacher_text_features"].detach().float())
        if step % self.every == 0:
            bank = self.bank
            self.loss_fn.update_prototypes(torch.cat(bank["image"]), torch.cat(bank["text"]),
                                           torch.cat(bank["teacher_text"]) if bank["teacher_text"] else None)
            self.bank = {k: [] for k in bank}

    def state_dict(self) -> dict[str, "torch.Tensor | None"]:
        """The checkpoint's ``proto_bank``: the episode's features so far, on the CPU."""
        return {k: torch.cat(v).cpu() if v else None for k, v in self.bank.items()}

    def load_state_dict(self, state: dict[str, "torch.Tensor | None"], device: torch.device) -> None:
        self.bank = {k: [v.to(device)] if v is not None else [] for k, v in state.items()}
