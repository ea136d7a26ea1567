"""Evaluation of the parameters in training through clipzoo's Evaluator: they are wrapped as the ``jax`` backend
wraps a parameter file (a :class:`~clipzoo.backends.jax.JaxComparator`, jit-compiled encoders, no copy into
torch), so zero-shot metrics are the same code path as ``clipzoo eval`` on the saved ``.pkl``."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import open_clip

from ...backends.jax import JAX_DTYPES, JaxComparator, JaxTowers
from ...cards import ModelCard
from ...datasets.readers import open_dataset
from ...eval.runner import Evaluator
from ...models.jax_config import get_config
from ...tokenizers import OpenAITokenizer
from .data import OPENAI_MEAN, OPENAI_STD

__all__ = ["comparator_of_params", "evaluate"]


def comparator_of_params(variables: dict, model, image_size: int, context_len: int, name: str = "training",
                         precision: str = "fp32") -> JaxComparator:
    """A Comparator over ``{'params': …}`` (open_clip_jax's tree) of JAX config ``model``."""
    cfg = get_config(model)
    host = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
    towers = JaxTowers(cfg, host, dtype=JAX_DTYPES[precision], jax_device=jax.local_devices()[0])
    temp = host["params"].get("temp")
    scale = float(np.exp(np.float64(temp))) if temp is not None else 100.0
    card = ModelCard(architecture="clip", publisher="local", id=name, backend="jax", embed_dim=cfg.proj_dim,
                     image_size=image_size, context_length=context_len,
                     config={"model": model if isinstance(model, str) else cfg.as_dict()})
    transform = open_clip.image_transform(image_size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
    return JaxComparator(card, towers, transform=transform, tokenizer=OpenAITokenizer(context_length=context_len),
                         image_size=image_size, context_length=context_len, logit_scale=scale, device="cpu")


def evaluate(variables: dict, cfg, step: int) -> dict[str, Any]:
    """Zero-shot metrics at ``step`` on ``cfg.eval_data`` (``{"step": step}`` alone when it has no class names)."""
    comparator = comparator_of_params(variables, cfg.model, cfg.image_size, cfg.context_len, f"step {step}")
    data = open_dataset(cfg.eval_data)
    metrics = dict(Evaluator(comparator, workers=0, batch_size=256).zeroshot(data).metrics) if data.classnames else {}
    return {"step": step, **metrics}
