"""Training configuration: one dataclass, read from TOML / YAML / JSON files and overridden by flags.

An unknown key is an error that names the nearest valid key (``lerning_rate`` → ``did you mean lr?``),
never silently ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.spec import ConfigError, check_towers
from .checks import check_adapters, check_teacher
from .config_types import range_problems, typed_value

try:  # optional: YAML configs
    import yaml
except ImportError:
    yaml = None

__all__ = ["TrainConfig", "ConfigError", "load_config", "table_option"]

ALIASES = {"learning_rate": "lr", "wd": "weight_decay", "accum": "grad_accum", "accum_freq": "grad_accum",
           "train_data": "data", "warmup_steps": "warmup", "out": "output", "logs": "output"}


@dataclass
class TrainConfig:
    # model: a registry spec / open_clip config name, or an explicit open_clip model config
    model: "str | None" = None
    model_config: "dict[str, Any] | None" = None
    pretrained: bool = False  # start from the spec's weights (else: random init of its architecture)
    towers: "dict[str, Any] | None" = None  # a compositional model: image / text towers + heads (models/spec.py)
    adapters: "dict[str, Any] | None" = None  # peft adapters per tower: {"image": {"method": "lora", ...}}
    teacher: "str | None" = None  # distil from this frozen model (any clipzoo.load spec or a trained folder)
    # data
    data: list[str] = field(default_factory=list)  # readers' specs (CSV, shards, TFRecord, folders, fsspec)
    data_weights: "list[float] | None" = None  # sampling weight per source
    train_num_samples: "int | None" = None  # samples per epoch for streamed data
    img_key: "str | None" = None
    caption_key: "str | None" = None
    separator: "str | None" = None
    workers: int = 2
    # optimisation
    batch_size: int = 64  # global batch (split across processes)
    epochs: int = 1
    steps: "int | None" = None  # overrides epochs when set
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: int = 100
    schedule: str = "cosine"  # cosine | constant
    layer_decay: "float | None" = None
    grad_accum: int = 1
    grad_clip: "float | None" = None
    precision: str = "fp32"  # fp32 | bf16 | fp16
    loss: str = "infonce"
    loss_options: dict[str, Any] = field(default_factory=dict)
    proto_refresh_every: "int | None" = None  # protoclip: re-cluster the prototypes every N steps (default: each epoch)
    logit_scale_init: float = 1 / 0.07
    logit_scale_max: float = 100.0
    lock_image: bool = False
    lock_image_unlocked_layers: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    grad_checkpointing: bool = False
    ema: "float | None" = None  # EMA decay of the weights, e.g. 0.999
    wise_ft: "float | None" = None  # interpolate with the starting weights at the end: (1-a)*start + a*trained
    compile: bool = False
    seed: int = 0
    # output
    output: str = "runs/clipzoo"
    save_every: "int | None" = None  # steps; a checkpoint is always written at the end
    log_every: int = 10
    eval_every: "int | None" = None
    eval_data: "str | None" = None
    eval_classnames: "str | None" = None
    eval_templates: "str | None" = None
    checkpoint_dir: "str | None" = None  # default OUTPUT/checkpoints; a local folder or an fsspec URL
    metrics_log: "str | None" = None  # JSON lines of the logged steps; default OUTPUT/metrics.jsonl
    resume: "str | None" = None  # "latest" or a checkpoint path / fsspec URL
    tensorboard: bool = True
    progress: bool = True
    device: str = "auto"

    def replace(self, **changes: Any) -> "TrainConfig":
        return from_mapping({**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates on ``eval_data`` (``eval_every = 0`` turns the evaluation off)."""
        return bool(self.eval_data) and self.eval_every != 0

    def architecture(self) -> dict[str, Any]:
        """What must stay the same to resume a run."""
        return {"model": self.model, "model_config": self.model_config, "towers": self.towers,
                "adapters": self.adapters}


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _nearest(key: str) -> str:
    if key in ALIASES:
        return f"; did you mean {ALIASES[key]!r}?"
    match = difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(FIELDS)}"


def check_keys(values: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """``values`` with ``-`` spelled ``_``; an unknown key raises, naming the nearest valid one."""
    clean: dict[str, Any] = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in FIELDS:
            raise ConfigError(f"{source}: unknown key {key!r}{_nearest(k)}")
        clean[k] = value
    return clean


def from_mapping(values: Mapping[str, Any], source: str = "config",
                 flags: "Mapping[str, str] | None" = None) -> TrainConfig:
    """A config from a dict, checking every key and value. ``flags``: the keys that command-line flags gave, each
    with its flag's name — a bad value of one is blamed on the flag, not on ``source`` (the config file)."""
    flags = dict(flags or {})
    clean = {k: typed_value(k, v, FIELDS[k].type, flags.get(k, source))
             for k, v in check_keys(values, source).items()}
    cfg = TrainConfig(**clean)
    _validate(cfg, source, flags)
    return cfg


def _blamed(keys: "tuple[str, ...]", source: str, flags: Mapping[str, str]) -> str:
    """Who set what is wrong: the flag of the first of ``keys`` a flag gave, else ``source``."""
    return next((flags[k] for k in keys if k in flags), source)


def _validate(cfg: TrainConfig, source: str, flags: "Mapping[str, str] | None" = None) -> None:
    flags = flags or {}
    checks = [
        (("batch_size",), cfg.batch_size >= 1, f"batch_size must be at least 1, got {cfg.batch_size}"),
        (("grad_accum",), cfg.grad_accum >= 1, f"grad_accum must be at least 1, got {cfg.grad_accum}"),
        (("batch_size", "grad_accum"), cfg.batch_size % cfg.grad_accum == 0,
         f"batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum}"),
        (("lr",), cfg.lr > 0, f"lr must be positive, got {cfg.lr}"),
        (("precision",), cfg.precision in ("fp32", "bf16", "fp16"),
         f"precision must be fp32, bf16 or fp16, got {cfg.precision!r}"),
        (("schedule",), cfg.schedule in ("cosine", "constant"),
         f"schedule must be cosine or constant, got {cfg.schedule!r}"),
        (("steps",), cfg.steps is None or cfg.steps >= 1, f"steps must be at least 1, got {cfg.steps}"),
        (("epochs",), cfg.epochs >= 1, f"epochs must be at least 1, got {cfg.epochs}"),
        (("ema",), cfg.ema is None or 0 < cfg.ema < 1, f"ema must be between 0 and 1, got {cfg.ema}"),
        (("wise_ft",), cfg.wise_ft is None or 0 <= cfg.wise_ft <= 1,
         f"wise_ft must be between 0 and 1, got {cfg.wise_ft}"),
        (("layer_decay",), cfg.layer_decay is None or 0 < cfg.layer_decay <= 1,
         f"layer_decay must be in (0, 1], got {cfg.layer_decay}"),
        (("proto_refresh_every",), cfg.proto_refresh_every is None or cfg.proto_refresh_every >= 1,
         f"proto_refresh_every must be at least 1, got {cfg.proto_refresh_every}"),
        (("data_weights", "data"), cfg.data_weights is None or len(cfg.data_weights) == len(cfg.data),
         f"data_weights has {len(cfg.data_weights or [])} entries for {len(cfg.data)} data sources"),
    ]
    problems = [(keys, m) for keys, ok, m in checks if not ok] + range_problems(cfg)
    if problems:
        keys, message = problems[0]
        raise ConfigError(f"{_blamed(keys, source, flags)}: {message}")
    if cfg.towers is not None:
        if cfg.model or cfg.model_config:
            raise ConfigError(f"{source}: set either towers (a compositional model) or model / model_config, "
                              "not both")
        check_towers(cfg.towers)
    if cfg.adapters:
        check_adapters(cfg.adapters)
    check_teacher(cfg, _blamed(("loss",), source, flags))


def read_config_file(path: "str | os.PathLike") -> dict[str, Any]:
    """A TOML, YAML or JSON file -> dict (a ``[train]`` table, if present, is used)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err.strerror or err}") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            if yaml is None:
                raise ConfigError("YAML configs need PyYAML: pip install pyyaml (or write the config as TOML)")
            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {str(path)!r}: use .toml, .yaml or .json")
    except ConfigError:
        raise
    except Exception as err:  # the parsers' own errors carry the line
        raise ConfigError(f"config file {str(path)!r} cannot be parsed: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("train", data), dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of keys (or a [train] table)")
    return dict(data.get("train", data))


def load_config(path: "str | os.PathLike | None" = None, overrides: "Mapping[str, Any] | None" = None,
                base: "TrainConfig | None" = None, flags: bool = False) -> TrainConfig:
    """base (e.g. a recipe) < config file < overrides (flags that were given). ``flags``: the overrides are the
    command line's ``--key-name`` flags, and a bad value of one is blamed on its flag (``--precision: …``), not
    on the config file."""
    values: dict[str, Any] = base.as_dict() if base is not None else {}
    if path is not None:
        values.update(check_keys(read_config_file(path), str(path)))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        # the model is one choice: a towers override replaces the file's model / model_config, and vice versa
        if given.get("towers") is not None:
            values.update(model=None, model_config=None)
        if given.get("model") is not None or given.get("model_config") is not None:
            values["towers"] = None
        values.update(given)
    named = {k: "--" + str(k).replace("_", "-") for k in given} if flags else None
    return from_mapping(values, str(path) if path else "config", named)


def table_option(value: str, flag: str, key: str) -> dict[str, Any]:
    """A table given on the command line (``--towers``, ``--adapters``): a JSON object, or a .json / .toml /
    .yaml file holding it — the table itself, or a config file whose ``key`` table (at the top or under
    ``[train]``) it is. Bad JSON or a missing file is a :class:`ConfigError` naming ``flag`` and the fix."""
    text = str(value).strip()
    example = {"towers": "'{\"image\": {\"source\": \"timm\", \"name\": \"resnet18\"}, "
                         "\"text\": {\"source\": \"hf\", \"name\": \"bert-base-uncased\"}}'",
               "adapters": "'{\"image\": {\"method\": \"lora\", \"r\": 8}}'"}.get(key, "'{...}'")
    fix = f"give a JSON object, e.g. {flag} {example}, or a .json / .toml / .yaml file"
    if not text.startswith(("{", "[")):
        path = Path(text).expanduser()
        if path.is_file():
            data = read_config_file(path)
            table = data.get(key, data) if isinstance(data, dict) else data
            if not isinstance(table, dict):
                raise ConfigError(f"{flag}: {str(path)!r} must hold a table (its `{key}` table or the table itself)")
            return dict(table)
        if path.suffix.lower() in (".json", ".toml", ".yaml", ".yml") or os.sep in text:
            raise ConfigError(f"{flag}: no such file {text!r}; {fix}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{flag}: not valid JSON ({err.msg} at column {err.colno}); {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag}: expected a JSON object, got {type(data).__name__}; {fix}")
    return data
