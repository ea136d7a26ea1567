"""open_clip backend: every open_clip architecture, OpenAI's checkpoints, open_clip files and hub folders.

How a card becomes a model:
1. a *plan*: the model config (open_clip's dict), the preprocessing config, and where the weights are
   (a state dict read safely by :mod:`clipzoo.checkpoints`, or none for untrained weights);
2. the model is built from the config, exactly as ``open_clip.create_model`` builds it;
3. the weights go through open_clip's own conversions (old layouts, position-embedding resizing) and
   are loaded strictly, with an error naming missing and unexpected keys.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..cards import ModelCard
from ..checkpoints import check_built_size, load_into, read_json, read_state_dict
from ..comparator import Comparator, resolve_dtype
from ..constants import DEFAULT_CONTEXT_LENGTH, OPENAI_MEAN, OPENAI_STD
from ..errors import (
    ArchitectureMismatchError,
    CheckpointError,
    ClipzooError,
    ModelNotCachedError,
    one_line,
)
from ..models.open_clip_parts import eval_transform
from ..models.padding_free import encode_text_padding_free, trimmable
from ..models.pil_transform import PilEvalTransform, supports_transform
from ..models.plain_clip import build_plain_clip, supports
from ..models.tokenize import tokenize_checked
from ..tokenizers import OpenAITokenizer, OpenClipTokenizer
from .open_clip_caption import CaptionMixin
from .open_clip_plan import Plan, make_plan


class OpenClipComparator(CaptionMixin, Comparator):
    """A Comparator over an open_clip ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` module."""

    def __init__(self, card: ModelCard, model: torch.nn.Module, *, transform, tokenizer, precision: str,
                 model_name: str | None, model_config: dict | None, preprocess_config: dict):
        visual = model.visual
        size = getattr(visual, "image_size", None) or preprocess_config.get("size")
        if isinstance(size, (list, tuple)):
            size = tuple(size) if size[0] != size[-1] else int(size[0])
        embed_dim = _embed_dim(model, model_config)
        super().__init__(card, model, transform=transform, embed_dim=embed_dim, image_size=size,
                         context_length=getattr(tokenizer, "context_length", None)
                         or getattr(model, "context_length", DEFAULT_CONTEXT_LENGTH))
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_config = model_config
        self.preprocess_config = preprocess_config
        self.precision = precision
        self._input_dtype = resolve_dtype(precision) if precision in ("fp16", "bf16", "fp32") else torch.float32
        self.probability = "sigmoid" if getattr(model, "logit_bias", None) is not None else "softmax"

    @property
    def dtype(self) -> torch.dtype:
        return self._input_dtype

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=False)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if trimmable(self.model):
            return encode_text_padding_free(self.model, tokens)
        return self.model.encode_text(tokens, normalize=False)

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        return tokenize_checked(self.tokenizer, texts, self.context_length, truncate)

    def logit_params(self):
        scale = self.model.logit_scale.exp().reshape(())
        bias = getattr(self.model, "logit_bias", None)
        return scale, (None if bias is None else bias.reshape(()))


def _embed_dim(model, cfg) -> int:
    if cfg and "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    return int(getattr(model.visual, "output_dim", 0) or model.visual.proj.shape[1])


# --------------------------------------------------------------------------- entry point
def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, model_name: str | None = None, model_config: dict | None = None,
         **kwargs: Any) -> OpenClipComparator:
    if kwargs:
        raise ClipzooError(f"unknown option(s) for an open_clip model: {', '.join(sorted(kwargs))}")
    resolve_dtype(precision)
    if card.config.get("embedded") and model_name is None and model_config is None and precision == "fp32":
        plain = load_plain(card, device)
        if plain is not None:
            return plain
    import open_clip

    plan = make_plan(card, cache_dir=cache_dir, trust_pickle=trust_pickle,
                     model_name=model_name or card.config.get("model_name"), model_config=model_config)
    check_config_fits(plan)
    with config_errors(plan.source):
        model = build(plan, precision)
    if plan.state_dict is not None:
        load_weights(model, plan.state_dict, plan.source)
    elif plan.state_dict is None:
        warnings.warn(f"{card.alias}: no pretrained weights; the model has random (untrained) weights", stacklevel=2)
    from open_clip.factory import _set_model_device_and_precision

    is_timm = "timm_model_name" in (plan.model_cfg or {}).get("vision_cfg", {})
    model.eval()
    _set_model_device_and_precision(model, torch.device(device), precision, is_timm)
    model.eval()
    preprocess_cfg = dict(plan.preprocess_cfg)
    preprocess_cfg.setdefault("size", model.visual.image_size)
    open_clip.set_model_preprocess_cfg(model, preprocess_cfg)
    with config_errors(plan.source, "preprocessing config"):
        transform = eval_transform(preprocess_cfg)
    tokenizer = make_tokenizer(plan, cache_dir)
    return OpenClipComparator(card, model, transform=transform, tokenizer=tokenizer, precision=precision,
                              model_name=plan.model_name, model_config=plan.model_cfg,
                              preprocess_config=preprocess_cfg)


def load_plain(card: ModelCard, device: str = "cpu") -> "OpenClipComparator | None":
    """The embedded model's open_clip folder built without open_clip or torchvision (the same network, weights,
    transform and token ids — open_clip's ``SimpleTokenizer``, as :class:`~clipzoo.tokenizers.OpenClipTokenizer`;
    :mod:`clipzoo.models.plain_clip`), so that loading it imports torch alone; None when the folder's config is
    not one those modules build."""
    folder = Path(card.source.path or "")
    config = read_json(folder / "open_clip_config.json")
    model_cfg = config.get("model_cfg")
    pre = {"size": (model_cfg or {}).get("vision_cfg", {}).get("image_size"), "mode": "RGB", "mean": list(OPENAI_MEAN),
           "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0,
           **config.get("preprocess_cfg", {})}
    if not supports(model_cfg) or not supports_transform(pre):
        return None
    sd, _ = read_state_dict(folder / "open_clip_model.safetensors")
    model = build_plain_clip(model_cfg, sd, str(folder)).to(torch.device(device))
    model.visual.preprocess_cfg = dict(pre)
    tokenizer = OpenClipTokenizer(context_length=model.context_length)  # open_clip's for this folder, as bf16's
    return OpenClipComparator(card, model, transform=PilEvalTransform.from_config(pre), tokenizer=tokenizer,
                              precision="fp32", model_name=None, model_config=model_cfg, preprocess_config=pre)


# --------------------------------------------------------------------------- building
def build(plan: Plan, precision: str = "fp32") -> torch.nn.Module:
    """Build the module of a plan, as ``open_clip.create_model`` would (weights loaded separately)."""
    from open_clip import CLIP, CoCa, CustomTextCLIP, get_cast_dtype

    cfg = copy.deepcopy(plan.model_cfg)
    vision_cfg, text_cfg = cfg.setdefault("vision_cfg", {}), cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    is_hf_text = "hf_model_name" in text_cfg
    if is_hf_text:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or is_hf_text
    cls = CoCa if "multimodal_cfg" in cfg else CustomTextCLIP if custom_text else CLIP
    try:
        return cls(**cfg, cast_dtype=get_cast_dtype(precision))
    except OSError as exc:  # an HF text tower whose config is not cached
        raise ModelNotCachedError(f"building {plan.model_name or plan.source} needs the HF config of "
                                  f"{text_cfg.get('hf_model_name')!r}, which is not cached ({exc})") from None


@contextlib.contextmanager
def config_errors(source: str, what: str = "model config") -> Iterator[None]:
    """open_clip's and torch's errors on a config of wrong types or values (``layers: "2"``, ``embed_dim: -1``,
    ``size: "big"``: a TypeError, a RuntimeError, a ValueError from deep inside) as one CheckpointError."""
    try:
        yield
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"{source}: its {what} cannot be built ({type(exc).__name__}: {one_line(exc, 200)}); "
                              "check the config's values") from None


def check_config_fits(plan: Plan) -> None:
    """A config that builds far more parameters than the weights hold is refused before anything is allocated
    (the model built on the meta device): a 13 MB file whose config claimed a 100-layer 2048-wide tower allocated
    gigabytes (a terabyte for ``width: 1e6``) before the weights were compared."""
    if plan.state_dict is None:
        return
    try:
        with torch.device("meta"):
            built = sum(p.numel() for p in build(plan, "fp32").parameters())
    except Exception:  # noqa: BLE001 - a config the meta device cannot build: the real build says what is wrong
        return
    held = sum(v.numel() for v in plan.state_dict.values())
    config = f"model config {plan.model_name!r}" if plan.model_name else "its config"
    check_built_size(plan.source, config, built, held)


def load_weights(model: torch.nn.Module, sd: dict, source: str) -> None:
    """open_clip's conversions (third-party layouts, old text layout, scalar/1-d logit params,
    position-embedding resizing), then a strict load with a clear mismatch error."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    sd = dict(sd)
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    try:
        sd = convert_state_dict(model, sd)
    except Exception:  # noqa: BLE001 - a failed detection leaves the dict as it is
        pass
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for name in ("logit_scale", "logit_bias"):
        param = getattr(model, name, None)
        if name in sd and param is not None and param.ndim != sd[name].ndim:
            sd[name] = sd[name].reshape(param.shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None and "logit_scale" in sd:
        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    try:
        resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
    except Exception:  # noqa: BLE001 - a shape problem is reported by the strict load below
        pass
    try:
        load_into(model, sd, source)
    except RuntimeError as exc:
        if isinstance(exc, ClipzooError):
            raise
        raise ArchitectureMismatchError(f"{source} does not fit the architecture: {_size_mismatch(exc)}; "
                                        "pick the model config that matches the checkpoint (model_name=…)") from None


def _size_mismatch(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
    return "; ".join(lines[:4]) + (" …" if len(lines) > 4 else "") if lines else str(exc).splitlines()[0]


def make_tokenizer(plan: Plan, cache_dir=None):
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = (plan.model_cfg or {}).get("text_cfg", {})
    context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    if plan.openai_tokenizer:
        return OpenAITokenizer(context_length=context_length)
    try:
        if plan.model_name and open_clip.get_model_config(plan.model_name) is not None:
            return open_clip.get_tokenizer(plan.model_name, cache_dir=cache_dir)
        kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
        if text_cfg.get("hf_tokenizer_name"):
            return HFTokenizer(plan.tokenizer_dir or text_cfg["hf_tokenizer_name"], context_length=context_length,
                               cache_dir=cache_dir, tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
        return SimpleTokenizer(context_length=context_length, **kwargs)
    except OSError as exc:
        raise ModelNotCachedError(f"the tokenizer of {plan.model_name or plan.source} is not cached and the hub "
                                  f"cannot be reached ({str(exc).splitlines()[0]})") from None
