"""Any clipzoo model as an MTEB model (text tasks) and a MIEB model (image and image–text tasks).

:class:`ClipzooMTEBModel` implements mteb's ``EncoderProtocol`` by subclassing its ``AbsEncoder`` (as mteb's
own open_clip / SigLIP wrappers do): ``encode`` receives mteb's DataLoader of batches (``"text"``: strings,
``"image"``: PIL images) and returns L2-normalised features; a batch with both (MIEB's fused image+text
documents) gets the normalised sum. Similarity is cosine, declared in its ``ModelMeta``. mteb's evaluation
then runs unchanged:

>>> model = mteb_model(clipzoo.load("clipzoo/tiny-shapes"))
>>> mteb.evaluate(model, mteb.get_tasks(tasks=["STS12"]), cache=None)

This module imports mteb at its top: import it only after ``extras.require("mteb", …)``.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mteb
import numpy as np
import torch
import torch.nn.functional as F
from mteb.abstasks.abstask import AbsTask
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from ..errors import EvalInputError
from ..modalities import IMAGE, TEXT
from .runner import model_fields

MTEB_MODALITIES = {IMAGE: "image", TEXT: "text"}


def model_meta(comparator, name: str | None = None) -> ModelMeta:
    """mteb's ``ModelMeta`` for a loaded clipzoo model (``name``: ``org/model`` as mteb names models)."""
    arch, pretrained = model_fields(comparator)
    if name is None:
        name = comparator.card.display_name if "/" in comparator.card.display_name else f"clipzoo/{arch}"
    n_params = sum(p.numel() for p in comparator.parameters())
    modalities = [MTEB_MODALITIES[m] for m in comparator.modalities if m in MTEB_MODALITIES]
    return ModelMeta(
        loader=None, name=name, revision=pretrained or "local", release_date=None, languages=None,
        n_parameters=n_params or None, memory_usage_mb=None, max_tokens=None,
        embed_dim=getattr(comparator.card, "embed_dim", None), license=None, open_weights=True,
        public_training_code=None, public_training_data=None, framework=["PyTorch"],
        similarity_fn_name=ScoringFunction.COSINE, use_instructions=False, training_datasets=None,
        modalities=modalities, model_type=["dense"])


class ClipzooMTEBModel(AbsEncoder):
    """A clipzoo :class:`~clipzoo.comparator.Comparator` behind mteb's encoder interface."""

    def __init__(self, comparator, *, name: str | None = None, batch_size: int = 64):
        self.model = comparator
        self.batch_size = batch_size
        self.mteb_model_meta = model_meta(comparator, name)

    def _text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(list(texts), batch_size=self.batch_size, truncate=True).float().cpu()

    def _image(self, images: Sequence[Any]) -> torch.Tensor:
        return self.model.encode_image(list(images), batch_size=self.batch_size).float().cpu()

    def encode_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """One mteb batch -> (B, D) normalised features (text, image, or the normalised sum of both)."""
        texts, images = batch.get("text"), batch.get("image")
        if texts is not None and images is not None:
            return F.normalize(self._text(texts) + self._image(images), dim=-1)
        if texts is not None:
            return self._text(texts)
        if images is not None:
            return self._image(images)
        raise EvalInputError(f"an mteb batch with neither text nor image (keys: {', '.join(batch)}); "
                             "clipzoo's MTEB models encode text and images")

    def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "",
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        """mteb's ``encode``: a DataLoader of batches -> (N, D) float32 NumPy features."""
        out = [self.encode_batch(batch) for batch in inputs]
        if not out:
            return np.zeros((0, self.mteb_model_meta.embed_dim or 0), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32)


def mteb_model(comparator, name: str | None = None, batch_size: int = 64) -> ClipzooMTEBModel:
    """Wrap a loaded clipzoo model for ``mteb.evaluate``."""
    return ClipzooMTEBModel(comparator, name=name, batch_size=batch_size)


def _load_class(spec: str) -> type:
    """``path/to/tasks.py:ClassName`` or ``package.module:ClassName`` -> the class."""
    location, _, attr = spec.rpartition(":")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise EvalInputError(f"task file {path} does not exist; --tasks takes mteb task names or FILE.py:CLASS")
        module_spec = importlib.util.spec_from_file_location(f"clipzoo_mteb_tasks_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as err:
            raise EvalInputError(f"cannot import {location!r} for task {spec!r} ({err})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, AbsTask)):
        raise EvalInputError(f"{spec!r} names no mteb task class (a subclass of mteb's AbsTask) in {location}")
    return cls


def resolve_tasks(specs: Sequence[str]) -> list[AbsTask]:
    """mteb task names (``STS12``, ``CIFAR10ZeroShot``, …) and custom tasks (``FILE.py:CLASS``,
    ``module:CLASS``) -> task objects."""
    specs = [s.strip() for s in specs if s.strip()]
    if not specs:
        raise EvalInputError("no tasks given: --tasks takes comma-separated mteb task names or FILE.py:CLASS")
    tasks: list[AbsTask] = []
    for spec in specs:
        if ":" in spec:
            tasks.append(_load_class(spec)())
            continue
        try:
            tasks.extend(mteb.get_tasks(tasks=[spec]))
        except (KeyError, ValueError) as err:
            raise EvalInputError(f"unknown mteb task {spec!r} ({str(err).splitlines()[0][:200]}); see "
                                 "`mteb.get_tasks()` for the names, or pass a custom task as FILE.py:CLASS") from None
    return tasks


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def summarize(result) -> dict[str, Any]:
    """mteb's ``ModelResult`` -> ``{"model", "revision", "tasks": {task: {split: {subset: {"main_score", …}}}}}``."""
    tasks: dict[str, Any] = {}
    for task_result in result.task_results:
        per_split = tasks.setdefault(task_result.task_name, {})
        for split, rows in task_result.scores.items():
            per_split[split] = {row["hf_subset"]: {k: _finite(v) for k, v in row.items()
                                                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
                                for row in rows}
    return {"model": result.model_name, "revision": result.model_revision, "tasks": tasks}


def run_mteb(comparator, tasks: Sequence[str] | Sequence[AbsTask], *, output_dir: str | Path | None = None,
             name: str | None = None, batch_size: int = 64, show_progress: bool = False) -> dict[str, Any]:
    """Run mteb's own evaluation on ``comparator``; results are cached under ``output_dir`` in mteb's layout
    (nothing is cached when it is None). Returns :func:`summarize`'s dict."""
    names = [t for t in tasks if isinstance(t, str)]
    objects = [t for t in tasks if isinstance(t, AbsTask)] + (resolve_tasks(names) if names else [])
    if not objects:
        raise EvalInputError("no tasks given: --tasks takes comma-separated mteb task names or FILE.py:CLASS")
    cache = mteb.ResultCache(cache_path=str(output_dir)) if output_dir is not None else None
    result = mteb.evaluate(mteb_model(comparator, name, batch_size), objects, cache=cache,
                           overwrite_strategy="always", show_progress_bar=show_progress,
                           encode_kwargs={"batch_size": batch_size})
    return summarize(result)
