"""The MindSpore training engine (``clipzoo train --engine mindspore``): a correctness check of the MindSpore port.

It trains clipzoo's MindSpore CLIP (:mod:`clipzoo.models.mindspore_clip`, MindSpore-CLIP's parameter names) with
InfoNCE as the torch trainer computes it (MindSpore-CLIP's ``loss.py`` ClipLoss, one process), MindSpore's AdamW
with the torch trainer's parameter groups and hyperparameters, its warm-up + cosine schedule and the learnable,
clamped logit scale — from the torch trainer's initial weights (the same seed builds the same open_clip model,
renamed into MindSpore) on the torch trainer's batches (the same readers, seed and order). The same config then
gives the same per-step losses in both engines (``tests/test_mindspore_train.py``: ≤ 1e-4 over 10 steps).

Modules: :mod:`.config` (the options this engine takes), :mod:`.loss` (``ClipLoss``), :mod:`.step` (forward,
gradients, AdamW, schedule, clamp) and :mod:`.loop` (:func:`train_mindspore`).
"""
from __future__ import annotations

from ...extras import require

require("mindspore", "the MindSpore training engine (clipzoo train --engine mindspore)")

from .config import check_mindspore_config, config_from_flags  # noqa: E402
from .loop import train_mindspore  # noqa: E402

__all__ = ["train_mindspore", "check_mindspore_config", "config_from_flags"]
