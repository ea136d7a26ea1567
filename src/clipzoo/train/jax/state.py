"""The model, its variables and the optimiser: AdamW (no decay on biases and norms) with open_clip_jax's
warm-up + cosine (or constant) schedule, via optax.

The training state is a plain dict pytree — ``{"step", "params", "opt_state"}``, plus ``"batch_stats"`` for a
model with BatchNorm (the ResNet tower's running averages: not trained, not decayed) — that orbax saves as it is.
``params`` is ``{"model": {"params": …}}`` (open_clip_jax's tree, its ``temp`` included) plus, for SigLIP,
``"logit_bias"``; ``params["model"]`` is what a ``.pkl`` parameter file holds.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from ...models.jax_clip import create_model, init_variables
from .torch_init import torch_init_variables

__all__ = ["temp_value", "build_model", "build_schedule", "torch_schedule", "build_optimiser", "init_state",
           "model_variables", "TEMP_MAX", "SIGLIP_INIT"]

TEMP_MAX = math.log(100.0)  # open_clip_jax clips the log-temperature to [0, ln 100]
SIGLIP_INIT = (math.log(10.0), -10.0)  # the SigLIP paper's log-scale and bias


def temp_value(cfg) -> float:
    """The initial log-temperature: ``temp_init`` (0 when None), SigLIP's log 10 for the SigLIP loss."""
    if cfg.loss == "siglip":
        return SIGLIP_INIT[0]
    return cfg.temp_init if cfg.temp_init is not None else 0.0


def build_model(cfg):
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
    return create_model(cfg.model, temp_init=temp_value(cfg), dtype=dtype, grad_checkpoint=cfg.grad_checkpoint)


def build_schedule(cfg, total_steps: int):
    """The lr at each optimiser step. ``warmup_rule`` ``"open_clip_jax"``: optax's warm-up from ``warmup_init`` at
    step 0 to the peak at step ``n_warmup_steps``; ``"torch"`` (the torch trainer's and open_clip's ``cosine_lr``):
    ``peak × (step + 1) / n_warmup_steps``, the peak at step ``n_warmup_steps - 1``. Then cosine to 0 at
    ``total_steps`` (or constant), the same in both. A run no longer than its warm-up trains with the lr still
    rising, as the torch trainer and open_clip do (optax's cosine needs steps after the warm-up: it was refused)."""
    if cfg.warmup_rule == "torch":
        return torch_schedule(cfg.learning_rate, cfg.n_warmup_steps, total_steps, cfg.learning_rate_scheduler)
    if cfg.learning_rate_scheduler == "cosine" and total_steps > cfg.n_warmup_steps:
        return optax.warmup_cosine_decay_schedule(init_value=cfg.warmup_init, peak_value=cfg.learning_rate,
                                                  warmup_steps=cfg.n_warmup_steps, decay_steps=total_steps)
    warmup = optax.linear_schedule(cfg.warmup_init, cfg.learning_rate, cfg.n_warmup_steps)
    return optax.join_schedules([warmup, optax.constant_schedule(cfg.learning_rate)], [cfg.n_warmup_steps])


def torch_schedule(peak: float, warmup: int, total: int, kind: str = "cosine"):
    """:func:`clipzoo.train.phases.optimiser.lr_lambda` × ``peak`` as a jit-able optax schedule."""
    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        if kind == "const":
            after = jnp.full_like(s, peak)
        else:
            progress = jnp.clip((s - warmup) / max(1, total - warmup), 0.0, 1.0)
            after = 0.5 * peak * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(s < warmup, peak * (s + 1.0) / max(1, warmup), after) if warmup else after
    return schedule


def decay_mask(params, rule: str = "ndim"):
    """Which parameters AdamW decays. ``"ndim"`` (open_clip_jax's rule): every tensor with 2+ dimensions —
    not biases, norms, the temperature or the SigLIP bias, but Flax's (heads, head_dim) attention biases
    and the embeddings too. ``"kernels"`` (the torch trainer's AdamW groups,
    ``train.phases.optimiser.param_groups``): only Dense / Conv kernels — no biases, norms or embeddings."""
    if rule == "kernels":
        return jax.tree_util.tree_map_with_path(lambda path, p: str(getattr(path[-1], "key", "")) == "kernel",
                                                params)
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def build_optimiser(cfg, total_steps: int):
    schedule = build_schedule(cfg, total_steps)
    tx = optax.adamw(learning_rate=schedule, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay,
                     mask=lambda params: decay_mask(params, cfg.decay))
    return tx, schedule


def init_state(cfg, module, tx) -> dict:
    """Fresh variables (seeded by ``cfg.seed``) and optimiser state, on the host. The variables come from the
    fp32 twin of ``module`` (same tree): a bf16 run computes in bf16 on fp32 parameters, initialised as fp32's;
    or, with ``init: torch``, from the torch trainer's initial model (:mod:`.torch_init`)."""
    if cfg.init == "torch":  # the torch trainer's initial weights for this seed
        variables = torch_init_variables(cfg, temp_value(cfg))
    else:
        variables = init_variables(module.clone(dtype=None), cfg.image_size, cfg.context_len, seed=cfg.seed)
    params = {"model": {"params": dict(variables["params"])}}
    if cfg.loss == "siglip":
        params["logit_bias"] = jnp.asarray(SIGLIP_INIT[1], jnp.float32)
    state = {"step": jnp.asarray(0, jnp.int32), "params": params, "opt_state": tx.init(params)}
    if "batch_stats" in variables:
        state["batch_stats"] = dict(variables["batch_stats"])
    return state


def model_variables(state: dict) -> dict:
    """What a ``.pkl`` holds: ``{'params': …}`` (open_clip_jax's tree) [+ ``'batch_stats'``] of a state."""
    variables = dict(state["params"]["model"])
    if "batch_stats" in state:
        variables["batch_stats"] = state["batch_stats"]
    return variables
