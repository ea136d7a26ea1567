"""Guidance for CLIP-guided image generation: random cutouts and the spherical-distance loss.

:func:`cutouts` makes random crops of varied size for guidance (as VQGAN+CLIP and Disco Diffusion do).
The differentiable preprocessing they feed (:func:`preprocess01`, :class:`PixelConfig`) lives in
:mod:`clipzoo.pixels`, beside the Comparator that uses it, and is re-exported here.
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F

from .errors import BadOptionError
from .pixels import PixelConfig, check_image01, pixel_config, preprocess01, resize, size_pair

__all__ = ["PixelConfig", "check_image01", "pixel_config", "preprocess01", "cutouts", "spherical_distance",
           "TextFeatureCache"]

TEXT_CACHE_PROMPTS = 4096  # (member, prompt) text features kept between guidance steps; the least recent go first


def cutouts(x01: torch.Tensor, n: int, size: int | tuple[int, int], min_frac: float = 0.5,
            augment: bool = False, generator: torch.Generator | None = None,
            interpolation: str = "bilinear") -> torch.Tensor:
    """``n`` random square crops of each image, each resized to ``size``: (n * N, 3, *size), crop-major
    (rows ``k * N + i`` are crop ``k`` of image ``i``).

    Each crop's side is uniform in [``min_frac`` · short side, short side], at a uniform position.
    ``augment=True`` adds, per crop, a random horizontal flip and a small colour jitter (brightness ±10 %,
    contrast ±10 %, per-channel shift ±0.03, clamped to [0, 1]). Everything is differentiable w.r.t.
    ``x01``; pass a seeded ``torch.Generator`` for repeatable crops. The crops are float32 whatever ``x01``'s dtype
    (as :func:`preprocess01` computes; torch has no fp16 / bf16 antialiased resize on the CPU).
    """
    x = check_image01(x01).float()
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise BadOptionError(f"cutouts needs a whole number n >= 1, got {n!r}")
    if isinstance(min_frac, bool) or not isinstance(min_frac, numbers.Real) or not 0 < min_frac <= 1:
        raise BadOptionError(f"min_frac must be a number in (0, 1], got {min_frac!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise BadOptionError(f"generator must be a torch.Generator (torch.Generator().manual_seed(0)), "
                             f"got {type(generator).__name__} {generator!r:.60}")
    size = size_pair(size)
    if min(size) < 1:
        raise BadOptionError(f"cutout size must be at least 1×1, got {size[1]}×{size[0]}")
    h, w = x.shape[-2:]
    short = min(h, w)
    lo = max(1, int(round(min_frac * short)))

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    crops = []
    for _ in range(n):
        side = lo + int(rand(()) * (short - lo + 1))
        side = min(side, short)
        top = int(rand(()) * (h - side + 1))
        left = int(rand(()) * (w - side + 1))
        crop = resize(x[..., top:top + side, left:left + side], size, interpolation)
        if augment:
            if bool(rand(()) < 0.5):
                crop = crop.flip(-1)
            brightness = 1 + (rand(()) * 0.2 - 0.1)
            contrast = 1 + (rand(()) * 0.2 - 0.1)
            shift = (rand(3) * 0.06 - 0.03).view(1, 3, 1, 1)
            mean = crop.mean(dim=(1, 2, 3), keepdim=True)
            crop = ((crop - mean) * contrast.to(crop) + mean) * brightness.to(crop) + shift.to(crop)
            crop = crop.clamp(0, 1)
        crops.append(crop)
    return torch.cat(crops)


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """VQGAN+CLIP's loss between normalised features: ``2 · arcsin(‖a − b‖ / 2)²`` = θ² / 2, where θ is
    the angle between them. [Na, D] × [Nb, D] -> [Na, Nb]; monotone in (and a smooth proxy for) −cosine."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1).to(a.device)
    dist = (a.unsqueeze(1) - b.unsqueeze(0)).norm(dim=-1)
    return (dist / 2).clamp(max=1).arcsin().pow(2).mul(2)


class TextFeatureCache:
    """The text features guidance scores against, one encode per (member, prompt): kept while the member's weights
    stay the same (a loaded checkpoint or a training step drops its entries — they were used stale) and for the
    last :data:`TEXT_CACHE_PROMPTS` prompts used (a prompt schedule made a new entry every step, for ever)."""

    def __init__(self, limit: int = TEXT_CACHE_PROMPTS):
        self.limit = limit
        self._entries: "OrderedDict[tuple[int, str], torch.Tensor]" = OrderedDict()
        self._stamps: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._stamps.clear()

    def features(self, model: Any, prompts: list[str]) -> torch.Tensor:
        """``model``'s text features of ``prompts`` ([P, D], no gradient). A prompt longer than the model's context
        follows its ``long_text`` (:meth:`~clipzoo.Comparator.encode_text`): a BadTextError naming it by default, as
        ``compare`` gives (it was cut without a word); changing the policy drops the member's entries."""
        key, stamp = id(model), (weights_stamp(model), getattr(model, "long_text", None))
        if self._stamps.get(key) != stamp:
            for k in [k for k in self._entries if k[0] == key]:
                del self._entries[k]
            self._stamps[key] = stamp
        missing = [p for p in dict.fromkeys(prompts) if (key, p) not in self._entries]
        if missing:
            with torch.no_grad():
                feats = model.encode_text(missing)
            for p, f in zip(missing, feats):
                self._entries[(key, p)] = f
        for p in prompts:
            self._entries.move_to_end((key, p))
        out = torch.stack([self._entries[(key, p)] for p in prompts])
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
        return out


def weights_stamp(model: Any) -> int:
    """Changes when ``model``'s parameters do: each one's storage, its in-place version counter (bumped by
    ``load_state_dict``'s copies and by optimiser steps) and its first and last values — writes through ``.data``
    (EMA, weight averaging) and under ``torch.inference_mode`` bump no counter the parameter shows. The values are
    read in one transfer."""
    params = [p for p in model.parameters() if p.numel()] if isinstance(model, torch.nn.Module) else []
    parts = []
    for p in params:
        try:
            version = p._version
        except RuntimeError:  # an inference-mode tensor tracks no version
            version = -1
        parts.append((p.data_ptr(), version))
    if params:
        with torch.no_grad():
            ends = torch.stack([v.float() for p in params for v in (p.reshape(-1)[0], p.reshape(-1)[-1])])
        parts.append(tuple(ends.cpu().tolist()))
    return hash(tuple(parts))
