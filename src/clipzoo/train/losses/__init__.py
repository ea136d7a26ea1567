"""Training objectives: contrastive image–text losses and feature distillation.

Every objective is an :class:`~clipzoo.train.losses.base.Objective` with the common call::

    loss(image_features, text_features, *, logit_scale=None, logit_bias=None,
         teacher_image_features=None, teacher_text_features=None) -> dict[str, Tensor]

returning ``"loss"`` plus named components. :data:`LOSSES` maps names to classes; :func:`build_loss` builds one by
name (unknown names raise :class:`UnknownLossError` naming the nearest valid one).
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any

from ...errors import ClipzooError
from ...models.spec import ConfigError
from ..config_types import typed_value
from .barlow_twins import BarlowTwinsLoss
from .base import FeatureQueue, LossInputError, Objective
from .compress import CompRess1qLoss, CompRess2qLoss
from .dino import DINOLoss
from .infonce import InfoNCELoss
from .protoclip import ProtoCLIPLoss
from .protocpc import ProtoCPCLoss
from .rkd import RKDLoss
from .seed import SEEDLoss
from .siglip import SigLIPLoss
from .simreg import SimRegL1Loss, SimRegLoss, SimRegSmoothL1Loss
from .vicreg import VICRegLoss

__all__ = ["LOSSES", "build_loss", "UnknownLossError", "LossInputError", "Objective", "FeatureQueue",
           "InfoNCELoss", "SigLIPLoss", "SimRegLoss", "SimRegL1Loss", "SimRegSmoothL1Loss", "VICRegLoss",
           "BarlowTwinsLoss", "RKDLoss", "CompRess1qLoss", "CompRess2qLoss", "SEEDLoss", "DINOLoss",
           "ProtoCPCLoss", "ProtoCLIPLoss"]

LOSSES: dict[str, type] = {
    "infonce": InfoNCELoss,
    "siglip": SigLIPLoss,
    "simreg": SimRegLoss,
    "simreg-l1": SimRegL1Loss,
    "simreg-smoothl1": SimRegSmoothL1Loss,
    "vicreg": VICRegLoss,
    "barlow-twins": BarlowTwinsLoss,
    "rkd": RKDLoss,
    "compress-1q": CompRess1qLoss,
    "compress-2q": CompRess2qLoss,
    "seed": SEEDLoss,
    "dino": DINOLoss,
    "protocpc": ProtoCPCLoss,
    "protoclip": ProtoCLIPLoss,
}


class UnknownLossError(ClipzooError, KeyError):
    """A loss name that is not in :data:`LOSSES`."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


#: other names of registered objectives
ALIASES = {"clip": "infonce", "clip-loss": "infonce"}
#: option types that are read as the type they name (a YAML config gives ``lambd: 5e-3`` as the string "5e-3")
TYPED = ("int", "float", "bool", "str")


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _typed_options(key: str, cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` read as the types the objective's signature names, as the config's own keys are (numbers written
    as strings become numbers; ``local_loss: "no"`` is refused, not taken as true)."""
    params = inspect.signature(cls.__init__).parameters
    out = {}
    for name, value in options.items():
        param = params.get(name)
        annotation = str(param.annotation).strip("'\"") if param is not None else ""
        kind = annotation.replace(" | None", "").replace("None | ", "").strip()
        if kind not in TYPED:
            out[name] = value
            continue
        try:
            out[name] = typed_value(f"loss_options.{name}", value, annotation, f"loss {key!r}")
        except ConfigError as e:
            raise LossInputError(str(e)) from None
    return out


def build_loss(name: str, **kwargs) -> Objective:
    """Instantiate the objective registered as ``name`` (case-insensitive; ``_`` ≡ ``-``) with ``kwargs``."""
    key = _normalize(name) if isinstance(name, str) else ""
    key = ALIASES.get(key, key)
    if key not in LOSSES:
        near = difflib.get_close_matches(key, [*LOSSES, *ALIASES], n=1, cutoff=0.6)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UnknownLossError(f"Unknown loss {name!r}.{hint} Valid names: {', '.join(LOSSES)} (clip = infonce).")
    cls = LOSSES[key]
    try:
        return cls(**_typed_options(key, cls, kwargs))
    except TypeError as e:
        raise LossInputError(f"loss {key!r}: bad options {sorted(kwargs)}: {e}") from e
