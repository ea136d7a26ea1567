"""The run: :func:`train_mindspore` — the torch trainer's model and batches, trained in MindSpore.

The open_clip model is built by the torch trainer's model phase (same seed: same initial weights) and renamed into
clipzoo's MindSpore CLIP; the batches come from its data phase (CSV / shards / folders through the readers, or
generated shapes: same seed, same order); each step is :class:`~clipzoo.train.mindspore.step.TrainStep`. The
trained model is written as ``OUTPUT/model/``: ``model.ckpt`` (MindSpore-CLIP's names; ``clipzoo.load(...)`` and
MindSpore-CLIP's own classes load it) beside the open_clip folder the torch trainer writes
(``open_clip_config.json`` + safetensors, ``clipzoo_train.json``), so ``clipzoo.load("OUTPUT/model")`` loads it in
torch too. The ``.ckpt`` stores its model config, so ``clipzoo.load(".../model.ckpt")`` needs no ``model=``. Data that
gives no batch is refused as the torch trainer refuses it: short of one batch before step 1 (a ConfigError), an
epoch without a batch (every image unreadable) at its end (a DatasetError).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mindspore as ms
import numpy as np
import torch

from ...models.mindspore_clip import CLIP, load_params
from ...models.mindspore_clip import build_model as build_net
from ...models.mindspore_config import check_config
from ...models.mindspore_names import mindspore_to_torch, to_mindspore_name, torch_to_mindspore, write_ckpt
from ...progress import progress
from ..config import ConfigError, TrainConfig
from ..model import TrainModel, build_model, check_model_folder, save_trained
from ..phases.data import no_batch_error, open_data, steps_per_epoch
from ..phases.optimiser import param_groups
from ..result import TrainingError, TrainResult
from ..storage import Location
from .config import check_mindspore_config, resolve_model
from .step import TrainStep

__all__ = ["train_mindspore", "mindspore_net", "mindspore_groups", "CKPT_NAME"]

CKPT_NAME = "model.ckpt"


def mindspore_net(model: TrainModel) -> CLIP:
    """The MindSpore CLIP holding the torch model's current weights (MindSpore-CLIP's names)."""
    if model.kind != "open_clip":
        raise ConfigError("--engine mindspore trains OpenAI / open_clip CLIPs, not compositional towers")
    net = build_net(check_config(model.model_cfg))
    return load_params(net, torch_to_mindspore(model.module.state_dict()))


def mindspore_groups(model: TrainModel, net: CLIP, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The torch trainer's AdamW groups (no decay on norms, biases, embeddings, the logit scale), as ``net``'s
    Parameters."""
    own = {p.name: p for p in net.trainable_params()}
    groups = []
    for group in param_groups(model.module, cfg.weight_decay, cfg.lr):
        params = [own.pop(to_mindspore_name(name)) for name in group["names"]]
        groups.append({"params": params, "weight_decay": float(group["weight_decay"])})
    if own:
        raise ConfigError(f"the MindSpore model has parameters the torch model has not: {', '.join(sorted(own)[:4])}")
    return groups


def train_mindspore(cfg: TrainConfig, data=None, on_step: "Callable[[int, dict], None] | None" = None
                    ) -> TrainResult:
    """Train as ``cfg`` says in MindSpore (``data``: batches as the torch trainer takes them; default the config's).
    Returns the run's result; its ``history`` holds every step's record."""
    cfg = check_mindspore_config(resolve_model(cfg))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)  # the torch trainer's initial weights (it seeds with cfg.seed)
    out = Location(cfg.output)
    check_model_folder(out, str(cfg.output))
    data, cfg, _ = open_data(cfg, model, data, out, 0)  # no held-out images: this engine has no evaluation
    per_epoch = steps_per_epoch(data, cfg.batch_size)  # as the torch trainer: data short of one batch is refused
    total = cfg.steps or per_epoch * cfg.epochs
    net = mindspore_net(model)
    step_fn = TrainStep(net, mindspore_groups(model, net, cfg), cfg, total)
    result = TrainResult(out.local, out.local / "model", total)
    step = epoch = 0
    with progress(total, "training (mindspore)", enabled=cfg.progress, unit="steps") as advance:
        while step < total:
            stepped = False
            for batch in data.batches(epoch, 0, cfg.batch_size, 0, 1):
                if step >= total:
                    break
                record = _step(step_fn, batch, step + 1)
                step, stepped = step + 1, True
                result.history.append(record)
                advance(1)
                if on_step is not None:
                    on_step(step, record)
            else:
                if not stepped:  # it looped for ever, epoch after empty epoch
                    raise no_batch_error(cfg.batch_size)
            epoch += 1
    result.skipped_images = getattr(data, "skipped", 0)
    save_mindspore(model, net, result, cfg)
    return result


def _step(step_fn: TrainStep, batch, step: int) -> dict[str, Any]:
    images = ms.Tensor(batch[0].float().contiguous().numpy())
    tokens = ms.Tensor(batch[1].numpy().astype(np.int32))
    record = step_fn(images, tokens)
    if not math.isfinite(record["loss"]):
        raise TrainingError(f"the loss became {record['loss']} at step {step}: training stopped (lower the lr)")
    return {"step": step, "loss": record.pop("loss"), "lr": step_fn.lr, **record}


def save_mindspore(model: TrainModel, net: CLIP, result: TrainResult, cfg: TrainConfig) -> Path:
    """``OUTPUT/model``: the open_clip folder (torch) and ``model.ckpt`` (MindSpore) of the trained weights."""
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    model_config = check_config(model.model_cfg)
    info = {"engine": "mindspore", "mindspore": ms.__version__, "config": cfg.as_dict(), "steps": len(result.history),
            "model_config": model_config, "history": result.history[-20:],
            "checkpoint": CKPT_NAME, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    state_dict = mindspore_to_torch(params)
    for key, value in state_dict.items():  # every training step counted a batch in each batch norm
        if key.endswith("num_batches_tracked"):
            value.fill_(len(result.history))
    folder = save_trained(model, result.model_dir, state_dict, info)
    write_ckpt(folder / CKPT_NAME, params, model_config=model_config)
    return folder / CKPT_NAME
