"""The evaluation phase: the model in training behind the Comparator API, evaluated zero-shot on ``eval_data``
(every ``eval_every`` steps and at the end, rank 0 only)."""
from __future__ import annotations

from typing import Any

from ...backends.composite import comparator_for
from ...backends.open_clip import OpenClipComparator
from ...cards import ModelCard
from ...datasets.readers import open_dataset
from ...eval.runner import Evaluator
from ..config import TrainConfig
from ..model import TrainModel

__all__ = ["comparator_of", "evaluate"]


def comparator_of(model: TrainModel, name: str = "training"):
    """A Comparator over the module in training (its current weights, not a copy)."""
    if model.kind == "composite":
        card = ModelCard(architecture="clip", publisher="local", id=name, backend="composite")
        return comparator_for(card, model.module, model.tokenizer, model.preprocess_cfg)
    card = ModelCard(architecture="clip", publisher="local", id=name, backend="open_clip")
    return OpenClipComparator(card, model.module, transform=model.eval_transform, tokenizer=model.tokenizer,
                              precision="fp32", model_name=None, model_config=model.model_cfg,
                              preprocess_config=model.preprocess_cfg)


def evaluate(model: TrainModel, cfg: TrainConfig, step: int) -> dict[str, Any]:
    """Zero-shot metrics of the model at ``step`` on ``cfg.eval_data`` (``{"step": step}`` alone when the data set
    has no class names); leaves the module in eval mode."""
    comparator = comparator_of(model, f"step {step}")
    model.module.eval()
    data = open_dataset(cfg.eval_data, classnames=cfg.eval_classnames, templates=cfg.eval_templates)
    ev = Evaluator(comparator, workers=0, batch_size=256)
    metrics = dict(ev.zeroshot(data).metrics) if data.classnames else {}
    return {"step": step, **metrics}
