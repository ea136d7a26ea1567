"""``open_clip.factory`` through the shim: ``create_model``, ``create_model_and_transforms``,
``create_model_from_pretrained``, ``get_tokenizer`` and ``list_models`` over every model clipzoo knows
(see :mod:`clipzoo.compat.open_clip` for how a name is served); the rest is open_clip's own."""
from __future__ import annotations

import copy
import weakref
from typing import Any

import torch

from ...api import load as load_model
from ...cards import ModelCard
from ...errors import UnsupportedError
from ...tokenizers import OpenAITokenizer
from .._errors import runtime_errors
from .._models import OpenClipModel, preprocess_cfg_of, with_open_clip_module
from . import options as arch_options
from ._passthrough import passthrough
from ._real import REAL, submodule
from ._routing import NotFound, route
from .tokenizer import ComparatorTokenizer

# open_clip's precision -> clipzoo's load precision; pure_* is then cast whole as open_clip does, and a name
# open_clip does not know builds fp32 there (no cast dtype, the model left in float32), so here too
_PRECISIONS = {"fp32": "fp32", "amp": "fp32", "amp_bf16": "fp32", "amp_bfloat16": "fp32", "fp16": "fp16",
               "bf16": "bf16", "pure_fp16": "fp16", "pure_bf16": "bf16"}
_transform = submodule("transform")

# tokenizers of models loaded through clipzoo, so get_tokenizer need not load them again
TOKENIZERS: dict[str, Any] = {}
COMPARATORS: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()

get_model_config = REAL.get_model_config
add_model_config = REAL.add_model_config
load_checkpoint = REAL.load_checkpoint


def list_models() -> list[str]:
    """open_clip's architecture names, exactly (clipzoo's other models: ``list_registry_models()``)."""
    return list(REAL.list_models())


# --------------------------------------------------------------------------- loading through clipzoo
def _zoo_precision(precision: str) -> str:
    return _PRECISIONS.get(precision, "fp32")


def open_clip_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer open_clip pairs with the model: its own ``SimpleTokenizer`` where clipzoo uses OpenAI's BPE
    (open_clip's keeps ``<|endoftext|>`` in a text as plain words, openai's reads it as the special token)."""
    if isinstance(tokenizer, OpenAITokenizer):
        return submodule("tokenizer").SimpleTokenizer(context_length=tokenizer.context_length)
    return tokenizer


def load_through_clipzoo(card: ModelCard, precision: str, device, cache_dir, weights_only: bool, output_dict,
                         options: dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None):
    """``(model, comparator)``: the open_clip module itself for an open_clip architecture (rebuilt when
    the options ask for another module), else the Comparator wrapped in open_clip's model API."""
    options, model_kwargs = arch_options.normalise(options or {}, model_kwargs or {})
    rebuild = bool(arch_options.changed(options, model_kwargs))
    zoo_precision = _zoo_precision(precision)
    where = {"device": "cpu" if rebuild else str(device), "precision": "fp32" if rebuild else zoo_precision,
             "cache_dir": cache_dir, "trust_pickle": not weights_only}
    comparator = with_open_clip_module(load_model(card, **where), **where)
    key = card.alias.lower()
    if not arch_options.is_open_clip_module(comparator):
        arch_options.refuse_for_wrapped(card, options, model_kwargs)
        if rebuild:  # jit alone: warned, the eager model at the wanted device and precision
            comparator = load_model(card, device=str(device), precision=zoo_precision, cache_dir=cache_dir,
                                    trust_pickle=not weights_only)
        cfg = _transform.merge_preprocess_dict(preprocess_cfg_of(comparator), options.get("force_preprocess_cfg") or {})
        model = OpenClipModel(comparator, cfg, output_dict=bool(output_dict))
        COMPARATORS[key] = comparator
        return model, comparator
    model = comparator.model
    if rebuild:
        model = arch_options.rebuild(comparator, options, model_kwargs, precision=precision, device=device,
                                 weights_only=weights_only)
    elif precision in ("pure_fp16", "pure_bf16"):  # clipzoo loaded it in mixed precision: now every tensor
        is_timm = "timm_model_name" in (comparator.model_config or {}).get("vision_cfg", {})
        submodule("factory")._set_model_device_and_precision(model, torch.device(device), precision, is_timm)
    REAL.set_model_preprocess_cfg(model, final_preprocess_cfg(model, comparator, options))
    if output_dict and hasattr(model, "output_dict"):
        model.output_dict = True
    TOKENIZERS[key] = open_clip_tokenizer(comparator.tokenizer)
    return model.train(), comparator  # open_clip's factory hands its modules out in train mode


def final_preprocess_cfg(model: torch.nn.Module, comparator, options: dict[str, Any]) -> dict[str, Any]:
    """What open_clip's ``create_model`` records on the model: the checkpoint's preprocess config, its size the
    built tower's ``image_size`` (``(224, 224)`` for a ViT), then ``force_preprocess_cfg`` (the image_* options)."""
    cfg = preprocess_cfg_of(comparator)
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if size is not None:
        cfg["size"] = size
    return _transform.merge_preprocess_dict(cfg, options.get("force_preprocess_cfg") or {})


def transforms(model, comparator, overrides: dict[str, Any], aug_cfg=None, train: bool = True):
    """(train, val) transforms: open_clip's ``image_transform_v2`` from the model's preprocess config;
    for a wrapped Comparator without overrides, val is the backend's own eval transform."""
    cfg = _transform.merge_preprocess_dict(dict(model.visual.preprocess_cfg), overrides)
    pp = _transform.PreprocessCfg(**cfg)
    if isinstance(model, OpenClipModel) and not overrides:
        val = comparator.transform
    else:
        val = _transform.image_transform_v2(pp, is_train=False)
    return (_transform.image_transform_v2(pp, is_train=True, aug_cfg=aug_cfg) if train else None), val


def _pp_overrides(image_mean, image_std, image_interpolation, image_resize_mode) -> dict[str, Any]:
    return _transform.merge_preprocess_kwargs({}, mean=image_mean, std=image_std, interpolation=image_interpolation,
                                              resize_mode=image_resize_mode)


# --------------------------------------------------------------------------- open_clip's factory API
def create_model(
        model_name: str,
        pretrained: str | None = None,
        load_weights: bool = True,
        precision: str = 'fp32',
        device: str | torch.device = 'cpu',
        jit: bool = False,
        force_quick_gelu: bool = False,
        force_custom_text: bool = False,
        force_patch_dropout: float | None = None,
        force_image_size: int | tuple[int, int] | None = None,
        force_preprocess_cfg: dict[str, Any] | None = None,
        force_context_length: int | None = None,
        pretrained_image: bool = False,
        pretrained_text: bool = True,
        pretrained_image_path: str | None = None,
        pretrained_text_path: str | None = None,
        cache_dir: str | None = None,
        output_dict: bool | None = None,
        require_pretrained: bool = False,
        weights_only: bool = True,
        **model_kwargs,
) -> torch.nn.Module:
    """open_clip's ``create_model`` for every registry model (see the package docstring for the routing)."""
    options = dict(load_weights=load_weights, jit=jit, force_quick_gelu=force_quick_gelu,
                   force_custom_text=force_custom_text, force_patch_dropout=force_patch_dropout,
                   force_image_size=force_image_size, force_preprocess_cfg=force_preprocess_cfg,
                   force_context_length=force_context_length, pretrained_image=pretrained_image,
                   pretrained_text=pretrained_text, pretrained_image_path=pretrained_image_path,
                   pretrained_text_path=pretrained_text_path, require_pretrained=require_pretrained)
    with runtime_errors():
        target = route(model_name, pretrained, cache_dir)
    if target.native:
        return REAL.create_model(target.model_name, target.pretrained, precision=precision, device=device,
                                 cache_dir=cache_dir, output_dict=output_dict, weights_only=weights_only,
                                 **options, **model_kwargs)
    with runtime_errors():
        model, _ = load_through_clipzoo(target.card, precision, device, cache_dir, weights_only, output_dict,
                                        options, model_kwargs)
    return model


def create_model_and_transforms(
        model_name: str,
        pretrained: str | None = None,
        load_weights: bool = True,
        precision: str = 'fp32',
        device: str | torch.device = 'cpu',
        jit: bool = False,
        force_quick_gelu: bool = False,
        force_custom_text: bool = False,
        force_patch_dropout: float | None = None,
        force_image_size: int | tuple[int, int] | None = None,
        force_context_length: int | None = None,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        image_interpolation: str | None = None,
        image_resize_mode: str | None = None,
        aug_cfg: Any = None,
        pretrained_image: bool = False,
        pretrained_text: bool = True,
        pretrained_image_path: str | None = None,
        pretrained_text_path: str | None = None,
        cache_dir: str | None = None,
        output_dict: bool | None = None,
        weights_only: bool = True,
        **model_kwargs,
):
    """open_clip's ``create_model_and_transforms``: ``(model, preprocess_train, preprocess_val)``."""
    options = dict(load_weights=load_weights, jit=jit, force_quick_gelu=force_quick_gelu,
                   force_custom_text=force_custom_text, force_patch_dropout=force_patch_dropout,
                   force_image_size=force_image_size, force_context_length=force_context_length,
                   pretrained_image=pretrained_image, pretrained_text=pretrained_text,
                   pretrained_image_path=pretrained_image_path, pretrained_text_path=pretrained_text_path)
    overrides = dict(image_mean=image_mean, image_std=image_std, image_interpolation=image_interpolation,
                     image_resize_mode=image_resize_mode)
    with runtime_errors():
        target = route(model_name, pretrained, cache_dir)
    if target.native:
        return REAL.create_model_and_transforms(
            target.model_name, target.pretrained, precision=precision, device=device, aug_cfg=aug_cfg,
            cache_dir=cache_dir, output_dict=output_dict, weights_only=weights_only, **options, **overrides,
            **model_kwargs)
    options["force_preprocess_cfg"] = _pp_overrides(**overrides)  # recorded on the model, as open_clip does
    with runtime_errors():
        model, comparator = load_through_clipzoo(target.card, precision, device, cache_dir, weights_only,
                                                 output_dict, options, model_kwargs)
    train, val = transforms(model, comparator, options["force_preprocess_cfg"], aug_cfg)
    return model, train, val


def create_model_from_pretrained(
        model_name: str,
        pretrained: str | None = None,
        precision: str = 'fp32',
        device: str | torch.device = 'cpu',
        jit: bool = False,
        force_quick_gelu: bool = False,
        force_custom_text: bool = False,
        force_image_size: int | tuple[int, int] | None = None,
        force_context_length: int | None = None,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        image_interpolation: str | None = None,
        image_resize_mode: str | None = None,
        return_transform: bool = True,
        cache_dir: str | None = None,
        weights_only: bool = True,
        **model_kwargs,
):
    """open_clip's ``create_model_from_pretrained``: ``(model, preprocess)``, or the model alone when
    ``return_transform=False``."""
    options = dict(jit=jit, force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
                   force_image_size=force_image_size, force_context_length=force_context_length)
    overrides = dict(image_mean=image_mean, image_std=image_std, image_interpolation=image_interpolation,
                     image_resize_mode=image_resize_mode)
    with runtime_errors():
        target = route(model_name, pretrained, cache_dir)
    if target.native:
        return REAL.create_model_from_pretrained(
            target.model_name, target.pretrained, precision=precision, device=device,
            return_transform=return_transform, cache_dir=cache_dir, weights_only=weights_only, **options,
            **overrides, **model_kwargs)
    options["force_preprocess_cfg"] = _pp_overrides(**overrides)  # recorded on the model, as open_clip does
    with runtime_errors():
        model, comparator = load_through_clipzoo(target.card, precision, device, cache_dir, weights_only, None,
                                                 options, model_kwargs)
    if not return_transform:
        return model
    _, val = transforms(model, comparator, options["force_preprocess_cfg"], train=False)
    return model, val


# --------------------------------------------------------------------------- tokenizers
def get_tokenizer(
        model_name: str = '',
        context_length: int | None = None,
        cache_dir: str | None = None,
        **kwargs,
):
    """open_clip's ``get_tokenizer`` for every registry model. A model served by clipzoo reuses the
    tokenizer of the last one created here, and is loaded once to build it otherwise."""
    if not model_name:
        return REAL.get_tokenizer(model_name, context_length=context_length, cache_dir=cache_dir, **kwargs)
    try:
        with runtime_errors():
            target = route(model_name, None, cache_dir)
    except NotFound:  # open_clip gives its default tokenizer for a name it does not know (and logs a warning)
        return REAL.get_tokenizer(model_name, context_length=context_length, cache_dir=cache_dir, **kwargs)
    if target.native:
        return REAL.get_tokenizer(target.model_name, context_length=context_length, cache_dir=cache_dir, **kwargs)
    with runtime_errors():
        return _zoo_tokenizer(target.card, context_length, cache_dir, kwargs)


def _zoo_tokenizer(card: ModelCard, context_length: int | None, cache_dir, kwargs: dict[str, Any]):
    """``get_tokenizer`` of a model clipzoo serves: open_clip's tokenizer for an open_clip module (its
    ``SimpleTokenizer`` for OpenAI's BPE), else :class:`ComparatorTokenizer` over the model's own."""
    key = card.alias.lower()
    tokenizer = TOKENIZERS.get(key)
    comparator = COMPARATORS.get(key)
    if tokenizer is None and comparator is None:
        comparator = with_open_clip_module(load_model(card, cache_dir=cache_dir), cache_dir=cache_dir)
        if arch_options.is_open_clip_module(comparator):
            tokenizer = TOKENIZERS[key] = open_clip_tokenizer(comparator.tokenizer)
    if tokenizer is None and isinstance(getattr(comparator, "tokenizer", None), OpenAITokenizer):
        tokenizer = open_clip_tokenizer(comparator.tokenizer)
    if kwargs:
        raise UnsupportedError(f"tokenizer options {sorted(kwargs)} cannot be applied to {card.alias}")
    if tokenizer is not None:
        if context_length and getattr(tokenizer, "context_length", None) != context_length:
            tokenizer = copy.copy(tokenizer)
            tokenizer.context_length = context_length
        return tokenizer
    return ComparatorTokenizer(comparator, context_length)


__getattr__, __dir__, __all__ = passthrough("factory", globals())
