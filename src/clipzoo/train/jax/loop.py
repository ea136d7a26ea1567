"""The JAX engine's run: :func:`train_jax` — processes and mesh, data, state, resume, the steps, checkpoints,
evaluation and the trained ``.pkl``; what ``clipzoo train --engine jax`` runs.

Per epoch (open_clip_jax's loop): the training steps, then the validation loss (``valid_path``), then a
checkpoint every ``checkpoint_freq`` epochs; clipzoo adds ``steps`` (a run length in steps), ``save_every``
(checkpoints every N steps), ``eval_every`` / ``eval_data`` (zero-shot through the Evaluator) and writes
``OUTPUT/model/params.pkl`` (load it with ``clipzoo.load(PATH, model=…)`` or convert it to open_clip) and
``OUTPUT/metrics.jsonl``.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from ...models.jax_config import get_config, write_config_file
from ...progress import progress
from ..config import ConfigError
from ..recipes import heldout_size, write_heldout
from ..result import TrainingError, TrainResult
from .checkpoint import Checkpoints, resolve_resume, restore, write_params_pkl
from .config import JaxTrainConfig
from .data import open_batches
from .evaluate import evaluate
from .mesh import Shardings, init_distributed, make_mesh
from .state import build_model, build_optimiser, init_state, model_variables
from .step import make_eval_step, make_train_step

__all__ = ["train_jax", "JaxTrainer"]


def train_jax(cfg: JaxTrainConfig, on_step: "Callable[[int, dict], None] | None" = None) -> TrainResult:
    """Train as ``cfg`` says (see :class:`~clipzoo.train.jax.config.JaxTrainConfig`); returns where the model is."""
    trainer = JaxTrainer(cfg, on_step)
    trainer.resume()
    trainer.run()
    return trainer.finish()


class JaxTrainer:
    def __init__(self, cfg: JaxTrainConfig, on_step=None):
        self.index, self.count = init_distributed()
        self.sh = Shardings(make_mesh(cfg.devices))
        self.sh.check_batch(cfg.global_batch_size)
        if cfg.global_batch_size % self.count:
            raise ConfigError(f"global batch size {cfg.global_batch_size} must divide by the number of processes "
                              f"{self.count}")
        self.out = Path(cfg.output)
        self.heldout = None  # (spec, folder): shapes-heldout:N, written by run() once the set-up has passed
        if cfg.evaluates and cfg.eval_data.startswith("shapes-heldout:"):
            heldout_size(cfg.eval_data)  # shapes-heldout:0 is refused here, before anything is written
            self.heldout = (cfg.eval_data, self.out / "heldout")
            cfg = cfg.replace(eval_data=str(self.heldout[1]))
        self.cfg, self.on_step = cfg, on_step
        opened = {"process_count": self.count, "process_index": self.index}
        self.train_data = open_batches(cfg.train_path, cfg, train=True, n_samples=cfg.train_n_samples,
                                       **opened) if cfg.train_path else None
        self.valid_data = open_batches(cfg.valid_path, cfg, train=False, n_samples=cfg.valid_n_samples,
                                       **opened) if cfg.valid_path else None
        self.steps_per_epoch = self.train_data.steps_per_epoch() if self.train_data else 0
        self.total = cfg.steps or cfg.n_epochs * self.steps_per_epoch
        self.module = build_model(cfg)
        # validation alone (no --train-path) builds no schedule that needs a run length
        self.tx, self.schedule = build_optimiser(cfg if self.train_data else cfg.replace(
            learning_rate_scheduler="const"), max(self.total, 1))
        self.state = self.sh.replicate(init_state(cfg, self.module, self.tx))
        self.train_step = make_train_step(self.module, self.tx, self.schedule, cfg.loss, self.sh)
        self.ckpt = Checkpoints(cfg.checkpoints)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.result = TrainResult(self.out, self.out / "model", self.total)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "metrics.jsonl" if self.index == 0 else None
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        spec = self.cfg.resume_from_checkpoint
        if not spec:
            return
        folder, step = resolve_resume(spec, self.cfg.checkpoints)
        self.state, meta = restore(folder, step, self.state)
        self.step = int(jax.device_get(self.state["step"]))
        if self.train_data is not None and self.step >= self.total:  # it reported "trained N steps" for none
            where = "the end of" if self.step == self.total else "past"
            raise TrainingError(f"cannot resume from {folder}: it is at step {self.step}, {where} this run's "
                                f"{self.total} steps; pass --steps above {self.step}, or start a new run")
        self.epoch, self.batch_in_epoch = int(meta.get("epoch", 0)), int(meta.get("batch_in_epoch", 0))

    # ------------------------------------------------------------------ the steps
    def run(self) -> None:
        cfg = self.cfg
        if self.heldout is not None and self.index == 0:  # after every check: a refused run leaves none behind
            write_heldout(self.heldout[0], self.heldout[1], cfg.image_size)
        if self.train_data is None:
            self.validate()
            return
        shown = cfg.progress and self.index == 0
        with progress(self.total, "training (jax)", enabled=shown, unit="steps", start=self.step) as advance:
            while self.step < self.total:
                for images, tokens in self.train_data.batches(self.epoch, self.batch_in_epoch):
                    if self.step >= self.total:
                        break
                    self.one_step(images, tokens)
                    advance(1)
                else:
                    self.end_of_epoch()

    def one_step(self, images: np.ndarray, tokens: np.ndarray) -> None:
        cfg = self.cfg
        x, t = self.sh.put_batch(images, tokens)
        self.state, metrics = self.train_step(self.state, x, t)
        self.step += 1
        self.batch_in_epoch += 1
        step = self.step
        if self.on_step is not None or step % cfg.log_freq == 0 or step == self.total:
            loss, scale, lr = (float(v) for v in jax.device_get((metrics["loss"], metrics["logit_scale"],
                                                                  metrics["lr"])))
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} at step {step}: training stopped (lower the "
                                    "learning rate, or use float32)")
            record = {"step": step, "loss": loss, "lr": lr, "logit_scale": scale,
                      "samples": step * cfg.global_batch_size, "elapsed_s": round(time.perf_counter() - self.t0, 3)}
            if step % cfg.log_freq == 0 or step == self.total:
                self.result.history.append(record)
                self.write(record)
            if self.on_step is not None:
                self.on_step(step, record)
        if cfg.save_every and step % cfg.save_every == 0 and step < self.total:
            self.save()
        if cfg.eval_every and cfg.eval_data and step % cfg.eval_every == 0:
            self.evaluate()

    def end_of_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        if self.valid_data is not None:
            self.validate()
        if self.epoch % self.cfg.checkpoint_freq == 0 and self.step < self.total:
            self.save()

    def validate(self) -> None:
        """The mean loss over the validation batches (open_clip_jax's validation), into the log."""
        eval_step = make_eval_step(self.module, self.cfg.loss, self.sh)
        losses = [float(eval_step(self.state["params"], self.state.get("batch_stats"), *self.sh.put_batch(x, t)))
                  for x, t in self.valid_data.batches(0)]
        record = {"step": self.step, "epoch": self.epoch, "valid_loss": float(np.mean(losses))}
        self.result.evals.append(record)
        self.write(record)

    def evaluate(self) -> None:
        if self.index != 0:
            return
        record = evaluate(model_variables(self.state), self.cfg, self.step)
        self.result.evals.append(record)
        self.write({f"eval/{k}" if k != "step" else k: v for k, v in record.items()})

    # ------------------------------------------------------------------ outputs
    def save(self) -> str:
        meta = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "config": self.cfg.as_dict()}
        return self.ckpt.save(self.state, meta)

    def write(self, record: dict) -> None:
        if self.log is not None:
            with open(self.log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def finish(self) -> TrainResult:
        cfg = self.cfg
        if self.train_data is not None:
            self.save()
        self.ckpt.close()
        if self.index == 0:
            model_dir = self.out / "model"
            write_params_pkl(model_dir / "params.pkl", model_variables(self.state))
            write_config_file(model_dir / "params.pkl", get_config(cfg.model), cfg.image_size, cfg.context_len)
            info = {"engine": "jax", "model": cfg.model, "image_size": cfg.image_size, "context_len": cfg.context_len,
                    "steps": self.step, "processes": self.count, "devices": self.sh.size, "config": cfg.as_dict()}
            (model_dir / "config.json").write_text(json.dumps(info, indent=1))
            done = [e for e in self.result.evals if "valid_loss" not in e]
            if cfg.evaluates and (not done or done[-1]["step"] != self.step):
                self.evaluate()
        return self.result
