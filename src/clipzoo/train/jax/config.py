"""The JAX engine's configuration: open_clip_jax's ``main.py`` options, under the same names, plus clipzoo's own.

A config file (TOML / YAML / JSON, a ``[train]`` table or the top level) may use either spelling: open_clip_jax's
(``train_path``, ``global_batch_size``, ``learning_rate``, ``n_epochs``, …) or the torch trainer's
(``data``, ``batch_size``, ``lr``, ``epochs``, …; mapped by :data:`ALIASES`). An unknown key is an error naming
the nearest valid one. Precedence: a recipe < the config file < flags.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import ClipzooError
from ...models.jax_config import get_config
from ..config import ConfigError, read_config_file
from ..config_types import typed_value

__all__ = ["JaxTrainConfig", "ALIASES", "JAX_RECIPES", "load_jax_config", "jax_recipe", "jax_from_mapping"]

# the torch trainer's names (and a few open_clip spellings) -> this config's
ALIASES = {"data": "train_path", "train_data": "train_path", "batch_size": "global_batch_size",
           "lr": "learning_rate", "epochs": "n_epochs", "warmup": "n_warmup_steps", "warmup_steps": "n_warmup_steps",
           "img_key": "image_key", "caption_key": "text_key", "model": "model_name", "schedule":
           "learning_rate_scheduler", "train_num_samples": "train_n_samples", "context_length": "context_len",
           "grad_checkpointing": "grad_checkpoint", "resume": "resume_from_checkpoint", "log_every": "log_freq",
           "val_data": "valid_path", "precision": "dtype"}
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
LOSSES = ("infonce", "siglip")
WARMUP_RULES = ("open_clip_jax", "torch")
INITS = ("flax", "torch")  # flax: open_clip_jax's initialisers; torch: open_clip's draw, converted

# The tiny-shapes recipe for this engine: the torch recipe's model (clipzoo.train.recipes.TINY_SHAPES_MODEL) —
# a width-16 ModifiedResNet with BatchNorm (clipzoo's JAX ResNet tower, clipzoo.models.jax_resnet) and a text
# tower 128 wide, 3 blocks — with the same data, learning rate, schedule, initial weights (``init: torch``: the
# torch trainer's draw for the seed) and evaluation. (Tiny ViTs in
# open_clip_jax's layout reached 12-21 % here in 150-800 steps: benchmarks/results/jax_train_recipe_vit_*.json.)
TINY_SHAPES_JAX_MODEL: dict[str, Any] = {
    "image_model": {"layers": [1, 1, 1, 1], "width": 16},
    "text_model": {"depth": 3, "embed_dim": 128, "n_heads": 2},
    "proj_dim": 64,
}
JAX_RECIPES: dict[str, dict[str, Any]] = {
    "tiny-shapes": {
        "model_config": TINY_SHAPES_JAX_MODEL, "image_size": 64, "context_len": 24,
        "train_path": "shapes-classes:20000", "global_batch_size": 128, "learning_rate": 4e-3,
        "weight_decay": 0.1, "decay": "kernels", "warmup_rule": "torch", "init": "torch", "n_warmup_steps": 50,
        "temp_init": math.log(1 / 0.07), "steps": 800,  # the torch trainer's logit_scale_init, 1 / 0.07
        "eval_every": 200,
        "eval_data": "shapes-heldout:770", "log_freq": 25, "output": "runs/tiny-shapes-jax",
    },
}


@dataclass
class JaxTrainConfig:
    # data (open_clip_jax's names)
    train_path: "str | None" = None  # CSV, TFRecord file(s) / folder, any reader spec, or shapes-classes:N
    valid_path: "str | None" = None
    train_n_samples: "int | None" = None
    valid_n_samples: "int | None" = None
    image_key: "str | None" = None  # None: the reader's defaults (jpg / png / image …)
    text_key: "str | None" = None  # None: caption / txt / text …
    image_size: int = 224
    context_len: int = 77
    global_batch_size: int = 64
    shuffle_buffer_size: "int | None" = None  # None: 16 × global_batch_size (open_clip_jax's rule)
    # model
    model_name: str = "vit-base-patch32"
    model_config: "dict[str, Any] | None" = None  # open_clip_jax's JSON form; overrides model_name
    temp_init: "float | None" = 2.6593
    init: str = "flax"  # flax: open_clip_jax's initialisers, seeded by seed; torch: open_clip's torch initialisation
    # drawn as clipzoo's torch trainer draws it with the same seed (its exact initial weights), converted
    grad_checkpoint: bool = False
    dtype: str = "float32"  # float32 | bfloat16
    # learning rate and optimiser
    learning_rate: float = 5e-4
    learning_rate_scheduler: str = "cosine"  # cosine | const
    n_warmup_steps: int = 10000
    warmup_init: float = 1e-5
    warmup_rule: str = "open_clip_jax"  # open_clip_jax: warmup_init -> peak at step n_warmup_steps; torch: the
    # torch trainer's (open_clip's cosine_lr): peak × (step + 1) / n_warmup_steps
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.2
    decay: str = "ndim"  # ndim: open_clip_jax's (every 2+-dim tensor); kernels: the torch trainer's AdamW groups
    # training
    n_epochs: int = 32
    steps: "int | None" = None  # clipzoo: optimiser steps (overrides n_epochs)
    log_freq: int = 100
    loss: str = "infonce"  # clipzoo: infonce | siglip
    seed: int = 0
    workers: int = 4  # image decoding threads per host
    # checkpoints (orbax) and outputs
    checkpoint_dir: "str | None" = None  # default OUTPUT/checkpoints
    checkpoint_freq: int = 5  # epochs
    save_every: "int | None" = None  # clipzoo: also every N steps
    resume_from_checkpoint: "str | None" = None  # a checkpoint folder, a step folder inside it, or "latest"
    output: str = "runs/clipzoo-jax"  # clipzoo: OUTPUT/model/params.pkl (open_clip_jax's format), metrics
    # evaluation through clipzoo's Evaluator
    eval_data: "str | None" = None
    eval_every: "int | None" = None
    # devices and processes
    devices: "int | None" = None  # devices of this host on the data axis (default: all)
    progress: bool = True

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any) -> "JaxTrainConfig":
        return jax_from_mapping({**self.as_dict(), **changes})

    @property
    def model(self) -> "str | dict[str, Any]":
        return self.model_config if self.model_config is not None else self.model_name

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates on ``eval_data`` (``eval_every = 0`` turns the evaluation off)."""
        return bool(self.eval_data) and self.eval_every != 0

    @property
    def checkpoints(self) -> str:
        return self.checkpoint_dir or os.path.join(self.output, "checkpoints")


FIELDS = {f.name for f in dataclasses.fields(JaxTrainConfig)}


def check_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Keys spelled with ``_``, the torch trainer's names mapped; an unknown key names the nearest valid one."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        k = ALIASES.get(k, k)
        if k not in FIELDS:
            near = difflib.get_close_matches(k, sorted(FIELDS | set(ALIASES)), n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(sorted(FIELDS))}"
            raise ConfigError(f"{source}: unknown key {key!r} for the JAX engine{hint}")
        if k == "train_path" and isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise ConfigError(f"{source}: the JAX engine trains on one data source; got {len(value)}")
            value = value[0]
        if k == "dtype" and value in PRECISIONS:
            value = PRECISIONS[value]
        out[k] = value
    return out


def jax_from_mapping(values: Mapping[str, Any], source: str = "config") -> JaxTrainConfig:
    fields = {f.name: f.type for f in dataclasses.fields(JaxTrainConfig)}
    cfg = JaxTrainConfig(**{k: typed_value(k, v, fields[k], source)  # YAML's learning_rate: 1e-3 is a string
                            for k, v in check_keys(values, source).items()})
    validate(cfg, source)
    return cfg


def validate(cfg: JaxTrainConfig, source: str) -> None:
    checks = [
        (cfg.global_batch_size >= 1, f"global_batch_size must be at least 1, got {cfg.global_batch_size}"),
        (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0,
         f"learning_rate must be a positive finite number, got {cfg.learning_rate}"),
        (cfg.learning_rate_scheduler in ("cosine", "const"),
         f"learning_rate_scheduler must be cosine or const, got {cfg.learning_rate_scheduler!r}"),
        (cfg.decay in ("ndim", "kernels"), f"decay must be ndim or kernels, got {cfg.decay!r}"),
        (cfg.init in INITS, f"init must be {' or '.join(INITS)}, got {cfg.init!r}"),
        (cfg.warmup_rule in WARMUP_RULES,
         f"warmup_rule must be {' or '.join(WARMUP_RULES)}, got {cfg.warmup_rule!r}"),
        (cfg.dtype in ("float32", "bfloat16"), f"dtype must be float32 or bfloat16 (fp32 / bf16), got {cfg.dtype!r}"
         + ("; float16 needs loss scaling, which the JAX engine leaves out: use bfloat16"
            if cfg.dtype == "float16" else "")),
        (cfg.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)} for the JAX engine, got {cfg.loss!r}"),
        (cfg.n_epochs >= 1, f"n_epochs must be at least 1, got {cfg.n_epochs}"),
        (cfg.steps is None or cfg.steps >= 1, f"steps must be at least 1, got {cfg.steps}"),
        (cfg.n_warmup_steps >= 0, f"n_warmup_steps must be at least 0, got {cfg.n_warmup_steps}"),
        (cfg.checkpoint_freq >= 1, f"checkpoint_freq must be at least 1, got {cfg.checkpoint_freq}"),
        (cfg.temp_init is None or math.isfinite(cfg.temp_init), "temp_init must be a finite number"),
        (cfg.train_path is not None or cfg.valid_path is not None,
         "at least one of --train-path or --valid-path needs to be provided"),
    ]
    problems = [message for ok, message in checks if not ok] + range_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: {problems[0]}")


def _at_least(name: str, value: "int | None", low: int) -> tuple[bool, str]:
    bound = "0 or more" if low == 0 else f"at least {low}"  # the torch trainer's wording
    return value is None or value >= low, f"{name} must be {bound}, got {value}"


def range_problems(cfg: JaxTrainConfig) -> list[str]:
    """What is out of range, said before anything compiles (``log_freq: 0`` divided by zero after compiling; a
    ``beta1`` of 2 or an image size the patches do not tile trained or failed later, far from the cause)."""
    checks = [
        _at_least("log_freq", cfg.log_freq, 1), _at_least("save_every", cfg.save_every, 1),
        _at_least("eval_every", cfg.eval_every, 0), _at_least("workers", cfg.workers, 0),
        _at_least("image_size", cfg.image_size, 1), _at_least("context_len", cfg.context_len, 1),
        _at_least("train_n_samples", cfg.train_n_samples, 1), _at_least("valid_n_samples", cfg.valid_n_samples, 1),
        _at_least("devices", cfg.devices, 1), _at_least("shuffle_buffer_size", cfg.shuffle_buffer_size, 1),
        (0 <= cfg.beta1 < 1, f"beta1 must be in [0, 1), got {cfg.beta1}"),
        (0 <= cfg.beta2 < 1, f"beta2 must be in [0, 1), got {cfg.beta2}"),
        (math.isfinite(cfg.eps) and cfg.eps > 0, f"eps must be a positive number, got {cfg.eps}"),
        (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0,
         f"weight_decay must be 0 or more, got {cfg.weight_decay}"),
        (math.isfinite(cfg.warmup_init) and cfg.warmup_init >= 0,
         f"warmup_init must be 0 or more, got {cfg.warmup_init}"),
    ]
    return [message for ok, message in checks if not ok] + _patch_problems(cfg)


def _patch_problems(cfg: JaxTrainConfig) -> list[str]:
    """A ViT's image size must be a whole number of patches (an unknown model is reported where it is built)."""
    try:
        image = get_config(cfg.model).image
    except ClipzooError:
        return []
    patch = getattr(image, "patch_size", 0)
    if patch and cfg.image_size % patch:
        return [f"image_size {cfg.image_size} is not a multiple of the model's patch size {patch}"]
    return []


def jax_recipe(name: str) -> JaxTrainConfig:
    if name not in JAX_RECIPES:
        near = difflib.get_close_matches(name, list(JAX_RECIPES), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"unknown recipe {name!r} for the JAX engine{hint} (recipes: {', '.join(JAX_RECIPES)})")
    return jax_from_mapping(JAX_RECIPES[name], f"recipe {name}")


def load_jax_config(path: "str | os.PathLike | None" = None, overrides: "Mapping[str, Any] | None" = None,
                    base: "JaxTrainConfig | None" = None) -> JaxTrainConfig:
    """base (e.g. a recipe) < config file < overrides (flags that were given)."""
    values: dict[str, Any] = base.as_dict() if base is not None else {}
    if path is not None:
        values.update(check_keys(read_config_file(path), str(path)))
    if overrides:
        given = check_keys({k: v for k, v in overrides.items() if v is not None}, "flags")
        if given.get("model_name") is not None:
            values["model_config"] = None
        values.update(given)
    return jax_from_mapping(values, str(path) if path else "config")
