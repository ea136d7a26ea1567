"""Model objects handed out by the drop-in modules.

- For an open_clip ``CLIP`` / ``CustomTextCLIP`` loaded by ``clip.load`` the returned object *is* the
  real open_clip module, re-classed to :class:`OpenAICLIP` / :class:`OpenAICustomTextCLIP`: same
  parameters, same state-dict keys (OpenAI's layout), with openai's ``forward`` (logits) and
  ``dtype``. Nothing is copied.
- Any other Comparator (HF transformers, sentence-transformers, CoCa, …) is wrapped generically,
  through the Comparator hooks only: :class:`ClipModel` (openai's API) and :class:`OpenClipModel`
  (open_clip's API).
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import Transformer
from torch import nn

from ..api import load


# ----------------------------------------------------------------------------- helpers
def image_size_of(comparator) -> int | tuple[int, int] | None:
    size = getattr(comparator, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = tuple(int(s) for s in size)
        return size[0] if size[0] == size[-1] else size
    return None if size is None else int(size)


def input_resolution_of(comparator, model: nn.Module | None = None) -> int | None:
    size = image_size_of(comparator)
    if size is None and model is not None:
        size = getattr(getattr(model, "visual", None), "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return None if size is None else int(size)


def set_input_resolution(model: nn.Module, resolution: int | None) -> None:
    """openai's towers carry ``visual.input_resolution``; open_clip's carry ``image_size``."""
    visual = getattr(model, "visual", None)
    if visual is not None and resolution is not None and not hasattr(visual, "input_resolution"):
        visual.input_resolution = int(resolution)


def with_open_clip_module(comparator: Any, **load_options: Any) -> Any:
    """``comparator``, or the same model loaded again through open_clip when clipzoo built it with its own plain
    modules (the embedded model, for a fast start): the drop-ins hand out open_clip's module, with its methods
    (``lock_image_tower``, ``transformer``, …), its state-dict keys and its tokenizer."""
    if getattr(comparator, "model_config", None) and type(getattr(comparator, "model", None)).__module__.endswith(
            ".plain_clip"):
        return load(comparator.card, model_config=comparator.model_config, **load_options)
    return comparator


# ----------------------------------------------------------------------------- open_clip modules, openai API
_LAYOUT = threading.local()  # .open_clip > 0 while open_clip's own code runs the towers in this thread


@contextlib.contextmanager
def _open_clip_layout() -> Iterator[None]:
    """open_clip's encoders call their ``Transformer`` batch-first with the mask passed: let them."""
    _LAYOUT.open_clip = getattr(_LAYOUT, "open_clip", 0) + 1
    try:
        yield
    finally:
        _LAYOUT.open_clip -= 1


class OpenAITransformer(Transformer):
    """An open_clip ``Transformer`` called as openai/CLIP's is, by code that walks openai's internals (CoOp-style
    prompt learning, dense features): ``(L, N, D)`` in and out, the text tower's causal mask applied when none is
    passed. open_clip's own encoders (inside :func:`_open_clip_layout`) call it batch-first, as before."""

    def forward(self, x: torch.Tensor, attn_mask: "torch.Tensor | None" = None) -> torch.Tensor:
        if getattr(_LAYOUT, "open_clip", 0):
            return super().forward(x, attn_mask=attn_mask)
        if attn_mask is None:
            attn_mask = self.openai_attn_mask
        return super().forward(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def _openai_transformer(transformer: Any, mask: "torch.Tensor | None") -> None:
    """Re-class an open_clip ``Transformer`` in place to :class:`OpenAITransformer` (with openai's default mask)."""
    if type(transformer) is Transformer and transformer.batch_first:
        transformer.__class__ = OpenAITransformer
        transformer.register_buffer("openai_attn_mask", mask, persistent=False)


class _OpenAIForward:
    """openai/CLIP's ``forward`` and ``dtype`` on top of an open_clip model (same parameters)."""

    @property
    def dtype(self) -> torch.dtype:
        conv = getattr(self.visual, "conv1", None)
        weight = getattr(conv, "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight.dtype
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def encode_image(self, image, normalize: bool = False):
        # openai casts the pixels to the model's dtype (fp16 on GPU)
        with _open_clip_layout():
            return super().encode_image(image.type(self.dtype), normalize=normalize)

    def encode_text(self, text, normalize: bool = False):
        with _open_clip_layout():
            return super().encode_text(text, normalize=normalize)

    def forward(self, image, text):
        """``(logits_per_image, logits_per_text)``, computed exactly as openai/CLIP's ``CLIP.forward``."""
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logit_scale = self.logit_scale.exp()
        logits_per_image = logit_scale * image_features @ text_features.t()
        if getattr(self, "logit_bias", None) is not None:
            logits_per_image = logits_per_image + self.logit_bias
        logits_per_text = logits_per_image.t()
        return logits_per_image, logits_per_text


class OpenAICLIP(_OpenAIForward, CLIP):
    """An open_clip ``CLIP`` with openai/CLIP's call convention: ``model(image, text)`` -> logits."""


class OpenAICustomTextCLIP(_OpenAIForward, CustomTextCLIP):
    """An open_clip ``CustomTextCLIP`` with openai/CLIP's call convention."""


_OPENAI_CLASSES = {CLIP: OpenAICLIP, CustomTextCLIP: OpenAICustomTextCLIP}


def as_openai_module(model: nn.Module, resolution: int | None) -> nn.Module | None:
    """Re-class an open_clip CLIP/CustomTextCLIP in place (None if it is another kind of module)."""
    cls = _OPENAI_CLASSES.get(type(model))
    if cls is None:
        return model if isinstance(model, _OpenAIForward) else None
    model.__class__ = cls
    set_input_resolution(model, resolution)
    if cls is OpenAICLIP:  # openai's internals: model.transformer, model.visual.transformer
        _openai_transformer(model.transformer, getattr(model, "attn_mask", None))
        _openai_transformer(getattr(model.visual, "transformer", None), None)
    return model


def trace_openai_module(model: nn.Module, context_length: int) -> torch.jit.ScriptModule:
    """openai's ``jit=True`` model for an open_clip module: traced as OpenAI traced its releases, with
    ``forward`` (logits), ``encode_image``, ``encode_text`` and the ``input_resolution`` /
    ``context_length`` / ``vocab_size`` tensors openai's ``load`` reads off the archive."""
    resolution = int(model.visual.input_resolution)
    text_cfg_vocab = getattr(model, "vocab_size", None) or getattr(getattr(model, "text", None), "vocab_size", 0)
    sizes = {"input_resolution": resolution, "context_length": int(context_length),
             "vocab_size": int(text_cfg_vocab or 0)}
    for name, value in sizes.items():
        model.__dict__.pop(name, None)  # open_clip keeps some as plain ints
        if name in model._buffers:
            model._buffers[name] = torch.tensor(value)
        else:
            model.register_buffer(name, torch.tensor(value), persistent=False)
    for module in model.modules():  # the masks become the trace's constants, as in OpenAI's archives: as buffers
        for name in ("attn_mask", "openai_attn_mask"):  # they were state-dict entries openai's build_model refuses
            if name in module._buffers:
                mask = module._buffers.pop(name)
                module._non_persistent_buffers_set.discard(name)
                setattr(module, name, mask)
    device = next(model.parameters()).device
    image = torch.zeros(1, 3, resolution, resolution, device=device, dtype=model.dtype)
    text = torch.zeros(1, int(context_length), dtype=torch.long, device=device)
    text[0, 0], text[0, 1] = 49406, 49407  # an empty text: SOT, EOT
    with torch.no_grad():
        traced = torch.jit.trace_module(model, {"forward": (image, text), "encode_image": (image,),
                                                "encode_text": (text,)}, check_trace=False)
    return traced.eval()


# ----------------------------------------------------------------------------- generic wrappers
class _VisualView(nn.Module):
    """``model.visual`` of a wrapped Comparator: sizes and preprocessing facts; calling it encodes pixels."""

    def __init__(self, comparator, preprocess_cfg: dict | None = None):
        super().__init__()
        self.__dict__["_comparator"] = comparator  # not a submodule: the owner registers it once
        size = image_size_of(comparator)
        self.input_resolution = input_resolution_of(comparator)
        self.image_size = (size, size) if isinstance(size, int) else size
        self.output_dim = comparator.embed_dim
        if preprocess_cfg:
            self.preprocess_cfg = dict(preprocess_cfg)
            self.image_mean = preprocess_cfg.get("mean")
            self.image_std = preprocess_cfg.get("std")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comp = self._comparator
        return comp.encode_pixels(x.to(comp.device, comp.dtype))


class _ComparatorModule(nn.Module):
    """Shared plumbing: the Comparator is the one submodule; logit parameters are found, not copied."""

    def __init__(self, comparator, preprocess_cfg: dict | None = None):
        super().__init__()
        self.comparator = comparator
        self.visual = _VisualView(comparator, preprocess_cfg)
        self.context_length = comparator.context_length
        self.embed_dim = comparator.embed_dim
        self.eval()

    @property
    def card(self):
        return self.comparator.card

    @property
    def dtype(self) -> torch.dtype:
        return self.comparator.dtype

    def _param(self, name: str, value: torch.Tensor | None, log: bool) -> torch.Tensor | None:
        """The backend model's own parameter when it holds the value (so training updates it), else a tensor."""
        if value is None:
            return None
        target = (torch.log(value) if log else value).detach()
        owner = getattr(self.comparator, "model", None)
        param = getattr(owner, name, None) if owner is not None else None
        if isinstance(param, torch.Tensor) and param.numel() == 1 and math.isclose(
                param.detach().item(), target.item(), rel_tol=1e-4, abs_tol=1e-6):
            return param
        return target

    @property
    def logit_scale(self) -> torch.Tensor:
        """The log of the logit multiplier, as openai and open_clip store it (``logit_scale.exp()`` = scale)."""
        return self._param("logit_scale", self.comparator.logit_params()[0], log=True)

    @property
    def logit_bias(self) -> torch.Tensor | None:
        return self._param("logit_bias", self.comparator.logit_params()[1], log=False)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        comp = self.comparator
        features = comp.encode_pixels(image.to(comp.device, comp.dtype))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.comparator.encode_tokens(text.to(self.comparator.device))
        return F.normalize(features, dim=-1) if normalize else features

    def extra_repr(self) -> str:
        return f"card={self.comparator.card.alias}"


class ClipModel(_ComparatorModule):
    """openai/CLIP's model API over any Comparator: ``model(image, text)`` -> (logits_per_image,
    logits_per_text); ``encode_image`` / ``encode_text`` return unnormalised features."""

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        scale, bias = self.comparator.logit_params()
        logits_per_image = scale.to(image_features.dtype) * image_features @ text_features.t()
        if bias is not None:
            logits_per_image = logits_per_image + bias.to(logits_per_image.dtype)
        return logits_per_image, logits_per_image.t()


class OpenClipModel(_ComparatorModule):
    """open_clip's model API over any Comparator: ``encode_image(x, normalize=False)``,
    ``encode_text(t, normalize=False)``, ``forward`` -> (image_features, text_features,
    logit_scale.exp()[, logit_bias]) normalised, or a dict when ``output_dict``."""

    def __init__(self, comparator, preprocess_cfg: dict | None = None, output_dict: bool = False):
        super().__init__(comparator, preprocess_cfg)
        self.output_dict = bool(output_dict)

    def get_logits(self, image: torch.Tensor, text: torch.Tensor):
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        image_logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            image_logits = image_logits + self.logit_bias
        return image_logits, image_logits.T

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> Any:
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        logit_scale = self.logit_scale.exp()
        logit_bias = self.logit_bias
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": logit_scale}
            if logit_bias is not None:
                out["logit_bias"] = logit_bias
            return out
        if logit_bias is not None:
            return image_features, text_features, logit_scale, logit_bias
        return image_features, text_features, logit_scale


# ----------------------------------------------------------------------------- preprocessing facts
def preprocess_cfg_of(comparator) -> dict:
    """open_clip's preprocess config for a Comparator: the backend's own when it has one, else read
    off its eval transform (Resize / CenterCrop / Normalize), else OpenAI's defaults at its size. In the
    types open_clip's ``create_model`` records: ``size`` a ``(height, width)`` tuple (a ViT's
    ``visual.image_size``), ``mean`` / ``std`` tuples (``PreprocessCfg``'s) — or, for an open_clip folder,
    as its ``open_clip_config.json`` writes them (lists), as open_clip's ``local-dir:`` reads them."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    own = getattr(comparator, "preprocess_config", None)
    if own:
        cfg = merge_preprocess_dict(PreprocessCfg(), dict(own))
    else:
        cfg = merge_preprocess_dict(PreprocessCfg(), {})
        cfg.update(_read_transform(comparator.transform))
    size = image_size_of(comparator)
    if size is not None and "size" not in (own or {}):
        cfg["size"] = size
    if isinstance(cfg.get("size"), (int, float)):
        cfg["size"] = (int(cfg["size"]), int(cfg["size"]))
    for key in ("size",) if _is_folder(comparator) else ("size", "mean", "std"):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    return cfg


def _is_folder(comparator) -> bool:
    path = getattr(getattr(getattr(comparator, "card", None), "source", None), "path", None)
    return bool(path) and os.path.isdir(path)


def _read_transform(transform) -> dict:
    found: dict = {}
    steps = getattr(transform, "transforms", None) or []
    for step in steps:
        name = type(step).__name__
        if name == "Normalize":
            found["mean"] = tuple(float(m) for m in step.mean)
            found["std"] = tuple(float(s) for s in step.std)
        elif name == "Resize":
            interp = getattr(step, "interpolation", None)
            value = getattr(interp, "value", None)
            if value in ("bicubic", "bilinear", "nearest"):
                found["interpolation"] = value
            if isinstance(step.size, (list, tuple)) and len(step.size) == 2:
                found["resize_mode"] = "squash"
    return found
