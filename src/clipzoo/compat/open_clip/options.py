"""open_clip's ``create_model`` options on a model clipzoo loaded.

For an open_clip architecture (the loaded module is open_clip's ``CLIP`` / ``CustomTextCLIP`` /
``CoCa`` and its config is known) every option is honoured the way open_clip's factory applies it: the
config is edited (``force_quick_gelu``, ``force_patch_dropout``, ``force_image_size``,
``force_context_length``, extra model kwargs), the class chosen (``force_custom_text`` -> a
``CustomTextCLIP`` whose text tower is open_clip's ``TextTransformer`` with its projection), base tower
weights taken only when no full checkpoint is (``pretrained_text`` / its old name ``pretrained_hf``,
``pretrained_image``), then the checkpoint's weights loaded through open_clip's conversions.
For other models (HF transformers, sentence-transformers, …) the options that change the architecture
have nothing to act on and raise :class:`~clipzoo.errors.UnsupportedError`; the base-weight flags are
no-ops there, as in open_clip whenever a full checkpoint is loaded.
"""
from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import torch

from ...backends.open_clip import load_weights as load_checkpoint_weights
from ...cards import ModelCard
from ...errors import UnsupportedError
from ._real import REAL, submodule

DEFAULTS: dict[str, Any] = dict(
    load_weights=True, jit=False, force_quick_gelu=False, force_custom_text=False, force_patch_dropout=None,
    force_image_size=None, force_preprocess_cfg=None, force_context_length=None, pretrained_image=False,
    pretrained_text=True, pretrained_image_path=None, pretrained_text_path=None, require_pretrained=False)
# what changes the module that is built (the rest only picks base weights, which a full checkpoint replaces)
REBUILD = ("load_weights", "jit", "force_quick_gelu", "force_custom_text", "force_patch_dropout", "force_image_size",
           "force_context_length", "pretrained_image_path", "pretrained_text_path")
OPEN_CLIP_MODULES = (REAL.CLIP, REAL.CustomTextCLIP, REAL.CoCa)


def normalise(options: dict[str, Any], model_kwargs: dict[str, Any]) -> tuple[dict, dict]:
    """open_clip's backward-compatible ``pretrained_hf`` kwarg is ``pretrained_text``."""
    options, model_kwargs = dict(options), dict(model_kwargs)
    if "pretrained_hf" in model_kwargs:
        options["pretrained_text"] = model_kwargs.pop("pretrained_hf")
    return options, model_kwargs


def changed(options: dict[str, Any], model_kwargs: dict[str, Any]) -> list[str]:
    """The options that ask for another module than the checkpoint's, as given."""
    return sorted(k for k in REBUILD if options.get(k, DEFAULTS[k]) != DEFAULTS[k]) + sorted(model_kwargs)


def refuse_for_wrapped(card: ModelCard, options: dict[str, Any], model_kwargs: dict[str, Any]) -> None:
    """Options that would rebuild a model which is not an open_clip architecture."""
    names = [k for k in changed(options, model_kwargs) if k != "jit"]
    if names:
        raise UnsupportedError(f"{', '.join(names)} cannot be applied to {card.alias}: it is a {card.backend} "
                               "model, not an open_clip architecture, so there is no open_clip config to "
                               "rebuild it from; load it without these options")
    if options.get("jit"):
        warnings.warn(f"jit=True: {card.alias} is not scripted (it is not an open_clip architecture); "
                      "returning the eager model", stacklevel=4)


def _model_config(comparator, options: dict[str, Any], model_kwargs: dict[str, Any]) -> tuple[type, dict, bool]:
    """open_clip's factory steps on the config: overrides, base-weight flags, the model class."""
    cfg = copy.deepcopy(comparator.model_config)
    text_cfg, vision_cfg = cfg.setdefault("text_cfg", {}), cfg.setdefault("vision_cfg", {})
    if options.get("force_quick_gelu"):
        cfg["quick_gelu"] = True
    for option, section, key in (("force_patch_dropout", vision_cfg, "patch_dropout"),
                                 ("force_image_size", vision_cfg, "image_size"),
                                 ("force_context_length", text_cfg, "context_length")):
        if options.get(option) is not None:
            section[key] = options[option]
    full_checkpoint = options.get("load_weights", True)
    is_timm = "timm_model_name" in vision_cfg
    if is_timm:
        vision_cfg["timm_model_pretrained"] = bool(options.get("pretrained_image")) and not full_checkpoint \
            and options.get("pretrained_image_path") is None
    is_hf_text = "hf_model_name" in text_cfg
    if is_hf_text:
        text_cfg["hf_model_pretrained"] = bool(options.get("pretrained_text", True)) and not full_checkpoint \
            and options.get("pretrained_text_path") is None
    custom_text = cfg.pop("custom_text", False) or bool(options.get("force_custom_text")) or is_hf_text
    cls = (REAL.CoCa if "multimodal_cfg" in cfg else REAL.CustomTextCLIP) if custom_text else REAL.CLIP
    cfg.update(model_kwargs)
    return cls, cfg, is_timm


def _load_tower(module: torch.nn.Module | None, path: str | None, weights_only: bool, what: str) -> None:
    """open_clip's ``pretrained_image_path`` / ``pretrained_text_path``: a non-strict load into one tower."""
    if not path:
        return
    sd = submodule("factory").load_state_dict(path, device="cpu", weights_only=weights_only)
    incompatible = module.load_state_dict(sd, strict=False)
    logging.info("Loaded %s tower weights from %s. Incompatible keys: %s", what, path, incompatible)


def rebuild(comparator, options: dict[str, Any], model_kwargs: dict[str, Any], *, precision: str, device,
            weights_only: bool) -> torch.nn.Module:
    """The module open_clip's ``create_model`` would build with these options from the checkpoint that
    ``comparator`` (loaded in fp32 on the CPU) holds."""
    cls, cfg, is_timm = _model_config(comparator, options, model_kwargs)
    model = cls(**cfg, cast_dtype=REAL.get_cast_dtype(precision))
    if options.get("load_weights", True):
        load_checkpoint_weights(model, comparator.model.state_dict(), comparator.card.alias)
    elif options.get("require_pretrained"):
        raise RuntimeError(f"Required pretrained weights ({comparator.card.alias}) could not be loaded: "
                           "load_weights=False")
    _load_tower(getattr(model, "visual", None), options.get("pretrained_image_path"), weights_only, "image")
    _load_tower(getattr(model, "text", model), options.get("pretrained_text_path"), weights_only, "text")
    submodule("factory")._set_model_device_and_precision(model, torch.device(device), precision, is_timm)
    size = options.get("force_image_size")
    if size is not None and is_timm and hasattr(model.visual, "set_input_size"):
        model.visual.set_input_size(size)
    model.eval()
    if options.get("jit"):
        try:
            model = torch.jit.script(model)
        except Exception as exc:  # noqa: BLE001 - open_clip logs the failure and returns the eager model
            logging.warning("JIT scripting failed: %s. Returning non-JIT model.", exc)
    return model


def is_open_clip_module(comparator) -> bool:
    return isinstance(getattr(comparator, "model", None), OPEN_CLIP_MODULES) \
        and getattr(comparator, "model_config", None) is not None \
        and getattr(comparator, "tokenizer", None) is not None
