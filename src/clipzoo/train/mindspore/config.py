"""What ``clipzoo train --engine mindspore`` takes: the torch trainer's :class:`~clipzoo.train.config.TrainConfig`,
restricted to what the port check covers — an OpenAI / open_clip CLIP that the MindSpore model implements, InfoNCE,
AdamW with its schedule, fp32 on the CPU, a local run folder. Any other option is a one-line error naming it."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...models.mindspore_config import MODEL_CONFIGS, OPENAI_MODELS, get_config
from ..config import ConfigError, TrainConfig, load_config
from ..recipes import recipe_config
from ..storage import is_remote

__all__ = ["UNSUPPORTED", "check_mindspore_config", "config_from_flags", "resolve_model"]

# the torch trainer's options this engine leaves out (config key -> flag); any value but the default is refused
UNSUPPORTED = {"towers": "--towers", "adapters": "--adapters", "teacher": "--teacher", "grad_accum": "--grad-accum",
               "grad_clip": "--grad-clip", "ema": "--ema", "wise_ft": "wise_ft", "lock_image": "--lock-image",
               "lock_text": "--lock-text", "layer_decay": "layer_decay", "compile": "compile",
               "grad_checkpointing": "grad_checkpointing", "resume": "--resume", "eval_data": "--eval-data",
               "loss_options": "loss_options", "proto_refresh_every": "proto_refresh_every",
               "checkpoint_dir": "checkpoint_dir", "save_every": "--save-every"}
DEFAULTS = TrainConfig()
WHY = "(it checks the MindSpore port: InfoNCE, AdamW, fp32 on the CPU)"


def check_mindspore_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` if this engine can run it, else a :class:`ConfigError` naming the first option it cannot."""
    for key, flag in UNSUPPORTED.items():
        if getattr(cfg, key) != getattr(DEFAULTS, key):
            raise ConfigError(f"{flag} is not an option of --engine mindspore {WHY}")
    checks = [(cfg.loss == "infonce", f"--loss {cfg.loss} is not an option of --engine mindspore: it trains with "
                                      "infonce"),
              (cfg.precision == "fp32", f"--precision {cfg.precision} is not an option of --engine mindspore: it "
                                        "trains in fp32"),
              (cfg.device in ("auto", "cpu"), f"--device {cfg.device}: --engine mindspore runs on the CPU (MindSpore's "
                                              "CPU wheel); use --device cpu"),
              (not is_remote(str(cfg.output)), f"--output {cfg.output}: --engine mindspore writes a local folder")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg


def resolve_model(cfg: TrainConfig) -> TrainConfig:
    """A MindSpore CLIP config name (``tiny-ViT``, ``RN50``, ``ViT-B/32``, …) given as ``model`` becomes its open_clip
    model config, so that the torch side builds exactly that model; anything else is left to the torch trainer."""
    name = cfg.model
    if cfg.model_config is None and not cfg.pretrained and name in {**MODEL_CONFIGS, **OPENAI_MODELS}:
        return cfg.replace(model=None, model_config=get_config(name))
    return cfg


def config_from_flags(flags: Mapping[str, Any], recipe: "str | None" = None, path: "str | Path | None" = None,
                      extra: "list[str] | None" = None) -> TrainConfig:
    """The run's config: the recipe < the config file < the flags that were given; checked for this engine."""
    if extra:
        raise ConfigError(f"unknown option(s) {' '.join(extra)} for --engine mindspore")
    given = {k: v for k, v in flags.items() if v is not None and not (k == "data" and not v)}
    for key in given:
        if key in UNSUPPORTED:
            raise ConfigError(f"{UNSUPPORTED[key]} is not an option of --engine mindspore {WHY}")
    base = recipe_config(recipe) if recipe else TrainConfig()
    return check_mindspore_config(load_config(path, given, base))
