"""Issue 18 §5 (tiny-shapes under ``--engine jax``, debugging): from the same start, the JAX engine's training step
and a torch AdamW step on the converted open_clip model give the same loss curve on the same batches.

So the JAX recipe's gap to the torch recipe is not in the trainer (data, loss, temperature, AdamW, warm-up +
cosine, decay mask, temperature clipping): the JAX step is the torch maths, step for step, on the same ViT."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from _jax_torch_steps import torch_adamw_losses  # noqa: E402
from clipzoo.convert.jax import jax_to_open_clip, open_clip_config  # noqa: E402
from clipzoo.train.jax.config import jax_from_mapping  # noqa: E402
from clipzoo.train.jax.data import open_batches  # noqa: E402
from clipzoo.train.jax.mesh import Shardings, make_mesh  # noqa: E402
from clipzoo.train.jax.state import build_model, build_optimiser, init_state  # noqa: E402
from clipzoo.train.jax.step import make_train_step  # noqa: E402

TINY = {"image_model": {"depth": 2, "embed_dim": 32, "n_heads": 2, "patch_size": 8},
        "text_model": {"depth": 1, "embed_dim": 32, "n_heads": 2}, "proj_dim": 16}
STEPS = 12


def _torch_losses(start: dict, cfg, schedule, batches) -> list[float]:
    model = open_clip.CLIP(**open_clip_config(TINY, cfg.image_size, cfg.context_len))
    model.load_state_dict(jax_to_open_clip(start, TINY))
    return torch_adamw_losses(model, cfg, schedule, batches)


def test_jax_train_steps_equal_torch_adamw_steps_from_the_same_start(tmp_path):
    cfg = jax_from_mapping({"train_path": "shapes-classes:96", "model_config": TINY, "image_size": 32,
                            "context_len": 16, "global_batch_size": 16, "learning_rate": 4e-3, "n_warmup_steps": 3,
                            "steps": STEPS, "weight_decay": 0.1, "output": str(tmp_path), "progress": False})
    reader = open_batches(cfg.train_path, cfg, train=True, n_samples=None, process_count=1, process_index=0)
    batches = [b for epoch in range(2) for b in reader.batches(epoch)][:STEPS]  # 6 batches of 16 an epoch
    assert len(batches) == STEPS

    module = build_model(cfg)
    tx, schedule = build_optimiser(cfg, STEPS)
    sh = Shardings(make_mesh(1))
    state = sh.replicate(init_state(cfg, module, tx))
    start = jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"]["model"]))
    step = make_train_step(module, tx, schedule, cfg.loss, sh)
    ours = []
    for images, tokens in batches:
        state, metrics = step(state, *sh.put_batch(images, tokens))
        ours.append(float(metrics["loss"]))

    ref = _torch_losses(start, cfg, schedule, batches)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert ours[-1] < ours[0] - 0.3  # the curve moves: the comparison is not of constants
