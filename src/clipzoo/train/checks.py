"""The checks of the config keys that training's plug-ins read — ``adapters`` (peft) and ``teacher`` (distillation)
— kept torch-free, so that reading a config (and the CLI) checks them without importing torch or peft's models."""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from ..models.spec import ConfigError

__all__ = ["check_adapters", "check_teacher", "NEEDS_TEACHER", "loss_key"]

#: objectives that cannot run without teacher features (vicreg / barlow-twins fall back to image–text pairs,
#: protoclip groups texts by the teacher's text features only when given)
NEEDS_TEACHER = ("simreg", "simreg-l1", "simreg-smoothl1", "rkd", "compress-1q", "compress-2q", "seed", "dino",
                 "protocpc")


def loss_key(name: str) -> str:
    """A loss name as :data:`clipzoo.train.losses.LOSSES` spells it (lower case, ``-`` for ``_``)."""
    return name.strip().lower().replace("_", "-")


def check_teacher(cfg, source: str = "config") -> None:
    """A loss that distils needs ``teacher``; when a flag set the loss (``source`` is ``--loss``), the fix named
    first is the ``--teacher`` flag."""
    if loss_key(cfg.loss) in NEEDS_TEACHER and not cfg.teacher:
        if source.startswith("--"):
            raise ConfigError(f"{source}: loss {cfg.loss!r} distils from a teacher: pass --teacher SPEC (a registry "
                              "spec or a trained model folder, e.g. --teacher runs/big/model), or set the `teacher` "
                              "key in the config file")
        raise ConfigError(f"{source}: loss {cfg.loss!r} distils from a teacher: set the `teacher` key (a registry "
                          "spec or a trained model folder, e.g. teacher = \"runs/big/model\" in the config file)")


def check_adapters(adapters: Any) -> dict[str, dict[str, Any]]:
    """The ``adapters`` table checked: ``image`` and / or ``text`` entries, each with a peft ``method`` (and, when
    peft is installed, only options of that method's config)."""
    if not isinstance(adapters, Mapping):
        raise ConfigError(f"adapters must be a table with image and/or text entries, got {type(adapters).__name__}")
    out = {}
    for side, spec in adapters.items():
        if side not in ("image", "text"):
            raise ConfigError(f"adapters: unknown tower {side!r}; use 'image' and/or 'text'")
        if not isinstance(spec, Mapping) or not spec.get("method"):
            raise ConfigError(f"adapters.{side} needs a method (lora, ia3, loha, lokr, oft, boft, vera, …)")
        _check_peft_keys(side, spec)
        out[side] = dict(spec)
    return out


def _check_peft_keys(side: str, spec: Mapping[str, Any]) -> None:
    """When peft is installed: the method is a peft type and every other key a field of its config class."""
    try:
        from peft import PEFT_TYPE_TO_CONFIG_MAPPING
    except ImportError:  # checked again (with an install hint) when the adapters are applied
        return
    method = str(spec["method"]).upper().replace("-", "_")
    types = {str(getattr(k, "value", k)).upper(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    if method not in types:
        near = difflib.get_close_matches(method, list(types), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0].lower()!r}?" if near else " (e.g. lora, ia3, loha, lokr, oft, boft, vera)"
        raise ConfigError(f"adapters.{side}: unknown peft method {spec['method']!r}{hint}")
    fields = [f.name for f in dataclasses.fields(types[method]) if f.name not in ("peft_type", "task_type")]
    for key in spec:
        if key != "method" and key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"adapters.{side}: unknown {method.lower()} option {key!r}{hint}")
