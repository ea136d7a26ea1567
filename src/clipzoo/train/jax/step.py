"""One optimiser step, jit-compiled over the mesh: features -> loss -> gradients -> AdamW -> clip the
temperature to ``[0, ln 100]`` (as open_clip_jax does). Also the validation loss.
(``grad_checkpoint`` is the model's: its blocks are rematerialised in the backward pass, as in open_clip_jax.)

A model with BatchNorm (the ResNet tower) carries ``state["batch_stats"]``: the training step normalises by the
batch's moments — the global batch, as the step is written for it, so 1 and N devices agree — and returns the
updated running averages; the validation loss uses the running averages.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ...models.jax_clip import l2_normalize
from .losses import LOSSES
from .state import TEMP_MAX

__all__ = ["make_loss_fn", "make_train_step", "make_eval_step"]


def make_loss_fn(module, loss: str):
    objective = LOSSES[loss]

    def loss_fn(params, images, tokens, batch_stats=None, train: bool = False):
        """(loss, (logit scale, updated batch_stats or None)); ``batch_stats``: a BatchNorm model's."""
        variables = params["model"]
        stats = None
        if batch_stats is None:
            img = module.apply(variables, images, method="encode_image")
        elif train:
            img, updated = module.apply({**variables, "batch_stats": batch_stats}, images, True,
                                        method="encode_image", mutable=["batch_stats"])
            stats = updated["batch_stats"]
        else:
            img = module.apply({**variables, "batch_stats": batch_stats}, images, method="encode_image")
        img = l2_normalize(img.astype(jnp.float32))
        txt = l2_normalize(module.apply(variables, tokens, method="encode_text").astype(jnp.float32))
        scale = jnp.exp(variables["params"]["temp"])
        value = objective(img, txt, scale, params.get("logit_bias"))
        return value, (scale, stats)

    return loss_fn


def make_train_step(module, tx, schedule, loss: str, shardings):
    """``step(state, images, tokens) -> (state, {"loss", "logit_scale", "lr"})``, jit-compiled; the state stays
    replicated, the batch sharded on the data axis."""
    loss_fn = make_loss_fn(module, loss)

    def step(state, images, tokens):
        (value, (scale, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], images, tokens, state.get("batch_stats"), True)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        model = params["model"]["params"]
        params = {**params, "model": {"params": {**model, "temp": jnp.clip(model["temp"], 0.0, TEMP_MAX)}}}
        new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        if stats is not None:
            new["batch_stats"] = stats
        return new, {"loss": value, "logit_scale": scale, "lr": schedule(state["step"])}

    return jax.jit(step, donate_argnums=0,
                   in_shardings=(shardings.replicated, shardings.batch, shardings.batch),
                   out_shardings=(shardings.replicated, shardings.replicated))


def make_eval_step(module, loss: str, shardings):
    """``eval_step(params, batch_stats or None, images, tokens) -> loss`` (BatchNorm: running averages)."""
    loss_fn = make_loss_fn(module, loss)
    return jax.jit(lambda params, stats, images, tokens: loss_fn(params, images, tokens, stats)[0],
                   in_shardings=(shardings.replicated, shardings.replicated, shardings.batch, shardings.batch),
                   out_shardings=shardings.replicated)
