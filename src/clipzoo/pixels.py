"""Differentiable image preprocessing: [0, 1] images of any size -> a model's normalised pixels, in torch.

The rule (see docs/ensembles.md): ``Comparator.encode_image`` keeps treating a float tensor as pixels
*already preprocessed* for that model (normalised, at its size). Images in [0, 1] of any size go through
:meth:`Comparator.encode_image01` (or :func:`preprocess01`), which does the model's own eval preprocessing
in torch — resize (antialiased bicubic / bilinear, as the model's transform says), centre crop, normalise
with the model's mean and std — so gradients flow from a score back to the pixels.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .constants import OPENAI_MEAN, OPENAI_STD, PIXEL01_SLACK
from .errors import BadImageError
from .image_bytes import aspect_box
from .inputs import check_finite_pixels

_SIZE_KEYS = ("height", "width", "shortest_edge", "longest_edge")
_PIL_RESAMPLE = {0: "nearest", 1: "bilinear", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}


@dataclass(frozen=True)
class PixelConfig:
    """What a model's eval transform does: resize the shortest side (or ``squash`` to the size), centre
    crop to ``size`` (H, W), normalise with ``mean`` / ``std``. ``resize_to``: what the resize makes when that
    is not ``size`` (an HF processor whose ``size`` is larger than its ``crop_size``) — (H, W) for ``squash``,
    the shortest side's length twice for ``shortest``; None: ``size``."""

    size: tuple[int, int]
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    resize_to: tuple[int, int] | None = None


def size_fields(size: Any) -> dict[str, Any] | None:
    """An HF image processor's size as a plain dict of its set entries (``height``, ``width``, ``shortest_edge``):
    from a dict, any Mapping, or transformers' ``SizeDict`` (which is neither — ``isinstance(size, dict)`` missed it,
    and a SigLIP model's [0, 1] path centre-cropped what its processor squashes); None for anything else."""
    if isinstance(size, Mapping):
        items = dict(size.items())
    elif any(hasattr(size, key) for key in _SIZE_KEYS):
        items = {key: getattr(size, key, None) for key in _SIZE_KEYS}
    else:
        return None
    return {key: value for key, value in items.items() if value is not None}


def size_pair(size: Any) -> tuple[int, int] | None:
    """(H, W) of a size given as an int, a sequence, or an HF size ({height, width}, {shortest_edge}: any
    Mapping or ``SizeDict``); None when it says neither."""
    if size is None:
        return None
    fields = size_fields(size)
    if fields is not None:
        if "height" in fields and "width" in fields:
            return int(fields["height"]), int(fields["width"])
        if "shortest_edge" in fields:
            return int(fields["shortest_edge"]), int(fields["shortest_edge"])
        return None
    if isinstance(size, (list, tuple)):
        return (int(size[0]), int(size[-1]))
    return int(size), int(size)


def pixel_config(comparator) -> PixelConfig:
    """The preprocessing facts of a Comparator: its ``preprocess_config`` (open_clip, composite), else read
    off its torchvision transform or HF image processor, else OpenAI's mean/std at its ``image_size``."""
    cached = getattr(comparator, "_pixel_config", None)
    if cached is not None:
        return cached
    tower = getattr(comparator, "image_tower", None)
    if tower is not None and tower is not comparator and hasattr(tower, "image_size"):
        cfg = pixel_config(tower)
    else:
        cfg = _pixel_config(comparator)
    try:
        comparator.__dict__["_pixel_config"] = cfg
    except (AttributeError, TypeError):  # pragma: no cover
        pass
    return cfg


def _pixel_config(comparator) -> PixelConfig:
    size = size_pair(getattr(comparator, "image_size", None))
    found: dict[str, Any] = {}
    own = getattr(comparator, "preprocess_config", None)
    if own:
        for key in ("mean", "std", "interpolation", "resize_mode"):
            if own.get(key) is not None:
                found[key] = own[key]
        size = size or size_pair(own.get("size"))
    transform = getattr(comparator, "transform", None)
    steps = getattr(transform, "transforms", None) or []
    for step in steps:
        name = type(step).__name__
        if name == "Normalize" and "mean" not in found:
            found["mean"], found["std"] = step.mean, step.std
        elif name == "Resize" and "interpolation" not in found:
            value = getattr(getattr(step, "interpolation", None), "value", None)
            if value in ("bicubic", "bilinear", "nearest"):
                found["interpolation"] = value
            if isinstance(step.size, (list, tuple)) and len(step.size) == 2:
                found.setdefault("resize_mode", "squash")
        elif name == "CenterCrop" and size is None:
            size = size_pair(step.size)
    processor = getattr(transform, "image_processor", None)
    if processor is not None:
        made = _processor_facts(processor, found)
        size = size or made
    if size is None:
        raise BadImageError(f"{comparator.card.alias} has no known input size, so [0, 1] image tensors "
                            "cannot be resized for it")
    interp = str(found.get("interpolation", "bicubic")).lower()
    mode = str(found.get("resize_mode", "shortest")).lower()
    resize_to = found.get("resize_to")
    return PixelConfig(size=size, mean=_three(found.get("mean", OPENAI_MEAN)),
                       std=_three(found.get("std", OPENAI_STD)),
                       interpolation=interp if interp in ("bicubic", "bilinear", "nearest") else "bicubic",
                       resize_mode=mode if mode in ("shortest", "squash") else "shortest",
                       resize_to=None if resize_to == size else resize_to)


def processor_preprocess(processor: Any) -> dict[str, Any]:
    """What an HF image (or video) processor does, as open_clip's preprocessing config: ``size`` (H, W) of what
    it hands the model, and ``mean`` / ``std`` on [0, 1] pixels, ``interpolation``, ``resize_mode`` where it says
    them — the one reading of a processor behind the [0, 1] path, conversion to open_clip and video frame sizes."""
    found: dict[str, Any] = {}
    size = _processor_facts(processor, found)
    found.pop("resize_to", None)
    return {"size": size, **found} if size is not None else found


def _processor_facts(processor: Any, found: dict[str, Any]) -> tuple[int, int] | None:
    """What an HF image processor does, put into ``found`` where not known already; returns its output size.

    ``size`` {height, width} resizes straight to it (``squash``: SigLIP, BLIP, ViT), {shortest_edge} keeps the
    aspect ratio (CLIP); ``crop_size`` is then cut from the centre when ``do_center_crop``."""
    if "mean" not in found:
        found.update(_folded_mean_std(processor))
    resample = getattr(processor, "resample", None)
    if resample is not None and "interpolation" not in found:
        found["interpolation"] = _PIL_RESAMPLE.get(int(resample), "bicubic")
    fields = size_fields(getattr(processor, "size", None)) or {}
    resize = size_pair(fields) if fields else None
    mode = "squash" if "height" in fields and "width" in fields else "shortest" if "shortest_edge" in fields else None
    if mode is not None:
        found.setdefault("resize_mode", mode)
    crop = size_pair(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    if crop is not None and resize is not None and found.get("resize_mode") == mode:
        found.setdefault("resize_to", resize)
    return crop or resize


def _folded_mean_std(processor: Any) -> dict[str, list[float]]:
    """The mean and std on [0, 1] pixels that give what ``processor`` hands the model, ``(x·255·factor − offset −
    mean) / std`` — its ``rescale_factor`` (1/255 unless it says otherwise), ``do_normalize`` (mean 0, std 1 without)
    and EfficientNet's (ALIGN's) ``rescale_offset`` (1) and ``include_top`` (a second division by the std) folded
    into one affine map; {} when it names no mean."""
    if getattr(processor, "do_normalize", True) is False:
        mean, std = [0.0] * 3, [1.0] * 3
    elif getattr(processor, "image_mean", None) is not None:
        mean, std = _three(processor.image_mean), _three(processor.image_std)
    else:
        return {}
    if getattr(processor, "include_top", False) is True and getattr(processor, "image_std", None) is not None:
        std = [s * t for s, t in zip(std, _three(processor.image_std))]
    rescale = getattr(processor, "do_rescale", True) is not False
    scale = 255.0 * float(getattr(processor, "rescale_factor", None) or 1 / 255) if rescale else 255.0
    offset = 1.0 if rescale and getattr(processor, "rescale_offset", False) is True else 0.0
    if math.isclose(scale, 1.0) and offset == 0.0:
        return {"mean": mean, "std": std}
    return {"mean": [(offset + m) / scale for m in mean], "std": [s / scale for s in std]}


def _three(values: Any) -> tuple[float, float, float]:
    """Per-channel values: a sequence of three, or one number for all three."""
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    return tuple(float(v) for v in values)


def check_image01(x: Any) -> torch.Tensor:
    """A float image tensor (3, H, W) or (N, 3, H, W) -> (N, 3, H, W); anything else raises BadImageError."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise BadImageError(f"expected a float image tensor with values in [0, 1], got "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise BadImageError(f"a [0, 1] image tensor must be (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    if min(x.shape[0], x.shape[2], x.shape[3]) < 1:
        raise BadImageError(f"a [0, 1] image tensor {tuple(x.shape)} holds no pixels")
    check_finite_pixels(x)
    check_pixel_range(x)
    return x


def check_pixel_range(x: torch.Tensor) -> None:
    """A :class:`BadImageError` for pixels far outside [0, 1]: a 0–255 image passed as float reached the network
    at ±760 at the model's size and was clamped to white at any other; a [-1, 1] one was read as dark."""
    lo, hi = (float(v) for v in x.detach().aminmax())
    if lo >= -PIXEL01_SLACK and hi <= 1 + PIXEL01_SLACK:
        return
    hint = ("; a 0–255 image is x / 255" if hi > 2 else
            "; a [-1, 1] image (a diffusion decoder's output) is (x + 1) / 2" if lo >= -1.5 else "")
    raise BadImageError(f"float image pixels must lie in [0, 1]; these span [{lo:.4g}, {hi:.4g}]{hint}")


def resize(x: torch.Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Differentiable antialiased resize of (N, 3, H, W) to ``size``; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if interpolation == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return x
    if h < th or w < tw:  # as torchvision's CenterCrop: pad with zeros
        ph, pw = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top:top + th, left:left + tw]


def preprocess01(x01: torch.Tensor, config: PixelConfig) -> torch.Tensor:
    """[0, 1] images (N, 3, H, W) of any size -> normalised model pixels (N, 3, *config.size), in torch.

    Mirrors the eval transforms: ``shortest`` resizes the shorter side to the crop size (keeping the aspect
    ratio) then centre-crops; ``squash`` resizes straight to the size. Resized values are clamped to
    [0, 1] as PIL's uint8 resize does.
    """
    x = check_image01(x01).float()
    box = aspect_box(x.shape[-1], x.shape[-2])  # the central 32 : 1 part, as every decode keeps: the centre crop
    if box is not None and config.resize_mode != "squash":  # below takes the same pixels (a squash takes all), and
        x = x[..., box[1]:box[3], box[0]:box[2]]           # a 1 × 100,000 image took gigabytes
    th, tw = config.size
    h, w = x.shape[-2:]
    if config.resize_mode == "squash":
        target = config.resize_to or (th, tw)
    else:
        side = max(config.resize_to or (th, tw))  # open_clip / torchvision: Resize(int) on the shortest side
        target = (side, int(side * w / h)) if h <= w else (int(side * h / w), side)
    if tuple(target) != (h, w):
        x = resize(x, target, config.interpolation).clamp(0, 1)
    x = center_crop(x, (th, tw))
    mean = torch.tensor(config.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
