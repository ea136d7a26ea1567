"""The :class:`Trainer`: the state one training run's phases share, each phase a method that calls its module
(:mod:`clipzoo.train.phases`), and the loop.

Per step: this rank's share of the global batch → features → the objective (features gathered across ranks by the
loss itself) → backward → clip → AdamW → cosine schedule → logit-scale clamp → EMA. A NaN / inf loss stops the run
naming the step; the last good checkpoint stays.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from ..progress import progress
from .checks import check_teacher
from .config import ConfigError, TrainConfig
from .data import StreamData
from .distill import attach_teacher, load_teacher, student_dim, teacher_targets
from .distributed import barrier, freeze_unused, init_distributed, mean_over_ranks, pick_device, wrap_ddp
from .model import TrainModel, build_model, check_model_folder, checkpoint_config
from .phases.checkpoint import (
    checkpoint_location,
    final_weights,
    read_resume,
    ready_checkpoints,
    save_checkpoint,
    save_model,
)
from .phases.data import no_batch_error, open_data, steps_per_epoch
from .phases.evaluate import evaluate
from .phases.metrics import RunLog
from .phases.model import prepare
from .phases.objective import ProtoBank, build_objective
from .phases.optimiser import Optimiser
from .phases.step import forward_backward
from .recipes import parse_shapes_spec
from .result import TrainingError, TrainResult
from .run_lock import hold_output
from .storage import Location, remove_stale_temporaries

__all__ = ["Trainer"]


class Trainer:
    """One run of :func:`~clipzoo.train.engine.train`: device and processes, then its phases in order."""

    def __init__(self, cfg: TrainConfig, on_step: "Callable[[int, dict], None] | None" = None, teacher=None):
        self.t_start = time.perf_counter()
        self.device = pick_device(cfg.device)
        self.rank, self.world = init_distributed(self.device)
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ConfigError(f"batch_size {cfg.batch_size} must divide by processes × grad_accum = "
                              f"{self.world * cfg.grad_accum}")
        if teacher is None:
            check_teacher(cfg)
        for spec in cfg.data:  # shapes:0 failed in the rendering, after the model was built
            parse_shapes_spec(spec)
        torch.manual_seed(cfg.seed)
        self.cfg, self.on_step, self.teacher = cfg, on_step, teacher
        self.out = Location(cfg.output)
        check_model_folder(self.out, str(cfg.output))
        self.ckpt = checkpoint_location(cfg.output, cfg.checkpoint_dir)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.last_ckpt: "Any | None" = None  # the last good checkpoint: this run's latest, or the one it resumed
        self.output_lock = None
        self.write_heldout: "Callable[[], str] | None" = None  # the data phase's held-out images, written by start()
        if self.rank == 0:  # the lock last, and given back if the folders are not usable: it leaked to the next run
            self.output_lock = hold_output(self.out.local, str(cfg.output))
            try:
                ready_checkpoints(self.ckpt, given=bool(cfg.checkpoint_dir))
                remove_stale_temporaries(self.out.local)  # a killed run's model folder, half written
            except BaseException:
                self.release_output()
                raise

    # ------------------------------------------------------------------ set-up phases
    def build_model(self, model: "TrainModel | None" = None) -> None:
        """The model phase: ``model`` or the one the config names, on its device in its training layout."""
        self.model = model or build_model(self.cfg)
        self.module, self.memory_format = prepare(self.model, self.cfg, self.device)

    def open_data(self, data=None) -> None:
        """The data phase: ``data`` or the batches the config names (and its held-out evaluation images)."""
        self.data, self.cfg, self.write_heldout = open_data(self.cfg, self.model, data, self.out, self.rank)

    def attach_teacher(self) -> None:
        """Distillation: the teacher given to :func:`train` or the config's, frozen; the data re-tokenises the
        captions for it."""
        given, self.teacher = self.teacher, None
        if given is not None or self.cfg.teacher:
            pre = self.model.preprocess_cfg
            self.teacher = load_teacher(given if given is not None else self.cfg.teacher, pre["mean"], pre["std"],
                                        self.device)
            attach_teacher(self.data, self.teacher)

    def build_optimiser(self) -> None:
        """The optimiser phase: the run's length, AdamW and its schedule (and the starting weights for WiSE-FT)."""
        self.steps_per_epoch = steps_per_epoch(self.data, self.cfg.batch_size)
        self.total = self.cfg.steps or self.steps_per_epoch * self.cfg.epochs
        self.start_weights = ({k: v.detach().clone() for k, v in self.module.state_dict().items()}
                              if self.cfg.wise_ft is not None else None)
        self.optimiser = Optimiser(self.module, self.cfg, self.total, self.device)

    def build_objective(self) -> None:
        """The objective (and ProtoCLIP's episode bank), then the EMA of the weights."""
        self.loss_fn = build_objective(self.cfg, self.model, self.module, self.teacher, self.device)
        self.bank = ProtoBank.of(self.cfg, self.loss_fn, self.steps_per_epoch)
        self.optimiser.start_ema(self.module, self.cfg.ema)

    def resume(self) -> None:
        """The checkpoint phase, at the start: continue exactly where ``cfg.resume`` stopped."""
        if self.cfg.resume:
            self.last_ckpt, state = read_resume(self.cfg, self.ckpt, self.total, isinstance(self.data, StreamData))
            self.load_state_dict(state)

    def start(self) -> None:
        """DDP (with the parameters the objective never reads frozen), the logs and the result."""
        cfg = self.cfg
        self.train_module = self.module
        if self.world > 1:
            freeze_unused(self.module, self.loss_fn, cfg.batch_size // self.world,
                          student_dim(self.module, self.model.model_cfg), self.teacher, self.device)
            self.train_module = wrap_ddp(self.module, self.device)
        output = self.out.local if self.out.local is not None else self.out.url
        model_dir = self.out.local / "model" if self.out.local is not None else self.out.name_of("model")
        self.result = TrainResult(output, model_dir, self.total)
        self.log = RunLog(cfg, self.out, self.rank, self.step if cfg.resume else None, self.t_start)
        self.micro = cfg.batch_size // self.world // cfg.grad_accum
        if self.rank == 0 and self.write_heldout is not None:  # after every set-up check: none left by a refusal
            self.write_heldout()

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        """Steps until ``total``, epoch after epoch, from the data position (a resumed run's included)."""
        shown = self.cfg.progress and self.rank == 0
        self.recent: tuple["float | None", int] = (None, 0)  # (last loss, samples since the last progress line)
        self.recent_since, self.rate = time.perf_counter(), 0.0
        with progress(self.total, "training", enabled=shown, unit="steps", start=self.step,
                      status=self.progress_status) as advance:
            while self.step < self.total:
                whole_epoch, stepped = self.batch_in_epoch == 0, False
                for batch in self.data.batches(self.epoch, self.batch_in_epoch, self.cfg.batch_size, self.rank,
                                               self.world):
                    if self.step >= self.total:
                        break
                    record, samples = self.train_step(batch)
                    stepped = True
                    self.recent = (record["loss"], self.recent[1] + samples)
                    advance(1)
                    self.after_step(record, samples)
                else:
                    if whole_epoch and not stepped:  # it looped for ever, epoch after empty epoch
                        raise no_batch_error(self.cfg.batch_size)
                    self.epoch += 1
                    self.batch_in_epoch = 0

    def release_output(self) -> None:
        """Give up the run folder's lock (:mod:`.run_lock`)."""
        if self.output_lock is not None:
            os.close(self.output_lock)
            self.output_lock = None

    def progress_status(self) -> str:
        """The progress line's tail: the last step's loss and the samples per second since the previous line
        (a window of at least a second, so that a bar redrawn ten times a second shows a steady figure)."""
        now = time.perf_counter()
        loss, samples = self.recent
        if loss is None:
            return ""
        if now - self.recent_since >= 1.0:
            self.rate = samples / (now - self.recent_since)
            self.recent, self.recent_since = (loss, 0), now
        elif not self.rate:  # the first window is not a second long yet: show what it has, never a 0
            self.rate = samples / max(now - self.recent_since, 1e-9)
        return f"loss {loss:.4f} · {self.rate:,.1f} samples/s"

    def train_step(self, batch: tuple) -> tuple[dict[str, Any], int]:
        """The step phase: forward, backward, optimiser step; (the step's record, the global samples it saw)."""
        images = batch[0].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        tokens = batch[1].to(self.device, non_blocking=True)
        targets = teacher_targets(self.teacher, images, batch)
        loss, parts, scale, feats = forward_backward(self.train_module, self.loss_fn, images, tokens, self.micro,
                                                     self.cfg.grad_accum, self.device, self.optimiser.amp_dtype,
                                                     self.optimiser.scaler, targets)
        if self.world > 1:  # report the global loss: the mean of the ranks' losses
            loss = mean_over_ranks(loss, self.device)
        if not math.isfinite(loss):
            where = f"; the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else ""
            raise TrainingError(f"the loss became {loss} at step {self.step + 1}: training stopped{where} "
                                "(lower the lr, add --grad-clip, or use fp32)")
        lr = self.optimiser.lr  # the lr this step uses (open_clip logs it too), not the next step's
        self.optimiser.apply(self.module)
        self.step += 1
        self.batch_in_epoch += 1
        if self.bank is not None:  # ProtoCLIP: this step's features join the episode's bank
            self.bank.add(self.step, feats, targets)
        record = {"step": self.step, "loss": loss, "lr": lr, "logit_scale": scale, **parts}
        return record, images.shape[0] * self.world

    def after_step(self, record: dict[str, Any], samples: int) -> None:
        """Log the step, call ``on_step``, then checkpoint and evaluate when due (rank 0)."""
        cfg, step = self.cfg, self.step
        if self.log.step(record, self.total, samples):
            self.result.history.append(record)
        if self.on_step is not None:
            self.on_step(step, record)
        if self.rank == 0 and cfg.save_every and step % cfg.save_every == 0 and step < self.total:
            self.last_ckpt = save_checkpoint(self.ckpt, self.state_dict(), step)
            self.log.flush()
            self.log.sync()
        if cfg.eval_every and cfg.eval_data and step % cfg.eval_every == 0 and self.rank == 0:
            self.evaluate()
            self.module.train()

    def evaluate(self) -> None:
        """The evaluation phase: zero-shot metrics now, into the result and the logs."""
        evaluation = evaluate(self.model, self.cfg, self.step)
        self.result.evals.append(evaluation)
        self.log.evaluation(evaluation)

    # ------------------------------------------------------------------ the end
    def finish(self):
        """The trained model folder (EMA / WiSE-FT weights, adapters merged), then the last checkpoint — the model
        first: a disk that fills up at the end keeps what the user wants most — and a final evaluation when the
        last step had none."""
        if self.world > 1:
            barrier()
        result, cfg = self.result, self.cfg
        result.skipped_images = getattr(self.data, "skipped", 0)
        if self.rank != 0:
            return result
        self.log.flush()
        ema = self.optimiser.ema
        weights = final_weights(self.module, ema.state_dict() if ema is not None else None, self.start_weights,
                                cfg.wise_ft)
        info = {"config": cfg.as_dict(), "steps": self.step, "world_size": self.world,
                "history": result.history[-20:], "evals": result.evals}
        save_model(self.model, self.out, result.model_dir, weights, info)
        save_checkpoint(self.ckpt, self.state_dict(), self.step, kept=f" (the trained model is in {result.model_dir})")
        if cfg.evaluates and (not result.evals or result.evals[-1]["step"] != self.step):
            self.evaluate()
            self.log.flush()
        self.log.close()
        return result

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Everything exact resume needs (the checkpoint format)."""
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "model": self.module.state_dict(), **self.optimiser.state_dict(), "loss": self.loss_fn.state_dict(),
                "rng": torch.get_rng_state(), "config": self.cfg.as_dict(), "architecture": self.cfg.architecture(),
                "start_weights": self.start_weights, "clipzoo_open_clip_config": checkpoint_config(self.model),
                "proto_bank": self.bank.state_dict() if self.bank is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state)
        if state.get("loss"):
            self.loss_fn.load_state_dict(state["loss"])
        if self.start_weights is not None and state.get("start_weights"):
            self.start_weights = state["start_weights"]
        torch.set_rng_state(state["rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if self.bank is not None and state.get("proto_bank"):
            self.bank.load_state_dict(state["proto_bank"], self.device)
