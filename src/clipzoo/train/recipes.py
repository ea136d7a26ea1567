"""Named training recipes: a config plus the data it makes. ``clipzoo train --recipe tiny-shapes``.

``tiny-shapes`` trains a tiny CLIP from scratch on generated captioned shapes (held in memory) and
evaluates zero-shot on held-out single-object images over the shape × colour classes (77 classes).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ..datasets import write_shapes
from ..datasets.shapes_spec import POSITION_PHRASES
from .config import ConfigError, TrainConfig, from_mapping

__all__ = ["RECIPES", "recipe_config", "parse_shapes_spec", "class_captions", "write_heldout", "heldout_size",
           "SHAPES_KINDS"]

TINY_SHAPES_MODEL: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
}

RECIPES: dict[str, dict[str, Any]] = {
    "tiny-shapes": {
        "model_config": TINY_SHAPES_MODEL,
        "data": ["shapes-classes:20000"],
        "batch_size": 128,
        "lr": 4e-3,
        "weight_decay": 0.1,
        "warmup": 50,
        "steps": 800,
        "eval_every": 200,
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
    return from_mapping(RECIPES[name], f"recipe {name}")


SHAPES_KINDS = {"shapes": "the generator's captions (shape, colour, size, position; 25 % two objects)",
                "shapes-classes": "single objects; captions name colour and shape (sometimes size or position); "
                                  "each batch spread over the colour × shape classes"}


def parse_shapes_spec(spec: str) -> "tuple[int, int, str] | None":
    """``shapes:N[:SEED]`` or ``shapes-classes:N[:SEED]`` -> (N, seed, kind), else None."""
    kind = spec.split(":", 1)[0]
    if kind not in SHAPES_KINDS or ":" not in spec:
        return None
    parts = spec.split(":")[1:]
    try:
        n = int(parts[0])
        seed = int(parts[1]) if len(parts) > 1 else 0
    except (ValueError, IndexError):
        raise ConfigError(f"bad data spec {spec!r}: write {kind}:N or {kind}:N:SEED") from None
    if n < 1 or seed < 0:  # shapes:0 / shapes:-5 were a ValueError from deep in the rendering
        raise ConfigError(f"bad data spec {spec!r}: N must be at least 1 and SEED 0 or more; write {kind}:N or "
                          f"{kind}:N:SEED")
    return n, seed, kind


def class_captions(labels: dict[str, str]) -> list[str]:
    """Captions of a ``shapes-classes`` sample: the colour and shape, in the zero-shot templates' phrasing,
    and twice with the size or the position.

    Why: the generator's captions always name size and position too, and within a batch colour × size ×
    position (165 combinations) already tells most pairs apart, so the contrastive loss gives shape —
    the hard attribute — little gradient: at batch 128 a tiny model learnt colour but reached only 47 %
    on the 77 shape × colour classes after 1,200 steps. Captions that name mostly colour and shape make
    shape the thing to learn (88 % after 600 steps, same model and batch).
    """
    c, s, z, p = labels["color"], labels["shape"], labels["size"], labels["position"]
    return [f"a {c} {s}.", f"a photo of a {c} {s}.", f"{c} {s}", f"a {c} {s} {POSITION_PHRASES[p]}", f"a {z} {c} {s}"]


def heldout_size(spec: str) -> int:
    """N of ``shapes-heldout:N`` (at least 1: ``shapes-heldout:0`` failed at the first evaluation, after training)."""
    try:
        n = int(spec.split(":")[1])
    except (IndexError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"bad eval data spec {spec!r}: write shapes-heldout:N with N at least 1")
    return n


def write_heldout(spec: str, folder: "str | Path", image_size: int) -> str:
    """``shapes-heldout:N`` -> a folder of N single-object shapes labelled by shape × colour (seed 12345)."""
    n = heldout_size(spec)
    write_shapes(folder, n, seed=12345, image_size=image_size, two_object_prob=0.0, label_key="shape_color",
                 formats=("csv",), overwrite=True)
    return str(folder)
