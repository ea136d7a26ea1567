"""Training: one process or many (torchrun), exact resume, atomic checkpoints — :func:`train`.

A run goes through the phases of a :class:`~clipzoo.train.trainer.Trainer` (:mod:`clipzoo.train.phases`); the
distillation (:mod:`clipzoo.train.distill`) and adapter (:mod:`clipzoo.train.adapters`) plug-ins join in where
the config names a teacher or adapters.

Checkpoints (``OUTPUT/checkpoints/step_000123.pt``, ``OUTPUT/checkpoints/latest``) hold the model,
optimizer, schedule, scaler, EMA, objective state (queues, centres), RNG state and the data position,
written to a temporary file and renamed. ``resume="latest"`` continues exactly where the run stopped.
A NaN / inf loss stops the run naming the step; the last good checkpoint stays.
"""
from __future__ import annotations

from collections.abc import Callable

from .config import TrainConfig
from .model import TrainModel
from .phases.checkpoint import latest_checkpoint
from .phases.evaluate import comparator_of
from .phases.model import trim_text_padding
from .result import TrainingError, TrainResult
from .trainer import Trainer

__all__ = ["train", "TrainResult", "TrainingError", "latest_checkpoint", "comparator_of", "trim_text_padding"]


def train(cfg: TrainConfig, data=None, model: "TrainModel | None" = None,
          on_step: "Callable[[int, dict], None] | None" = None, teacher=None) -> TrainResult:
    """Train as ``cfg`` says; ``data`` (a :class:`~clipzoo.train.data.MemoryData` / ``StreamData``) and
    ``model`` default to what the config names; ``teacher`` (a loaded Comparator) overrides ``cfg.teacher``.
    Returns where the trained model folder is."""
    trainer = Trainer(cfg, on_step=on_step, teacher=teacher)  # device, processes, seed, run folder (locked)
    try:
        trainer.build_model(model)  # the module on its device, in its training layout
        trainer.open_data(data)  # the batches, and held-out evaluation images
        trainer.attach_teacher()  # distillation: a frozen teacher, captions re-tokenised for it
        trainer.build_optimiser()  # AdamW, schedule, scaler
        trainer.build_objective()  # the loss, ProtoCLIP's bank, the EMA
        trainer.resume()  # a stopped run continues exactly
        trainer.start()  # DDP, logs
        trainer.run()  # the steps, with their checkpoints and evaluations
        return trainer.finish()  # last checkpoint, model folder, final evaluation
    finally:
        trainer.release_output()  # the next run on this OUTPUT, in this process too, may start
