"""orbax checkpoints of the training state, and the trained parameters as open_clip_jax's ``.pkl``.

``CHECKPOINT_DIR/<step>/`` (an orbax ``CheckpointManager`` folder) holds the whole state — step, parameters,
AdamW moments — and, as JSON metadata, the epoch and batch position and the config, so that
``--resume-from-checkpoint`` (the folder: its latest step; or one ``<step>`` folder; or ``latest``)
continues exactly: the schedule, the data order and the parameters are those an uninterrupted run would have.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ...errors import one_line
from ..result import TrainingError

__all__ = ["Checkpoints", "resolve_resume", "write_params_pkl"]

META = "clipzoo.json"


class Checkpoints:
    """An orbax CheckpointManager over ``folder`` (the last ``keep`` steps kept)."""

    def __init__(self, folder: str, keep: int = 5):
        self.folder = os.path.abspath(folder)
        self.manager = ocp.CheckpointManager(self.folder, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True))

    def save(self, state: dict, meta: dict) -> str:
        step = int(jax.device_get(state["step"]))
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        where = os.path.join(self.folder, str(step))
        if jax.process_index() == 0:
            Path(where, META).write_text(json.dumps(meta))
        return where

    def close(self) -> None:
        self.manager.close()


def resolve_resume(spec: str, default_folder: str) -> tuple[str, int]:
    """(manager folder, step) of ``spec``: ``latest`` (in ``default_folder``), a checkpoint folder (its latest
    step) or one step's folder."""
    path = os.path.abspath(default_folder if spec == "latest" else spec)
    if os.path.basename(path).isdigit() and os.path.isdir(path):
        return os.path.dirname(path), int(os.path.basename(path))
    steps = sorted(int(p) for p in (os.listdir(path) if os.path.isdir(path) else []) if p.isdigit())
    if not steps:
        raise TrainingError(f"no checkpoint to resume from in {spec!r}: expected an orbax checkpoint folder "
                            "(OUTPUT/checkpoints) or one of its step folders")
    return path, steps[-1]


def restore(folder: str, step: int, like: dict) -> tuple[dict, dict]:
    """(state shaped and sharded like ``like``, metadata) of ``folder/step``."""
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    where = os.path.join(folder, str(step))
    manager = ocp.CheckpointManager(folder)
    try:
        state = manager.restore(step, args=ocp.args.StandardRestore(target))
    # any failure of orbax / TensorStore to read the folder (ValueError OUT_OF_RANGE / DATA_LOSS for a damaged
    # file, JSON errors for its metadata, RuntimeError from its event loop, …) is the folder's fault
    except Exception as err:  # noqa: BLE001
        raise TrainingError(f"cannot restore checkpoint {where} ({_first_line(err)}); it is damaged or was written "
                            "for another model or optimiser: resume from another step folder, or with the config "
                            "it was written with") from None
    finally:
        manager.close()
    return state, _read_meta(where)


def _read_meta(where: str) -> dict:
    meta_path = Path(where, META)
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        meta = err
    if not isinstance(meta, dict):
        detail = _first_line(meta) if isinstance(meta, Exception) else "not a JSON object"
        raise TrainingError(f"cannot read {meta_path} ({detail}); the checkpoint is damaged: resume from another "
                            "step folder")
    return meta


def _first_line(err: Exception, limit: int = 300) -> str:
    """An error's message on one line: TensorStore's run to several lines and kilobytes."""
    text = one_line(err)
    return text if len(text) <= limit else text[:limit] + "…"


def write_params_pkl(path: "str | os.PathLike", variables: dict) -> None:
    """``{'params': …}`` as open_clip_jax's parameter file (a pickled dict of numpy arrays)."""
    tree = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), dict(variables))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(tree, fh, protocol=pickle.HIGHEST_PROTOCOL)
