"""The checkpoint phase: checkpoints written atomically, exact resume, and the trained model folder.

Checkpoints (``OUTPUT/checkpoints/step_000123.pt``, ``OUTPUT/checkpoints/latest``) hold the model, optimizer,
schedule, scaler, EMA, objective state (queues, centres), RNG state and the data position, written to a temporary
file and renamed. ``resume="latest"`` continues exactly where the run stopped; a checkpoint of another model
(``TrainConfig.architecture()``) is refused, naming the differences.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ...checkpoints import load_failure_reason
from ..config import ConfigError, TrainConfig
from ..model import TrainModel, save_trained
from ..result import TrainingError
from ..storage import Location, refused_write, remove_stale_temporaries, torch_load_url, url_exists

__all__ = ["checkpoint_location", "latest_checkpoint", "latest", "save_checkpoint", "ready_checkpoints", "read_resume",
           "final_weights", "save_model", "RESUME_SAME", "RESUME_KEYS"]


def checkpoint_location(output: "str | os.PathLike", checkpoint_dir: "str | None" = None) -> Location:
    """Where a run's checkpoints go: ``checkpoint_dir``, else ``OUTPUT/checkpoints``."""
    return Location(checkpoint_dir) if checkpoint_dir else Location(output).child("checkpoints")


def latest_checkpoint(output: "str | os.PathLike", checkpoint_dir: "str | None" = None) -> "Path | str | None":
    """The checkpoint ``latest`` names (else the highest step): a Path, or a URL for remote folders."""
    return latest(checkpoint_location(output, checkpoint_dir))


def latest(ckpt: Location) -> "Path | str | None":
    """The checkpoint in ``ckpt`` that ``latest`` names, else the highest step; None when there is none."""
    if ckpt.exists("latest"):
        name = ckpt.read_text("latest").strip()
        if name and ckpt.exists(name):
            return _named(ckpt, name)
    found = ckpt.glob_names("step_*.pt")
    return _named(ckpt, found[-1]) if found else None


def _named(ckpt: Location, name: str) -> "Path | str":
    return ckpt.local / name if ckpt.local is not None else ckpt.name_of(name)


def save_checkpoint(ckpt: Location, state: dict[str, Any], step: int, kept: str = "") -> "Path | str":
    """``step_NNNNNNN.pt`` then the ``latest`` marker, each written to a temporary name and renamed / moved (a write
    the disk refuses: one line, ``kept`` at its end, and no temporary left)."""
    name = f"step_{step:07d}.pt"
    ckpt.torch_save(name, state, kept)
    ckpt.write_text("latest", name + "\n")
    return _named(ckpt, name)


def ready_checkpoints(ckpt: Location, given: bool) -> None:
    """Before step 1: the local checkpoint folder exists and takes a file (a ``checkpoint_dir`` that is a file
    trained every step, then failed with no checkpoint and no model), and the temporaries of killed runs in it are
    removed. ``given``: the folder is the config's ``checkpoint_dir`` (else ``OUTPUT/checkpoints``)."""
    folder = ckpt.local
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        said = f"checkpoint_dir {folder}" if given else f"{folder}, where the run's checkpoints go,"
        raise ConfigError(f"{said} is a file; pass a folder (new, or a previous run's), or move the file away")
    probe = folder / f".clipzoo-probe.tmp-{os.getpid()}"
    with refused_write(folder, probe):
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    probe.unlink()
    remove_stale_temporaries(folder)


RESUME_SAME = ("batch_size", "loss", "loss_options")  # what the data position and the objective's state depend on
#: what a checkpoint must hold to be resumed from (Trainer.load_state_dict reads each)
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "batch_in_epoch")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} (checkpoint) vs {b!r} (now)"]


def read_resume(cfg: TrainConfig, ckpt: Location, total: int, streamed: bool = False
                ) -> "tuple[Path | str, dict[str, Any]]":
    """(the checkpoint ``cfg.resume`` names — ``latest``, or a path / URL —, its state), checked to be of this model
    and of a run this one continues exactly: the same batch size and objective, the same DataLoader workers for
    ``streamed`` data, the same teacher for an objective with state, and not past the run's ``total`` steps."""
    path = latest(ckpt) if cfg.resume == "latest" else cfg.resume
    if path is None or not url_exists(str(path)):
        where = "in " + str(ckpt) if cfg.resume == "latest" else cfg.resume
        raise TrainingError(f"nothing to resume: no checkpoint {where}")
    state = _resume_state(str(path))
    diffs = _diff(state["architecture"], cfg.architecture())
    if diffs:
        raise ConfigError(f"cannot resume from {path}: the model differs — " + "; ".join(diffs[:5]))
    saved, now = state.get("config"), cfg.as_dict()
    if isinstance(saved, dict):  # checkpoints before this check did not hold their config: nothing to compare
        _same(path, saved, now, RESUME_SAME, "its data position counts batches of its batch size and its objective's "
                                             "state is its loss's")
        if streamed:  # the order of streamed samples depends on the workers (generated shapes' does not)
            _same(path, saved, now, ("workers",), "streamed samples come in an order set by the number of DataLoader "
                                                  "workers: the run would go on with other samples than it stopped at")
        if state.get("loss"):  # queues / centres: a teacher's features
            _same(path, saved, now, ("teacher",), "its objective's state holds that teacher's features, which another "
                                                  "teacher's would be compared with")
    if state["step"] >= total:  # past: "trained 2 steps" with the model at step 4; at: "trained 4 steps" for none
        where = "the end of" if state["step"] == total else "past"
        raise TrainingError(f"cannot resume from {path}: it is at step {state['step']}, {where} this run's {total} "
                            f"steps; pass --steps above {state['step']}, or start a new run")
    return path, state


def _same(path: Any, saved: dict[str, Any], now: dict[str, Any], keys: "tuple[str, ...]", why: str) -> None:
    diffs = _diff({k: saved.get(k) for k in keys}, {k: now[k] for k in keys})
    if diffs:
        raise ConfigError(f"cannot resume from {path}: " + "; ".join(diffs) + f" — {why}; resume with the "
                          "checkpoint's values, or start a new run")


def _resume_state(path: str) -> dict[str, Any]:
    """The checkpoint at ``path``, or a TrainingError saying why it is not one: truncated, empty, not a torch file,
    or a torch file of something else (each was a traceback, an empty file the CLI's "Aborted!")."""
    try:
        state = torch_load_url(path)
    except Exception as exc:  # noqa: BLE001 - torch.load's many failures on what is no checkpoint
        why = "it is empty" if isinstance(exc, EOFError) else load_failure_reason(exc)
        raise TrainingError(f"cannot resume from {path}: not a clipzoo training checkpoint ({why}); pass a "
                            "step_*.pt from a run's checkpoints/ (or 'latest')") from None
    if not isinstance(state, dict) or not isinstance(state.get("architecture"), dict):
        held = type(state).__name__ if not isinstance(state, dict) else f"keys {', '.join(map(str, list(state)[:5]))}"
        raise TrainingError(f"cannot resume from {path}: not a clipzoo training checkpoint (it holds {held}); pass "
                            "a step_*.pt from a run's checkpoints/ (or 'latest')")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:  # a KeyError traceback
        raise TrainingError(f"cannot resume from {path}: the checkpoint lacks {', '.join(missing)} (another version "
                            "wrote it, or it was edited); resume from another step_*.pt, or start a new run")
    return state


def final_weights(module: torch.nn.Module, ema_state: "dict | None", start_weights: "dict | None",
                  wise_ft: "float | None") -> dict[str, torch.Tensor]:
    """The weights saved: the module's, its EMA where kept, interpolated with the starting weights by WiSE-FT
    (``(1 - a) * start + a * trained``)."""
    final = dict(ema_state) if ema_state is not None else None
    weights = dict(module.state_dict().items())
    if final:
        weights.update(final)
    if start_weights is not None:
        a = wise_ft
        weights = {k: ((1 - a) * start_weights[k].to(v) + a * v) if v.is_floating_point() else v
                   for k, v in weights.items()}
    return weights


def save_model(model: TrainModel, out: Location, model_dir: "Path | str", weights: dict, info: dict) -> None:
    """The trained model folder: written in place for a local OUTPUT; written locally, then uploaded file by file
    for a remote one."""
    if out.local is not None:
        save_trained(model, model_dir, weights, info)
        return
    staging = Path(tempfile.mkdtemp(prefix="clipzoo-model-"))
    try:
        save_trained(model, staging / "model", weights, info)
        out.child("model").upload_dir(staging / "model")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
