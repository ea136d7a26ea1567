"""The type of each training setting, checked before anything runs: a config value of the wrong type was a
traceback from deep in the run (YAML reads ``lr: 1e-3`` as the string ``"1e-3"``: ``'>' not supported between
'str' and 'int'``; ``betas: 5``, ``model_config: "abc"``), or silently odd (``steps: 1.5`` "trained 1.5 steps").

A number written as a string is read as the number it spells (``"1e-3"``, ``"8"``); a whole float is an int
(``8.0``); anything else is a :class:`~clipzoo.models.spec.ConfigError` naming the key, the value and the type.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..inputs import real_value
from ..models.spec import ConfigError

__all__ = ["typed_value", "range_problems", "SEED_MAX"]


def typed_value(key: str, value: Any, annotation: str, source: str) -> Any:
    """``value`` as the type ``annotation`` (a dataclass field's string annotation) names, or a ConfigError."""
    annotation = str(annotation).strip("'\"")  # "'int | None'": a quoted annotation, postponed
    if value is None and "None" in annotation:
        return None
    kind = annotation.replace(" | None", "").replace("None | ", "").strip()
    try:
        if kind == "float":
            return _number(value, float)
        if kind == "int":
            return _number(value, int)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if kind == "str":
            if isinstance(value, str):
                return value
            raise TypeError
        if kind.startswith("dict"):
            if isinstance(value, Mapping):
                return dict(value)
            raise TypeError
        return _sequence(kind, value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range (10**400)
        raise ConfigError(f"{source}: {key} must be {_said(kind)}, got {value!r}"[:300]) from None


def _number(value: Any, kind: type) -> "int | float":
    """A number of ``kind``, from a real number (:func:`clipzoo.inputs.real_value`: numpy's too) or a string."""
    if isinstance(value, str):
        value = float(value.strip())
    number = real_value(value)
    if number is None:
        raise TypeError
    return float(number) if kind is float else _whole(number)


def _whole(value: "int | float") -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _sequence(kind: str, value: Any) -> Any:
    if isinstance(value, str) and kind == "list[str]":
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError
    if kind == "list[str]":
        if not all(isinstance(v, str) for v in value):
            raise TypeError
        return list(value)
    numbers = [_number(v, float) for v in value]
    if kind.startswith("tuple") and len(numbers) != kind.count("float"):
        raise ValueError
    return tuple(numbers) if kind.startswith("tuple") else numbers


def _said(kind: str) -> str:
    return {"float": "a number", "int": "a whole number", "bool": "true or false", "str": "a string",
            "list[str]": "a list of strings", "list[float]": "a list of numbers",
            "tuple[float, float]": "two numbers"}.get(kind, "a table of keys" if kind.startswith("dict") else kind)


SEED_MAX = 2**32 - 1  # numpy's range; a seed past torch's int64 was an OverflowError after the model was built


def range_problems(cfg: Any) -> list[tuple[tuple[str, ...], str]]:
    """What is out of range in a typed config, beyond what ``config._validate`` checks, as (the keys at fault, the
    message): infinities and signs (``lr: inf`` trained a model of NaN and reported success; ``log_every: 0``
    divided by zero; ``logit_scale_max: 0`` was a math domain error and ``seed: 1e20`` an overflow, each after the
    model was built)."""
    checks = [
        ("lr", math.isfinite(cfg.lr), f"lr must be a finite number, got {cfg.lr}"),
        ("weight_decay", math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0,
         f"weight_decay must be 0 or more, got {cfg.weight_decay}"),
        ("warmup", cfg.warmup >= 0, f"warmup must be 0 or more steps, got {cfg.warmup}"),
        ("log_every", cfg.log_every >= 1, f"log_every must be at least 1, got {cfg.log_every}"),
        ("save_every", cfg.save_every is None or cfg.save_every >= 1,
         f"save_every must be at least 1, got {cfg.save_every}"),
        ("eval_every", cfg.eval_every is None or cfg.eval_every >= 0,
         f"eval_every must be 0 or more, got {cfg.eval_every}"),
        ("workers", cfg.workers >= 0, f"workers must be 0 or more, got {cfg.workers}"),
        ("train_num_samples", cfg.train_num_samples is None or cfg.train_num_samples >= 1,
         f"train_num_samples must be at least 1, got {cfg.train_num_samples}"),
        ("eps", math.isfinite(cfg.eps) and cfg.eps > 0, f"eps must be a positive number, got {cfg.eps}"),
        ("betas", all(0 <= b < 1 for b in cfg.betas), f"betas must be two numbers in [0, 1), got {list(cfg.betas)}"),
        ("grad_clip", cfg.grad_clip is None or (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0),
         f"grad_clip must be a positive number, got {cfg.grad_clip}"),
        ("logit_scale_init", math.isfinite(cfg.logit_scale_init) and cfg.logit_scale_init > 0,
         f"logit_scale_init must be a positive number, got {cfg.logit_scale_init}"),
        ("logit_scale_max", math.isfinite(cfg.logit_scale_max) and cfg.logit_scale_max > 0,
         f"logit_scale_max must be a positive number, got {cfg.logit_scale_max}"),
        ("data_weights", cfg.data_weights is None or all(math.isfinite(w) and w >= 0 for w in cfg.data_weights),
         f"data_weights must be numbers of 0 or more, got {cfg.data_weights}"),
        ("data_weights", cfg.data_weights is None or not cfg.data_weights or sum(cfg.data_weights) > 0,
         f"data_weights must give some source a weight above 0, got {cfg.data_weights}"),
        ("seed", 0 <= cfg.seed <= SEED_MAX, f"seed must be a whole number from 0 to {SEED_MAX}, got {cfg.seed}"),
        ("lock_image_unlocked_layers", cfg.lock_image_unlocked_layers >= 0,
         f"lock_image_unlocked_layers must be 0 or more, got {cfg.lock_image_unlocked_layers}"),
        ("lock_text_unlocked_layers", cfg.lock_text_unlocked_layers >= 0,
         f"lock_text_unlocked_layers must be 0 or more, got {cfg.lock_text_unlocked_layers}"),
        ("output", bool(str(cfg.output).strip()),
         f"output must name a run folder, got {cfg.output!r}"),  # '' wrote into the current folder
    ]
    return [((key,), message) for key, ok, message in checks if not ok]
