"""Guidance for CLIP-guided image generation: random cutouts and the spherical-distance loss.

:func:`cutouts` makes random crops of varied size for guidance (as VQGAN+CLIP and Disco Diffusion do).
The differentiable preprocessing they feed (:func:`preprocess01`, :class:`PixelConfig`) lives in
:mod:`clipzoo.pixels`, beside the Comparator that uses it, and is re-exported here.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from .errors import BadOptionError
from .pixels import PixelConfig, check_image01, pixel_config, preprocess01, resize, size_pair

__all__ = ["PixelConfig", "check_image01", "pixel_config", "preprocess01", "cutouts", "spherical_distance"]


def cutouts(x01: torch.Tensor, n: int, size: int | tuple[int, int], min_frac: float = 0.5,
            augment: bool = False, generator: torch.Generator | None = None,
            interpolation: str = "bilinear") -> torch.Tensor:
    """``n`` random square crops of each image, each resized to ``size``: (n * N, 3, *size), crop-major
    (rows ``k * N + i`` are crop ``k`` of image ``i``).

    Each crop's side is uniform in [``min_frac`` · short side, short side], at a uniform position.
    ``augment=True`` adds, per crop, a random horizontal flip and a small colour jitter (brightness ±10 %,
    contrast ±10 %, per-channel shift ±0.03, clamped to [0, 1]). Everything is differentiable w.r.t.
    ``x01``; pass a seeded ``generator`` for repeatable crops.
    """
    x = check_image01(x01)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise BadOptionError(f"cutouts needs a whole number n >= 1, got {n!r}")
    if not 0 < min_frac <= 1:
        raise BadOptionError(f"min_frac must be in (0, 1], got {min_frac}")
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
