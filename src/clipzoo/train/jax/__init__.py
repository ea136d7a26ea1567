"""The JAX/Flax training engine (``clipzoo train --engine jax``): open_clip_jax's trainer on current JAX,
without TensorFlow — data parallel over a device mesh, multi-host through ``jax.distributed``.

Modules: :mod:`.config` (open_clip_jax's options and clipzoo's), :mod:`.data` (per-host batches; the epoch
planned over samples so hosts get equal batch counts), :mod:`.mesh` (processes, mesh, shardings), :mod:`.state`
(model, AdamW + schedule), :mod:`.losses`, :mod:`.step`, :mod:`.checkpoint` (orbax), :mod:`.evaluate`
(the Evaluator over the parameters in training) and :mod:`.loop` (:func:`train_jax`).
"""
from __future__ import annotations

from ...extras import require

for _package in ("jax", "flax", "optax", "orbax.checkpoint"):  # a missing one: one line naming clipzoo[jax]
    require(_package, "the JAX training engine (clipzoo train --engine jax)")

from .config import JAX_RECIPES, JaxTrainConfig, jax_recipe, load_jax_config  # noqa: E402
from .loop import train_jax  # noqa: E402

__all__ = ["JaxTrainConfig", "JAX_RECIPES", "jax_recipe", "load_jax_config", "train_jax"]
