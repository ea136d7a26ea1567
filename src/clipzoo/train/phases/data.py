"""The data phase: which batches a run trains on, and the held-out images it evaluates on.

``data`` given to :func:`~clipzoo.train.engine.train` is used as it is; else the config's ``data`` names generated
shapes (``shapes:N``, ``shapes-classes:N``, held in memory) or the readers' sources (streamed). A user's
``eval_data`` is opened here, before step 1, to find a mistake in it before the training rather than after. An
``eval_data`` of ``shapes-heldout:N`` becomes ``OUTPUT/heldout`` (a local staging folder for remote runs), which rank 0
writes once every set-up check has passed (:meth:`~clipzoo.train.trainer.Trainer.start`): a refused run leaves no
folder of images behind. ``eval_every = 0`` turns the evaluation off: nothing is opened or written.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from ...datasets.readers import open_dataset
from ...errors import DatasetError
from ..config import ConfigError, TrainConfig
from ..data import StreamData, open_sources, shapes_data
from ..model import TrainModel
from ..recipes import heldout_size, parse_shapes_spec, write_heldout
from ..storage import Location, scratch_dir

__all__ = ["open_data", "heldout_eval", "check_eval_data", "steps_per_epoch"]


def open_data(cfg: TrainConfig, model: TrainModel, data, out: Location, rank: int):
    """(batches, config, write_heldout): ``data`` if given, else generated shapes or the readers' sources the
    config's ``data`` names, for ``model``'s preprocessing; the config evaluating on its held-out images' folder,
    and the call that writes that folder (None when there is none to write)."""
    if data is None and cfg.data and parse_shapes_spec(cfg.data[0]):
        if len(cfg.data) > 1:
            raise ConfigError("generated shapes (shapes:N, shapes-classes:N) cannot be mixed with other data sources")
        data = shapes_data(cfg.data[0], model, cfg.seed, cfg.workers)
    cfg, write = heldout_eval(cfg, model, out)
    if rank == 0 and write is None:
        check_eval_data(cfg)
    if data is None:
        data = streamed_data(cfg, model)
    return data, cfg, write


def check_eval_data(cfg: TrainConfig) -> None:
    """Before step 1: ``eval_data`` opens (a missing file failed at the first evaluation, after training) and has
    class names — the evaluation during training is zero-shot classification, and data without them evaluated
    nothing, silently."""
    if not cfg.evaluates:
        return
    try:
        data = open_dataset(cfg.eval_data, classnames=cfg.eval_classnames, templates=cfg.eval_templates)
    except DatasetError as err:
        raise DatasetError(f"eval_data: {err}") from None
    if not data.classnames:
        raise ConfigError(f"eval_data {cfg.eval_data}: no class names, and the evaluation during training is zero-shot "
                          "classification, which needs them; pass eval_classnames (a .txt of class names, one a line) "
                          "or a data set that carries them (a folder per class, shapes-heldout:N)")


def streamed_data(cfg: TrainConfig, model: TrainModel) -> StreamData:
    """Batches streamed from the readers' sources (CSV, shards, TFRecord, folders; local or fsspec)."""
    sources = open_sources(cfg.data, cfg.img_key, cfg.caption_key, cfg.separator)
    return StreamData(sources, model.train_transform, model.tokenizer, cfg.seed, cfg.workers,
                      cfg.train_num_samples, cfg.data_weights)


def heldout_eval(cfg: TrainConfig, model: TrainModel, out: Location
                 ) -> "tuple[TrainConfig, Callable[[], str] | None]":
    """``cfg`` with a ``shapes-heldout:N`` evaluation replaced by the folder of those images, and the call that
    writes them there (rank 0 makes it, once the set-up has passed); ``(cfg, None)`` for any other evaluation."""
    if not (cfg.evaluates and cfg.eval_data.startswith("shapes-heldout:")):
        return cfg, None
    heldout_size(cfg.eval_data)  # shapes-heldout:0 is refused now
    size = model.preprocess_cfg["size"]
    held = out.local / "heldout" if out.local is not None else Path(scratch_dir(cfg.output)) / "heldout"
    size = size[0] if isinstance(size, (list, tuple)) else size
    return cfg.replace(eval_data=str(held)), functools.partial(write_heldout, cfg.eval_data, held, size)


def steps_per_epoch(data, batch_size: int) -> int:
    """Optimizer steps in one pass over ``data`` (a :class:`ConfigError` when not even one batch fits)."""
    steps = data.steps_per_epoch(batch_size)
    if steps < 1:
        raise ConfigError(f"the data holds fewer samples than one batch of {batch_size}")
    return steps


def no_batch_error(batch_size: int) -> DatasetError:
    """The error of a whole epoch that gave no batch (the loop would go on for ever, epoch after empty epoch), as
    both engines' trainers raise it."""
    return DatasetError(f"a whole epoch of the training data gave no batch of {batch_size}: every sample was "
                        "unreadable or had no caption, or fewer samples are usable than one batch; check --data")
