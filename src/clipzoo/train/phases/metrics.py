"""What a run logs (rank 0 only): every ``log_every`` steps a record — loss and its components, lr, logit scale,
samples/s, elapsed time — in ``metrics.jsonl`` (:class:`~clipzoo.train.storage.MetricsLog`), in the result's
history and in tensorboard (``OUTPUT/tensorboard``; staged locally and uploaded for a remote OUTPUT); evaluations
too, as ``eval/…`` entries."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..storage import Location, MetricsLog, scratch_dir

__all__ = ["RunLog"]


def tensorboard_writer(out: Location, cfg: TrainConfig):
    """A SummaryWriter on OUTPUT/tensorboard; for a remote OUTPUT it writes to a local staging folder that
    :meth:`RunLog.sync` uploads at every checkpoint and at the end."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: scalars still go to the history
        return None
    if out.local is not None:
        return SummaryWriter(str(out.local / "tensorboard"))
    return SummaryWriter(str(Path(scratch_dir(cfg.output)) / "tensorboard"))


class RunLog:
    """The logs of one run: rank 0 writes them; on other ranks nothing is written."""

    def __init__(self, cfg: TrainConfig, out: Location, rank: int, resume_step: "int | None", t_start: float):
        self.out, self.t_start, self.log_every = out, t_start, cfg.log_every
        self.writer = tensorboard_writer(out, cfg) if rank == 0 else None
        self.metrics = (MetricsLog(cfg.metrics_log or out.name_of("metrics.jsonl"), resume_step)
                        if rank == 0 else None)
        self.t_last, self.seen = time.perf_counter(), 0

    def step(self, record: dict[str, Any], total: int, samples: int) -> bool:
        """Count a step's ``samples``; on a logged step (every ``log_every`` and the last) add the throughput and
        elapsed time to ``record`` and write it. Returns whether the step was logged."""
        self.seen += samples
        step = record["step"]
        if not (step % self.log_every == 0 or step == total):
            return False
        now = time.perf_counter()
        record["samples_per_s"] = self.seen / max(now - self.t_last, 1e-9)
        record["elapsed_s"] = now - self.t_start
        self.t_last, self.seen = now, 0
        if self.metrics is not None:
            self.metrics.add(record)
        if self.writer is not None:
            for k, v in record.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, step)
        return True

    def evaluation(self, evaluation: dict[str, Any]) -> None:
        """An evaluation's metrics: to tensorboard (``eval/…``) and to metrics.jsonl with the elapsed time."""
        step = evaluation["step"]
        if self.writer is not None:
            for k, v in evaluation.items():
                if k != "step":
                    self.writer.add_scalar(f"eval/{k}", v, step)
        if self.metrics is not None:
            self.metrics.add({"step": step, "elapsed_s": time.perf_counter() - self.t_start,
                              **{f"eval/{k}": v for k, v in evaluation.items() if k != "step"}})

    def flush(self) -> None:
        """Rewrite a remote metrics.jsonl (a local one is appended as it goes)."""
        if self.metrics is not None:
            self.metrics.flush()

    def sync(self) -> None:
        """Upload a remote run's tensorboard events."""
        if self.writer is None or self.out.local is not None:
            return
        self.writer.flush()
        self.out.child("tensorboard").upload_dir(Path(self.writer.log_dir))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.sync()
