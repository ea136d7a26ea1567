"""Issue 18 §5, the tiny-shapes recipe under ``--engine jax`` reaching the torch recipe: the JAX recipe starts from
the torch trainer's own initial weights for the seed (``init: torch``) and its first recipe steps are the torch
trainer's (``clipzoo.train.engine.train``), loss for loss.

The cause of the JAX recipe's gap was the warm-up: open_clip_jax's (optax) starts at ``warmup_init`` (1e-5) and
reaches the peak at step ``n_warmup_steps``; the torch trainer's (open_clip's ``cosine_lr``) starts at
``lr × 1 / warmup`` (8e-5) and peaks one step earlier — the second loss was 5.44 against torch's 5.24. The recipe
now takes ``warmup_rule = "torch"``; the engine's default stays open_clip_jax's.
"""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
import open_clip  # noqa: E402

from clipzoo.convert.jax import jax_to_open_clip, open_clip_config  # noqa: E402
from clipzoo.train import engine  # noqa: E402
from clipzoo.train.config import ConfigError  # noqa: E402
from clipzoo.train.jax.config import TINY_SHAPES_JAX_MODEL, jax_from_mapping, jax_recipe  # noqa: E402
from clipzoo.train.jax.loop import JaxTrainer  # noqa: E402
from clipzoo.train.jax.state import build_schedule, model_variables, temp_value  # noqa: E402
from clipzoo.train.jax.torch_init import torch_init_variables  # noqa: E402
from clipzoo.train.model import build_model  # noqa: E402
from clipzoo.train.phases.optimiser import lr_lambda  # noqa: E402
from clipzoo.train.recipes import recipe_config  # noqa: E402

STEPS = 3
BATCH = 32  # the recipe's 128 makes each step 4x dearer; everything else is the recipe's (model, lr, warm-up, decay)
DATA = f"shapes-classes:{STEPS * BATCH}"


class _Stop(Exception):
    pass


def _torch_trainer_steps(start: dict, tmp_path) -> tuple[list[float], dict]:
    """The torch trainer on the torch recipe (same data, same seed, its own initial draw), after checking that the
    JAX start is that draw, tensor for tensor."""
    cfg = recipe_config("tiny-shapes").replace(data=[DATA], batch_size=BATCH, output=str(tmp_path / "torch"),
                                               progress=False, tensorboard=False, eval_every=None, eval_data=None,
                                               device="cpu", workers=1)  # workers=1: no fork once JAX is loaded
    model = build_model(cfg)
    initial = model.module.state_dict()
    converted = jax_to_open_clip(start, TINY_SHAPES_JAX_MODEL)
    assert set(converted) == set(initial)
    for key, value in initial.items():
        assert torch.equal(converted[key], value.to(converted[key].dtype)), key
    losses: list[float] = []

    def on_step(step, record):
        losses.append(float(record["loss"]))
        if step >= STEPS:
            raise _Stop

    with pytest.raises(_Stop):
        engine.train(cfg, model=model, on_step=on_step)
    return losses, model.module.state_dict()


def test_jax_tiny_shapes_recipe_steps_equal_torch_trainer_steps(tmp_path):
    cfg = jax_recipe("tiny-shapes").replace(train_path=DATA, global_batch_size=BATCH, output=str(tmp_path / "jax"),
                                            progress=False, eval_every=None, eval_data=None)
    assert cfg.warmup_rule == "torch" and cfg.init == "torch" and cfg.steps == 800
    ours: list[float] = []
    trainer = JaxTrainer(cfg, on_step=lambda step, record: ours.append(record["loss"]))
    start = jax.tree_util.tree_map(np.asarray, jax.device_get(model_variables(trainer.state)))
    for images, tokens in trainer.train_data.batches(0):
        trainer.one_step(images, tokens)
    assert len(ours) == STEPS
    ref, torch_sd = _torch_trainer_steps(start, tmp_path)
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    print("jax", ours, "torch", ref)
    assert ref[-1] < ref[0] - 0.05  # the steps move the loss: the lr reached the model
    # the running averages follow torch's too: momentum 0.1, the running variance from the unbiased batch variance
    # (Flax's BatchNorm averages the biased one: 0.2 % lower on layer4's 2 x 2 grid, n = 512, after one step)
    ours_sd = jax_to_open_clip(model_variables(jax.device_get(trainer.state)), TINY_SHAPES_JAX_MODEL)
    for key in ("visual.bn1.running_var", "visual.layer4.0.bn2.running_var", "visual.layer4.0.bn1.running_mean"):
        np.testing.assert_allclose(ours_sd[key].numpy(), torch_sd[key].numpy(), rtol=2e-4, atol=1e-6, err_msg=key)


def test_jax_recipe_warmup_rule_torch_is_the_torch_trainers_schedule():
    cfg = jax_recipe("tiny-shapes")
    schedule = build_schedule(cfg, 800)
    ours = np.asarray(jax.vmap(schedule)(np.arange(800)))
    ref = np.asarray([4e-3 * lr_lambda(50, 800, "cosine")(s) for s in range(800)])
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-10)
    assert ours[0] == pytest.approx(8e-5) and ours[49] == pytest.approx(4e-3)
    const = build_schedule(cfg.replace(learning_rate_scheduler="const"), 800)
    assert [float(const(s)) for s in (0, 9, 49, 50, 799)] == pytest.approx([8e-5, 8e-4, 4e-3, 4e-3, 4e-3])
    # the engine's default stays open_clip_jax's: optax's warm-up from warmup_init, the peak at step n_warmup_steps
    default = build_schedule(cfg.replace(warmup_rule="open_clip_jax"), 800)
    assert float(default(0)) == pytest.approx(1e-5, rel=1e-4) and float(default(50)) == pytest.approx(4e-3, rel=1e-4)
    assert float(default(49)) < 4e-3
    with pytest.raises(ConfigError, match="warmup_rule must be open_clip_jax or torch, got 'optax'"):
        jax_from_mapping({**cfg.as_dict(), "warmup_rule": "optax"})


def test_jax_init_torch_is_the_torch_draw_for_the_seed_and_flax_is_not():
    vit = {"image_model": {"depth": 1, "embed_dim": 32, "n_heads": 2, "patch_size": 8},
           "text_model": {"depth": 1, "embed_dim": 32, "n_heads": 2}, "proj_dim": 16}
    base = jax_from_mapping({"train_path": "shapes-classes:64", "model_config": vit, "image_size": 32,
                             "context_len": 12, "seed": 7, "temp_init": 2.5, "init": "torch"})
    variables = torch_init_variables(base, temp_value(base))
    torch.manual_seed(7)
    ref = open_clip.CLIP(**open_clip_config(vit, 32, 12))
    converted = jax_to_open_clip(variables, vit)
    for key, value in ref.state_dict().items():
        if key != "logit_scale":
            assert torch.equal(converted[key], value), key
    assert float(variables["params"]["temp"]) == pytest.approx(2.5)
    other = torch_init_variables(base.replace(seed=8), 2.5)["params"]["text_model"]["Embed_0"]["embedding"]
    assert not np.array_equal(other, variables["params"]["text_model"]["Embed_0"]["embedding"])
    assert temp_value(base.replace(loss="siglip")) == pytest.approx(np.log(10.0))
    with pytest.raises(ConfigError, match="init must be flax or torch, got 'kaiming'"):
        jax_from_mapping({**base.as_dict(), "init": "kaiming"})
