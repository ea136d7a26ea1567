"""Parameter-efficient fine-tuning of either tower through peft (LoRA, IA3, LoHa, LoKr, OFT, BOFT, VeRA, …).

Configured by ``TrainConfig.adapters``::

    {"image": {"method": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["qkv", "fc1"]},
     "text":  {"method": "ia3", "target_modules": ["c_fc", "c_proj"], "feedforward_modules": ["c_proj"]}}

``method`` is a peft type (``lora``, ``ia3``, ``loha``, ``lokr``, ``oft``, ``boft``, ``vera``, …, any that
``peft.inject_adapter_in_model`` can inject into a plain ``nn.Module``); the other keys go to its peft config.
Without ``target_modules`` every ``nn.Linear`` of the tower is targeted (by full name), except the
``out_proj`` of ``nn.MultiheadAttention`` — that module reads its weights directly, so an adapter there would
never be applied (for open_clip transformers this leaves the MLPs, ``c_fc`` / ``c_proj``, of every block). A
tower with no Linear layer (a torchvision / timm ResNet) gets its ``Conv2d`` layers instead. ``target_modules``
names are matched by peft (a name or a name suffix; a string is a regular expression).

The adapted tower's own weights are frozen, so only adapter parameters train there (projection heads of a
composite model and the logit scale still train). :func:`merged_state_dict` merges the adapters into the
weights (peft's merge + unload) so the saved folder loads without peft.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..models.composite import CompositeCLIP
from ..models.spec import ConfigError
from .checks import check_adapters

__all__ = ["apply_adapters", "tower_modules", "merged_state_dict", "adapter_parameter_names", "check_adapters"]


def tower_modules(module: nn.Module, side: str) -> list[nn.Module]:
    """The modules holding one tower's weights: for a composite model its tower; for an open_clip CLIP the visual
    tower, or the text transformer with its embeddings, final norm and projection."""
    if isinstance(module, CompositeCLIP):
        return [module.image if side == "image" else module.text]
    if side == "image":
        return [module.visual]
    if hasattr(module, "text"):
        return [module.text]
    holders = [module.transformer, module.token_embedding, module.ln_final]
    return holders + [_ParamHolder(module, n) for n in ("positional_embedding", "text_projection")
                      if isinstance(getattr(module, n, None), (nn.Parameter, nn.Module))]


class _ParamHolder:
    """A stand-in exposing ``parameters()`` for a bare Parameter / Module attribute of an open_clip CLIP."""

    def __init__(self, owner: nn.Module, name: str):
        self.owner, self.name = owner, name

    def parameters(self):
        value = getattr(self.owner, self.name)
        return iter([value]) if isinstance(value, nn.Parameter) else value.parameters()


def _default_targets(root: nn.Module) -> list[str]:
    """Full names of every Linear layer (but MultiheadAttention's out_proj), else of every Conv2d layer."""
    mha_out = {id(m.out_proj) for m in root.modules() if isinstance(m, nn.MultiheadAttention)}
    linear = [n for n, m in root.named_modules() if isinstance(m, nn.Linear) and id(m) not in mha_out and n]
    if linear:
        return linear
    conv = [n for n, m in root.named_modules() if isinstance(m, nn.Conv2d) and n]
    if not conv:
        raise ConfigError("adapters: the tower has no Linear or Conv2d layer to adapt; give target_modules")
    return conv


def apply_adapters(module: nn.Module, adapters: "Mapping[str, Mapping[str, Any]] | None") -> dict[str, list[str]]:
    """Inject the configured adapters in place; freeze each adapted tower's base weights. Returns the adapter
    parameter names per tower."""
    if not adapters:
        return {}
    try:
        from peft import get_peft_config, inject_adapter_in_model
    except ImportError:
        raise ConfigError("adapters need peft: pip install 'clipzoo[train]' (or pip install peft)") from None
    adapters = check_adapters(adapters)
    added: dict[str, list[str]] = {}
    for side, spec in adapters.items():
        spec = dict(spec)
        method = str(spec.pop("method")).upper().replace("-", "_")
        holders = tower_modules(module, side)
        root = holders[0]
        base = {id(p) for h in holders for p in h.parameters()}
        spec.setdefault("target_modules", _default_targets(root))
        if method == "IA3":
            spec.setdefault("feedforward_modules", [])
        try:
            peft_config = get_peft_config({"peft_type": method, **spec})
        except (KeyError, ValueError, TypeError) as err:
            raise ConfigError(f"adapters.{side}: cannot configure peft method {method.lower()!r}: {err}") from None
        try:
            inject_adapter_in_model(peft_config, root, adapter_name="default")
        except (ValueError, TypeError, KeyError) as err:
            first = str(err).strip().splitlines()[0][:300]
            raise ConfigError(f"adapters.{side}: peft cannot inject {method.lower()} here: {first}") from None
        after = set()
        for h in holders:
            for p in h.parameters():
                p.requires_grad = id(p) not in base
                after.add(id(p))
        added[side] = [n for n, p in module.named_parameters() if id(p) in after and id(p) not in base]
        for h in holders:  # the frozen base keeps its BatchNorm statistics (eval-mode normalisation)
            if isinstance(h, nn.Module):
                freeze_norm_stats(h)
        if not added[side]:
            raise ConfigError(f"adapters.{side}: {method.lower()} matched no module of the tower "
                              f"(target_modules={spec['target_modules']})")
    return added


def _keep_eval(module: nn.Module, args) -> None:
    module.training = False


def freeze_norm_stats(root: nn.Module) -> None:
    """BatchNorm layers whose parameters are all frozen normalise with (and keep) their running statistics,
    whatever ``train()`` says: a forward pre-hook puts them in eval mode (survives deepcopy, no new keys)."""
    for m in root.modules():
        frozen = isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())
        if frozen and not getattr(m, "_clipzoo_frozen", False):
            m.register_forward_pre_hook(_keep_eval)
            m._clipzoo_frozen = True


def adapter_parameter_names(module: nn.Module) -> list[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = []
    for mname, m in module.named_modules():
        if isinstance(m, BaseTunerLayer):
            base = m.get_base_layer()
            base_ids = {id(p) for p in base.parameters()}
            names += [f"{mname}.{n}" for n, p in m.named_parameters() if id(p) not in base_ids]
    return names


def merge_adapters(module: nn.Module) -> nn.Module:
    """Merge every peft layer into its base layer and put the base layer back (in place)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return module
    for name, m in list(module.named_modules()):
        if isinstance(m, BaseTunerLayer) and name:
            m.merge()
            parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            setattr(parent, name.rsplit(".", 1)[-1], m.get_base_layer())
    return module


def has_adapters(module: nn.Module) -> bool:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return False
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def merged_copy(module: nn.Module, state_dict: "Mapping[str, torch.Tensor] | None" = None) -> nn.Module:
    """A copy of ``module`` (with ``state_dict`` loaded) whose adapters are merged into the weights."""
    out = copy.deepcopy(module)
    if state_dict is not None:
        out.load_state_dict(dict(state_dict))
    return merge_adapters(out)


def merged_state_dict(module: nn.Module, state_dict: "Mapping[str, torch.Tensor] | None" = None
                      ) -> dict[str, torch.Tensor]:
    """The state dict of ``module`` (or of it with ``state_dict`` loaded) with adapters merged in."""
    if not has_adapters(module):
        return dict(state_dict) if state_dict is not None else module.state_dict()
    return merged_copy(module, state_dict).state_dict()
