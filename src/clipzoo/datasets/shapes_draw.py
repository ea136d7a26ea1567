"""Pixels of the generated shapes: textured backgrounds and shape outlines (numpy and PIL)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .shapes_spec import SIZE_RADIUS

__all__ = ["ShapeObject", "background", "unit_polygon", "draw_shape"]


@dataclass(frozen=True)
class ShapeObject:
    """One object of a sample, as drawn."""

    shape: str
    color: str
    size: str
    position: str
    rgb: tuple[int, int, int]  # the jittered colour actually drawn
    center: tuple[float, float]  # fractions of the image side
    rotation: float  # degrees

    def phrase(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}


@functools.lru_cache(maxsize=8)
def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:S, 0:S] / S
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def background(b: dict[str, Any], S: int) -> np.ndarray:
    """The ``S`` x ``S`` RGB background (uint8) of a background plan ``b`` (kind, colours, seed, …)."""
    rng = np.random.default_rng(b["seed"])
    c0, c1 = np.array(b["colors"][0]), np.array(b["colors"][1])
    yy, xx = _grid(S)
    along = xx * math.cos(b["angle"]) + yy * math.sin(b["angle"])
    kind = b["kind"]
    if kind == "noise":
        t = np.zeros((S, S))
        noise = b["noise"] * 2.5
    elif kind == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
        noise = b["noise"]
    elif kind == "stripes":
        t = (np.sin(2 * math.pi * along / b["period"]) > 0).astype(float)
        noise = b["noise"]
    elif kind == "checks":
        g = b["grid"]
        t = ((np.floor(xx * g) + np.floor(yy * g)) % 2).astype(float)
        noise = b["noise"]
    else:  # blotches: coarse random field, smoothly upsampled
        g = b["grid"]
        coarse = Image.fromarray((rng.random((g, g)) * 255).astype(np.uint8), "L")
        t = np.asarray(coarse.resize((S, S), Image.Resampling.BICUBIC), dtype=float) / 255.0
        noise = b["noise"]
    img = np.empty((S, S, 3))
    inv = 1 - t
    for ch in range(3):  # channel by channel: the same arithmetic as broadcasting, 3x faster for 3 channels
        img[..., ch] = c0[ch] * inv + c1[ch] * t
    img += rng.normal(0, noise, (S, S, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def unit_polygon(shape: str) -> list[tuple[float, float]]:
    """The outline of a shape inside the unit circle (y down)."""
    if shape == "square":
        a = 0.78
        return [(-a, -a), (a, -a), (a, a), (-a, a)]
    if shape == "diamond":
        return [(0, -1), (0.72, 0), (0, 1), (-0.72, 0)]
    if shape == "triangle":
        return [(0, -1), (0.92, 0.72), (-0.92, 0.72)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.32
        return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
                (-1, -w), (-w, -w)]
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -(y + 2.5) / 15.5))
        return pts
    raise ValueError(shape)


def draw_shape(draw: ImageDraw.ImageDraw, o: ShapeObject, S: int) -> None:
    """Draw one object on an ``S`` x ``S`` image."""
    r = SIZE_RADIUS[o.size] * S
    cx, cy = o.center[0] * S, o.center[1] * S
    if o.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=o.rgb)
        return
    a = math.radians(o.rotation)
    ca, sa = math.cos(a), math.sin(a)
    pts = [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in unit_polygon(o.shape)]
    draw.polygon(pts, fill=o.rgb)
