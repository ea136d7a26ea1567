"""Drop-in for ``open_clip`` (3.x), over every model clipzoo knows.

    from clipzoo.compat import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="laion2b_s34b_b79k")
    model, preprocess = open_clip.create_model_from_pretrained("[siglip - google - siglip-base-patch16-224]")
    tokenizer = open_clip.get_tokenizer("[siglip - google - siglip-base-patch16-224]")

How a ``model_name`` is served:

1. Anything open_clip itself knows goes straight to open_clip, with every argument as given: its
   architecture names (``ViT-B-32``, also ``ViT-B/32``) with a pretrained tag or a checkpoint path,
   ``local-dir:`` folders, and ``hf-hub:`` repos that hold an ``open_clip_config.json``. The results
   are open_clip's own, bit for bit.
2. A clipzoo alias or spec of an open_clip (model, tag) pair (``"[clip - laion - ViT-B-32/laion2b_s34b_b79k]"``,
   ``"open_clip:ViT-B-32/laion2b_s34b_b79k"``) is translated to that pair and also goes to open_clip.
3. Everything else — HF transformers and sentence-transformers models of the registry, ``hf-hub:``
   repos without an open_clip config, user-registered models, local checkpoint files and folders given
   as ``model_name`` (OpenAI TorchScript archives, state dicts, open_clip files, HF folders) — is loaded
   by ``clipzoo.load``. When that gives an open_clip module, it is returned as is (with
   ``output_dict`` and its preprocess config set); otherwise the model is wrapped in
   :class:`~clipzoo.compat._models.OpenClipModel`, which has open_clip's model API (``encode_image(x,
   normalize=False)``, ``encode_text(t, normalize=False)``, ``forward`` -> normalised features and
   ``logit_scale.exp()`` (+ ``logit_bias`` for SigLIP), ``output_dict=True``). The architecture-changing
   options (``force_*``, extra model kwargs, ``load_weights=False``, tower paths) apply only to open_clip
   architectures and raise :class:`~clipzoo.errors.UnsupportedError` here.

Listings: :func:`list_models` and :func:`list_pretrained` give open_clip's entries first, unchanged,
then each registry model that open_clip cannot name itself, under its clipzoo alias as the model name
and its publisher as the pretrained tag — ``("[siglip - google - siglip-base-patch16-224]", "google")`` —
so the usual ``for name, tag in list_pretrained(): create_model(name, pretrained=tag)`` loop covers
them. :func:`tokenize` and :func:`decode` are open_clip's own; every other open_clip attribute
(``load_checkpoint``, ``image_transform``, ``CLIP``, ``OPENAI_IMAGENET_TEMPLATES``, …) passes through.
"""
from __future__ import annotations

import copy
import os
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import open_clip as _open_clip
import torch
from open_clip import decode, tokenize  # noqa: F401 - re-exported: open_clip's own functions

from ..api import load as load_model
from ..cards import ModelCard
from ..download import hub_file
from ..errors import ModelNotCachedError, UnknownModelError, UnsupportedError
from ..registry import REGISTRY
from ._models import OpenClipModel, preprocess_cfg_of

__all__ = ["create_model", "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer",
           "tokenize", "decode", "list_models", "list_pretrained", "list_pretrained_tags_by_model",
           "list_pretrained_models_by_tag", "get_model_config", "add_model_config", "load_checkpoint",
           "image_transform", "OpenClipModel"]

_PRECISIONS = {"fp32": "fp32", "amp": "fp32", "amp_bf16": "fp32", "amp_bfloat16": "fp32", "fp16": "fp16",
               "bf16": "bf16", "pure_fp16": "fp16", "pure_bf16": "bf16"}

# tokenizers of models loaded through clipzoo, so get_tokenizer need not load them again
_TOKENIZERS: dict[str, Any] = {}
_COMPARATORS: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()


def __getattr__(name: str):
    """Every other open_clip attribute passes through (``load_checkpoint``, ``CLIP``, ``image_transform`` …)."""
    try:
        return getattr(_open_clip, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(dir(_open_clip)))


# --------------------------------------------------------------------------- routing
@dataclass
class _Route:
    native: bool
    model_name: str = ""
    pretrained: str | None = None
    card: ModelCard | None = None


def _is_open_clip_name(name: str) -> bool:
    return _open_clip.get_model_config(name.replace("/", "-")) is not None


def _hub_has_open_clip_config(repo: str, cache_dir) -> bool | None:
    """True / False when known (the config file is cached, or the repo is cached without it); None if unknown."""
    try:
        hub_file(repo, "open_clip_config.json", cache_dir)
        return True
    except ModelNotCachedError as exc:
        if getattr(exc, "missing_file", False):
            return False
    try:
        hub_file(repo, "config.json", cache_dir)
        return False
    except ModelNotCachedError:
        return None


def _registry_only(card: ModelCard) -> bool:
    """A registry model that open_clip cannot name itself (not an open_clip pair, not OpenAI's nine)."""
    return not card.source.open_clip and not card.config.get("openai")


def _route(model_name: Any, pretrained: str | None, cache_dir=None) -> _Route:
    if isinstance(model_name, os.PathLike):
        model_name = os.fspath(model_name)
    if isinstance(model_name, ModelCard):
        card = model_name
    else:
        if not isinstance(model_name, str):
            raise TypeError(f"model_name must be a string, got {type(model_name).__name__}")
        if model_name.startswith("local-dir:"):
            return _Route(True, model_name, pretrained)
        if model_name.startswith("hf-hub:"):
            repo = model_name[len("hf-hub:"):].strip("/")
            has = _hub_has_open_clip_config(repo, cache_dir)
            if has is False:
                return _Route(False, card=REGISTRY.resolve(model_name))
            if has is None:  # not cached at all: a registry model of another backend goes to clipzoo
                cards = [c for c in REGISTRY if c.source.hf_repo and c.source.hf_repo.lower() == repo.lower()]
                if cards and cards[0].backend not in ("open_clip", "auto"):
                    return _Route(False, card=cards[0])
            return _Route(True, model_name, pretrained)
        if _is_open_clip_name(model_name):
            return _Route(True, model_name, pretrained)
        try:
            card = REGISTRY.resolve(model_name)
        except UnknownModelError as exc:
            raise _NotFound(f"Model config for '{model_name}' not found in open_clip's built-ins nor in "
                            f"clipzoo's registry: {exc}") from None
    if card.source.open_clip:
        name, tag = card.source.open_clip
        if pretrained and tag and pretrained != tag:
            raise UnsupportedError(f"{card.alias} names open_clip's {name}/{tag}; pretrained={pretrained!r} "
                                   "contradicts it — pass the open_clip name and tag instead")
        return _Route(True, name, pretrained or tag or None, card)
    if pretrained and pretrained.lower() != card.publisher.lower():
        raise UnsupportedError(f"{card.alias} names its weights already; pretrained={pretrained!r} does not "
                               f"apply to it (leave it out, or pass {card.publisher!r} as list_pretrained() does)")
    return _Route(False, card=card)


class _NotFound(UnknownModelError, RuntimeError):
    """open_clip raises RuntimeError for an unknown model name; this is both that and clipzoo's error."""


# --------------------------------------------------------------------------- loading through clipzoo
_DEFAULTS = dict(load_weights=True, jit=False, force_quick_gelu=False, force_custom_text=False,
                 force_patch_dropout=None, force_image_size=None, force_preprocess_cfg=None,
                 force_context_length=None, pretrained_image=False, pretrained_text=True,
                 pretrained_image_path=None, pretrained_text_path=None, require_pretrained=False,
                 weights_only=True)


def _check_options(card: ModelCard, options: dict[str, Any], model_kwargs: dict[str, Any]) -> None:
    unsupported = sorted(k for k, v in options.items() if k in _DEFAULTS and k not in ("jit", "require_pretrained",
                                                                                          "weights_only")
                         and v != _DEFAULTS[k] and not (k == "force_preprocess_cfg" and not v))
    unsupported += sorted(model_kwargs)
    if unsupported:
        raise UnsupportedError(f"{', '.join(unsupported)} cannot be applied to {card.alias}: it is loaded by "
                               f"clipzoo ({card.backend} backend), not built from an open_clip config; "
                               "these options apply to open_clip architectures only")
    if options.get("jit"):
        warnings.warn(f"jit=True: {card.alias} is not scripted (it is not an open_clip architecture); "
                      "returning the eager model", stacklevel=4)


def _load_clipzoo(card: ModelCard, precision: str, device, cache_dir, weights_only: bool, output_dict):
    try:
        zoo_precision = _PRECISIONS[precision]
    except KeyError:
        raise UnsupportedError(f"unknown precision {precision!r}; use one of {', '.join(_PRECISIONS)}") from None
    comparator = load_model(card, device=str(device), precision=zoo_precision, cache_dir=cache_dir,
                              trust_pickle=not weights_only)
    inner = getattr(comparator, "model", None)
    key = card.alias.lower()
    if isinstance(inner, (_open_clip.CLIP, _open_clip.CustomTextCLIP, _open_clip.CoCa)) \
            and getattr(comparator, "tokenizer", None) is not None:
        model = inner
        pp_cfg = preprocess_cfg_of(comparator)
        if not getattr(model.visual, "preprocess_cfg", None):
            _open_clip.set_model_preprocess_cfg(model, pp_cfg)
        if output_dict and hasattr(model, "output_dict"):
            model.output_dict = True
        _TOKENIZERS[key] = comparator.tokenizer
    else:
        model = OpenClipModel(comparator, preprocess_cfg_of(comparator), output_dict=bool(output_dict))
        _COMPARATORS[key] = comparator
    return model, comparator


def _transforms(model, comparator, overrides: dict[str, Any], aug_cfg=None, train: bool = True):
    """(train, val) transforms: open_clip's ``image_transform_v2`` from the model's preprocess config;
    for a wrapped Comparator without overrides, val is the backend's own eval transform."""
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    cfg = merge_preprocess_dict(dict(model.visual.preprocess_cfg), overrides)
    pp = PreprocessCfg(**cfg)
    if isinstance(model, OpenClipModel) and not overrides:
        val = comparator.transform
    else:
        val = image_transform_v2(pp, is_train=False)
    return (image_transform_v2(pp, is_train=True, aug_cfg=aug_cfg) if train else None), val


def _pp_overrides(image_mean, image_std, image_interpolation, image_resize_mode) -> dict[str, Any]:
    from open_clip.transform import merge_preprocess_kwargs

    return merge_preprocess_kwargs({}, mean=image_mean, std=image_std, interpolation=image_interpolation,
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
    """open_clip's ``create_model`` for every registry model (see the module docstring for the routing)."""
    options = dict(load_weights=load_weights, jit=jit, force_quick_gelu=force_quick_gelu,
                   force_custom_text=force_custom_text, force_patch_dropout=force_patch_dropout,
                   force_image_size=force_image_size, force_preprocess_cfg=force_preprocess_cfg,
                   force_context_length=force_context_length, pretrained_image=pretrained_image,
                   pretrained_text=pretrained_text, pretrained_image_path=pretrained_image_path,
                   pretrained_text_path=pretrained_text_path, cache_dir=cache_dir, output_dict=output_dict,
                   require_pretrained=require_pretrained, weights_only=weights_only)
    route = _route(model_name, pretrained, cache_dir)
    if route.native:
        return _open_clip.create_model(route.model_name, route.pretrained, precision=precision, device=device,
                                       **options, **model_kwargs)
    _check_options(route.card, options, model_kwargs)
    model, _ = _load_clipzoo(route.card, precision, device, cache_dir, weights_only, output_dict)
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
        aug_cfg: dict[str, Any] | "_open_clip.AugmentationCfg" | None = None,
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
    route = _route(model_name, pretrained, cache_dir)
    if route.native:
        return _open_clip.create_model_and_transforms(
            route.model_name, route.pretrained, load_weights=load_weights, precision=precision, device=device,
            jit=jit, force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
            force_patch_dropout=force_patch_dropout, force_image_size=force_image_size,
            force_context_length=force_context_length, image_mean=image_mean, image_std=image_std,
            image_interpolation=image_interpolation, image_resize_mode=image_resize_mode, aug_cfg=aug_cfg,
            pretrained_image=pretrained_image, pretrained_text=pretrained_text,
            pretrained_image_path=pretrained_image_path, pretrained_text_path=pretrained_text_path,
            cache_dir=cache_dir, output_dict=output_dict, weights_only=weights_only, **model_kwargs)
    options = dict(load_weights=load_weights, jit=jit, force_quick_gelu=force_quick_gelu,
                   force_custom_text=force_custom_text, force_patch_dropout=force_patch_dropout,
                   force_image_size=force_image_size, force_context_length=force_context_length,
                   pretrained_image=pretrained_image, pretrained_text=pretrained_text,
                   pretrained_image_path=pretrained_image_path, pretrained_text_path=pretrained_text_path)
    _check_options(route.card, options, model_kwargs)
    model, comparator = _load_clipzoo(route.card, precision, device, cache_dir, weights_only, output_dict)
    train, val = _transforms(model, comparator, _pp_overrides(image_mean, image_std, image_interpolation,
                                                              image_resize_mode), aug_cfg)
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
    route = _route(model_name, pretrained, cache_dir)
    if route.native:
        return _open_clip.create_model_from_pretrained(
            route.model_name, route.pretrained, precision=precision, device=device, jit=jit,
            force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
            force_image_size=force_image_size, force_context_length=force_context_length,
            image_mean=image_mean, image_std=image_std, image_interpolation=image_interpolation,
            image_resize_mode=image_resize_mode, return_transform=return_transform, cache_dir=cache_dir,
            weights_only=weights_only, **model_kwargs)
    options = dict(jit=jit, force_quick_gelu=force_quick_gelu, force_custom_text=force_custom_text,
                   force_image_size=force_image_size, force_context_length=force_context_length)
    _check_options(route.card, options, model_kwargs)
    model, comparator = _load_clipzoo(route.card, precision, device, cache_dir, weights_only, None)
    if not return_transform:
        return model
    _, val = _transforms(model, comparator, _pp_overrides(image_mean, image_std, image_interpolation,
                                                          image_resize_mode), train=False)
    return model, val


# --------------------------------------------------------------------------- tokenizers
class ComparatorTokenizer:
    """open_clip's tokenizer call convention over a Comparator's ``tokenize``: pads to the model's
    context and truncates a too-long text, as open_clip's tokenizers do."""

    def __init__(self, comparator, context_length: int | None = None):
        self.comparator = comparator
        self.context_length = context_length or comparator.context_length

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        wanted = context_length or self.context_length
        if wanted and self.comparator.context_length and wanted != self.comparator.context_length:
            raise UnsupportedError(f"{self.comparator.card.alias} tokenizes to {self.comparator.context_length} "
                                   f"tokens; context_length={wanted} does not apply to it")
        return self.comparator.tokenize([texts] if isinstance(texts, str) else list(texts), truncate=True)


def get_tokenizer(
        model_name: str = '',
        context_length: int | None = None,
        cache_dir: str | None = None,
        **kwargs,
):
    """open_clip's ``get_tokenizer`` for every registry model. A model served by clipzoo reuses the
    tokenizer of the last one created here, and is loaded once to build it otherwise."""
    if not model_name:
        return _open_clip.get_tokenizer(model_name, context_length=context_length, cache_dir=cache_dir, **kwargs)
    route = _route(model_name, None, cache_dir)
    if route.native:
        return _open_clip.get_tokenizer(route.model_name, context_length=context_length, cache_dir=cache_dir,
                                        **kwargs)
    key = route.card.alias.lower()
    tokenizer = _TOKENIZERS.get(key)
    comparator = _COMPARATORS.get(key)
    if tokenizer is None and comparator is None:
        comparator = load_model(route.card, cache_dir=cache_dir)
        tokenizer = getattr(comparator, "tokenizer", None) if isinstance(
            getattr(comparator, "model", None), (_open_clip.CLIP, _open_clip.CustomTextCLIP, _open_clip.CoCa)) else None
        if tokenizer is not None:
            _TOKENIZERS[key] = tokenizer
    if tokenizer is not None:
        if kwargs:
            raise UnsupportedError(f"tokenizer options {sorted(kwargs)} cannot be applied to {route.card.alias}")
        if context_length and getattr(tokenizer, "context_length", None) != context_length:
            tokenizer = copy.copy(tokenizer)
            tokenizer.context_length = context_length
        return tokenizer
    if kwargs:
        raise UnsupportedError(f"tokenizer options {sorted(kwargs)} cannot be applied to {route.card.alias}")
    return ComparatorTokenizer(comparator, context_length)


# --------------------------------------------------------------------------- listings
def _extra_cards() -> list[ModelCard]:
    return [c for c in REGISTRY if _registry_only(c)]


def list_models() -> list[str]:
    """open_clip's architecture names, then the alias of every registry model open_clip cannot name."""
    return list(_open_clip.list_models()) + [c.alias for c in _extra_cards()]


def list_pretrained(as_str: bool = False) -> list[tuple[str, str] | str]:
    """open_clip's (model, tag) pairs, then (alias, publisher) for every other registry model."""
    extra = [(c.alias, c.publisher) for c in _extra_cards()]
    return list(_open_clip.list_pretrained(as_str)) + [":".join(p) if as_str else p for p in extra]


def list_pretrained_tags_by_model(model: str) -> list[str]:
    """open_clip's tags of an architecture; for a registry alias, its publisher."""
    tags = list(_open_clip.list_pretrained_tags_by_model(model))
    if tags:
        return tags
    key = model.strip().lower()
    return [c.publisher for c in _extra_cards() if c.alias.lower() == key]


def list_pretrained_models_by_tag(tag: str) -> list[str]:
    """open_clip's architectures with that tag, then the registry aliases whose publisher it is."""
    key = tag.strip().lower()
    return list(_open_clip.list_pretrained_models_by_tag(tag)) + [c.alias for c in _extra_cards()
                                                                  if c.publisher.lower() == key]


get_model_config = _open_clip.get_model_config
add_model_config = _open_clip.add_model_config
load_checkpoint = _open_clip.load_checkpoint
image_transform = _open_clip.image_transform
