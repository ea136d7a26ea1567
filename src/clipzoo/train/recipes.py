"""Named training recipes: a config plus the data it makes. ``clipzoo train --recipe tiny-shapes``.

``tiny-shapes`` trains a tiny CLIP from scratch on generated captioned shapes (held in memory) and
evaluates zero-shot on held-out single-object images over the shape × colour classes (77 classes).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig

__all__ = ["RECIPES", "recipe_config", "shapes_data", "write_heldout"]

TINY_SHAPES_MODEL: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
}

RECIPES: dict[str, dict[str, Any]] = {
    "tiny-shapes": {
        "model_config": TINY_SHAPES_MODEL,
        "data": ["shapes:12000"],
        "batch_size": 256,  # shape needs the hard negatives of a big batch: 128 learns colour, not shape
        "lr": 2e-3,
        "weight_decay": 0.1,
        "warmup": 50,
        "steps": 500,
        "eval_every": 100,
        "eval_data": "shapes-heldout:770",
        "log_every": 25,
        "output": "runs/tiny-shapes",
    },
}


def recipe_config(name: str) -> TrainConfig:
    if name not in RECIPES:
        near = difflib.get_close_matches(name, list(RECIPES), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown recipe {name!r}{hint} (recipes: {', '.join(RECIPES)})")
    from .config import from_mapping

    return from_mapping(RECIPES[name], f"recipe {name}")


def parse_shapes_spec(spec: str) -> "tuple[int, int] | None":
    """``shapes:N[:SEED]`` -> (N, seed), else None."""
    if not spec.startswith("shapes:"):
        return None
    parts = spec.split(":")[1:]
    try:
        n = int(parts[0])
        seed = int(parts[1]) if len(parts) > 1 else 0
    except (ValueError, IndexError):
        raise ConfigError(f"bad data spec {spec!r}: write shapes:N or shapes:N:SEED") from None
    return n, seed


def shapes_data(spec: str, model, seed: int = 0, workers: int = 2):
    """A :class:`MemoryData` of ``shapes:N[:SEED]`` generated captioned shapes for ``model``."""
    from .data import MemoryData, render_shapes

    n, data_seed = parse_shapes_spec(spec)
    size = model.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    images, captions, _ = render_shapes(n, seed=data_seed, image_size=size, workers=max(1, workers))
    return MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      seed=seed)


def write_heldout(spec: str, folder: "str | Path", image_size: int) -> str:
    """``shapes-heldout:N`` -> a folder of N single-object shapes labelled by shape × colour (seed 12345)."""
    from ..datasets import write_shapes

    try:
        n = int(spec.split(":")[1])
    except (IndexError, ValueError):
        raise ConfigError(f"bad eval data spec {spec!r}: write shapes-heldout:N") from None
    write_shapes(folder, n, seed=12345, image_size=image_size, two_object_prob=0.0, label_key="shape_color",
                 formats=("csv",), overwrite=True)
    return str(folder)
