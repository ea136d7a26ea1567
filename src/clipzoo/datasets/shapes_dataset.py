"""The generated captioned-shapes samples: :class:`ShapesDataset` plans each sample from its seed and
index, then renders it (at twice the size, downsampled for anti-aliased edges)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DatasetError
from .shapes_draw import ShapeObject, background, draw_shape
from .shapes_spec import (
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    MIN_CONTRAST,
    OPPOSITE,
    POSITION_XY,
    POSITIONS,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    captions,
    classnames,
)

__all__ = ["ShapeSample", "ShapesDataset"]


@dataclass
class ShapeSample:
    """One generated sample: ``image`` (PIL RGB), ``captions`` (several phrasings), ``caption`` (the one
    used in CSV / webdataset), ``labels`` (``shape``, ``color``, ``size``, ``position``, ``shape_color``
    of the first — main — object) and ``objects`` (every object drawn, as dicts)."""

    index: int
    image: Image.Image
    captions: list[str]
    caption: str
    labels: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)
    background: str = ""

    @property
    def key(self) -> str:
        return f"{self.index:08d}"

    def label_index(self, label_key: str = "shape") -> int:
        return classnames(label_key).index(self.labels[label_key])


def _deck(seed: int, name: int, items: Sequence[str], i: int) -> str:
    """Item ``i`` of an endless sequence of shuffled decks: balanced over every prefix."""
    k = len(items)
    perm = np.random.default_rng([seed, name, i // k]).permutation(k)
    return items[int(perm[i % k])]


class ShapesDataset(Sequence[ShapeSample]):
    """``n`` generated captioned-shape samples, made on demand (torch-free; index it, iterate it).

    ``two_object_prob``: the chance that a sample whose main object is left/right/top/bottom gets a
    second, smaller object on the opposite side (captions then name both; labels the main one).
    """

    def __init__(self, n: int, seed: int = 0, image_size: int = 64, two_object_prob: float = 0.25):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
            raise DatasetError(f"the number of samples must be a positive integer, got {n!r}")
        if not isinstance(image_size, (int, np.integer)) or image_size < 16:
            raise DatasetError(f"image size must be an integer of at least 16 pixels, got {image_size!r}")
        if not 0.0 <= float(two_object_prob) <= 1.0:
            raise DatasetError(f"two_object_prob must be between 0 and 1, got {two_object_prob!r}")
        self.n, self.seed, self.image_size = int(n), int(seed), int(image_size)
        self.two_object_prob = float(two_object_prob)

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> ShapeSample: ...
    @overload
    def __getitem__(self, i: slice) -> list[ShapeSample]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"sample {i} out of range for {self.n} samples")
        return self.render(i)

    def __iter__(self) -> Iterator[ShapeSample]:
        return (self.render(i) for i in range(self.n))

    def __repr__(self) -> str:
        return (f"ShapesDataset(n={self.n}, seed={self.seed}, image_size={self.image_size}, "
                f"two_object_prob={self.two_object_prob})")

    # -- the plan of one sample: cheap, no pixels
    def plan(self, i: int) -> dict[str, Any]:
        """Everything about sample ``i`` except its pixels: objects, background, captions, labels."""
        rng = np.random.default_rng([self.seed, 1, i])
        shape = _deck(self.seed, 2, SHAPES, i)
        color = _deck(self.seed, 3, COLORS, i)
        size = SIZES[int(rng.integers(len(SIZES)))]
        position = POSITIONS[int(rng.integers(len(POSITIONS)))]
        objects = [self._object(rng, shape, color, size, position, jitter=0.05)]
        two = position != "center" and rng.random() < self.two_object_prob
        if two:
            objects[0] = self._object(rng, shape, color, size, position, jitter=0.03)
            while True:
                shape2 = SHAPES[int(rng.integers(len(SHAPES)))]
                color2 = COLORS[int(rng.integers(len(COLORS)))]
                if (shape2, color2) != (shape, color):
                    break
            size2 = "small" if size == "large" else SIZES[1 + int(rng.integers(2))]
            objects.append(self._object(rng, shape2, color2, size2, OPPOSITE[position], jitter=0.03))
        background_plan = self._background_plan(rng, [o.rgb for o in objects])
        phrases = [o.phrase() for o in objects]
        texts = captions(phrases)
        labels = dict(phrases[0], shape_color=f"{color} {shape}")
        caption = texts[int(rng.integers(len(texts)))]
        return {"objects": objects, "background": background_plan, "captions": texts, "caption": caption,
                "labels": labels}

    @staticmethod
    def _object(rng, shape, color, size, position, jitter) -> ShapeObject:
        r = SIZE_RADIUS[size]
        x0, y0 = POSITION_XY[position]
        x = float(np.clip(x0 + rng.uniform(-jitter, jitter), r + 0.01, 1 - r - 0.01))
        y = float(np.clip(y0 + rng.uniform(-jitter, jitter), r + 0.01, 1 - r - 0.01))
        base = np.array(COLOR_RGB[color])
        rgb = tuple(int(v) for v in np.clip(base + rng.integers(-12, 13, 3), 0, 255))
        rotation = 0.0 if shape == "circle" else float(rng.uniform(-12, 12))
        return ShapeObject(shape, color, size, position, rgb, (x, y), rotation)

    @staticmethod
    def _background_plan(rng, object_rgbs) -> dict[str, Any]:
        kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        objs = np.array(object_rgbs, dtype=float)
        colors = []
        for _ in range(2):
            for _attempt in range(64):  # muted colours far enough from every object's colour
                grey = rng.uniform(30, 225)
                sat = rng.uniform(0.1, 0.6)
                c = grey * (1 - sat) + rng.uniform(0, 255, 3) * sat
                if np.min(np.linalg.norm(objs - c, axis=1)) >= MIN_CONTRAST:
                    break
            colors.append([float(v) for v in c])
        return {"kind": kind, "colors": colors, "angle": float(rng.uniform(0, math.pi)),
                "period": float(rng.uniform(0.08, 0.22)), "noise": float(rng.uniform(4, 18)),
                "grid": int(rng.integers(3, 8)), "seed": int(rng.integers(2**31))}

    # -- pixels
    def render(self, i: int) -> ShapeSample:
        p = self.plan(i)
        S = 2 * self.image_size  # draw at 2x, downsample: anti-aliased edges
        bg = background(p["background"], S)
        image = Image.fromarray(bg, "RGB")
        draw = ImageDraw.Draw(image)
        for o in p["objects"]:
            draw_shape(draw, o, S)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        objects = [dict(o.phrase(), rgb=list(o.rgb), center=[round(o.center[0], 4), round(o.center[1], 4)])
                   for o in p["objects"]]
        return ShapeSample(i, image, p["captions"], p["caption"], p["labels"], objects, p["background"]["kind"])
