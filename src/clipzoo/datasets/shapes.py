"""Generated captioned shapes: the offline stand-in for CIFAR / COCO and the default training data.

Each sample is a small RGB image of one or two coloured shapes on a textured background (noise,
gradient, stripes, checks, blotches), with several caption phrasings and a label for each attribute::

    >>> ds = ShapesDataset(100, seed=0, image_size=64)
    >>> s = ds[3]
    >>> s.image, s.caption, s.labels     # PIL.Image, "a small red circle on the left", {"shape": …, …}

Sample ``i`` depends only on ``(seed, i, image_size, two_object_prob)``, never on ``n``: the first 100
samples of ``ShapesDataset(1000)`` are ``ShapesDataset(100)``, byte for byte. Shapes and colours are
dealt from shuffled decks (one deck per block of ``len(SHAPES)`` / ``len(COLORS)`` samples), so every
prefix is balanced over shapes and colours to within one sample per class.

:func:`write_shapes` writes a data set to disk as an image folder (one subfolder per class), a CSV
(``filepath,caption,shape,color,size,position,shape_color``, as open_clip's ``--csv-img-key filepath
--csv-caption-key caption`` read it) and webdataset tar shards (``KEY.png``, ``KEY.txt``, ``KEY.json``,
``KEY.cls``), plus ``classnames.txt`` and ``zeroshot_classification_templates.txt`` in CLIP_benchmark's
layout. Every file is written to a temporary name and renamed, so an interrupted run leaves no half
file, and running the same command again resumes where it stopped.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DatasetError
from ..files import atomic_write

__all__ = [
    "SHAPES", "COLORS", "SIZES", "POSITIONS", "LABEL_KEYS", "FORMATS", "DEFAULT_FORMATS", "TEMPLATES", "DatasetError",
    "ShapeSample", "ShapesDataset", "classnames", "class_dirname", "write_shapes",
]

# Canonical class lists are sorted, so class index == position in ``classnames.txt`` == the index
# torchvision's ImageFolder gives the (sorted) subfolders.
SHAPES: tuple[str, ...] = ("circle", "cross", "diamond", "heart", "square", "star", "triangle")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "blue": (35, 75, 230),
    "brown": (130, 75, 30),
    "cyan": (40, 215, 225),
    "green": (35, 170, 50),
    "orange": (250, 140, 15),
    "pink": (250, 125, 200),
    "purple": (140, 45, 200),
    "red": (225, 25, 25),
    "white": (245, 245, 245),
    "yellow": (245, 225, 25),
}
COLORS: tuple[str, ...] = tuple(sorted(COLOR_RGB))
SIZES: tuple[str, ...] = ("large", "medium", "small")
POSITIONS: tuple[str, ...] = ("bottom", "center", "left", "right", "top")
LABEL_KEYS: tuple[str, ...] = ("shape", "color", "size", "position", "shape_color")
FORMATS: tuple[str, ...] = ("folder", "csv", "webdataset", "tfrecord")
DEFAULT_FORMATS: tuple[str, ...] = ("folder", "csv", "webdataset")
BACKGROUNDS: tuple[str, ...] = ("noise", "gradient", "stripes", "checks", "blotches")

# half-extent of a shape as a fraction of the image side
_SIZE_RADIUS = {"small": 0.11, "medium": 0.17, "large": 0.24}
_POSITION_XY = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
                "center": (0.5, 0.5)}
_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
_POS_ON = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "center": "in the center"}
_POS_SIDE = {"left": "left side", "right": "right side", "top": "top", "bottom": "bottom", "center": "center"}
_MIN_CONTRAST = 120.0  # least RGB distance between an object's colour and each background colour

TEMPLATES: tuple[str, ...] = (
    "a {c}.",
    "a photo of a {c}.",
    "a drawing of a {c}.",
    "a picture of a {c}.",
    "a {c} on a textured background.",
    "a small picture of a {c}.",
    "an image showing a {c}.",
)

CSV_COLUMNS = ("filepath", "caption", *LABEL_KEYS)


def classnames(label_key: str = "shape") -> list[str]:
    """The sorted class names for one label key (``shape_color`` names read ``"red circle"``)."""
    _check_label_key(label_key)
    if label_key == "shape_color":
        return sorted(f"{c} {s}" for c in COLORS for s in SHAPES)
    return list({"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}[label_key])


def class_dirname(name: str) -> str:
    """The image-folder subfolder of a class name (spaces become underscores; sorting is preserved)."""
    return name.replace(" ", "_")


def _check_label_key(label_key: str) -> None:
    if label_key not in LABEL_KEYS:
        raise DatasetError(f"unknown label key {label_key!r}: choose one of {', '.join(LABEL_KEYS)}")


# ------------------------------------------------------------------ samples
@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    position: str
    rgb: tuple[int, int, int]  # the jittered colour actually drawn
    center: tuple[float, float]  # fractions of the image side
    rotation: float  # degrees

    def phrase(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}


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


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _phrasings(o: dict[str, str]) -> list[str]:
    size, color, shape, pos = o["size"], o["color"], o["shape"], o["position"]
    return [
        f"{_article(size)} {size} {color} {shape} {_POS_ON[pos]}",
        f"{_article(color)} {color} {shape}, {size}, {_POS_SIDE[pos]}",
        f"{_article(size)} {size} {shape} in {color} {_POS_ON[pos]}",
        f"{color} {shape} ({size}) {_POS_ON[pos]}",
        f"there is {_article(color)} {color} {shape} {_POS_ON[pos]}",
    ]


def _captions(objects: list[dict[str, str]]) -> list[str]:
    per_object = [_phrasings(o) for o in objects]
    return [" and ".join(p[k] for p in per_object) for k in range(len(per_object[0]))]


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
            objects.append(self._object(rng, shape2, color2, size2, _OPPOSITE[position], jitter=0.03))
        background = self._background_plan(rng, [o.rgb for o in objects])
        phrases = [o.phrase() for o in objects]
        captions = _captions(phrases)
        labels = dict(phrases[0], shape_color=f"{color} {shape}")
        caption = captions[int(rng.integers(len(captions)))]
        return {"objects": objects, "background": background, "captions": captions, "caption": caption,
                "labels": labels}

    @staticmethod
    def _object(rng, shape, color, size, position, jitter) -> ShapeObject:
        r = _SIZE_RADIUS[size]
        x0, y0 = _POSITION_XY[position]
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
                if np.min(np.linalg.norm(objs - c, axis=1)) >= _MIN_CONTRAST:
                    break
            colors.append([float(v) for v in c])
        return {"kind": kind, "colors": colors, "angle": float(rng.uniform(0, math.pi)),
                "period": float(rng.uniform(0.08, 0.22)), "noise": float(rng.uniform(4, 18)),
                "grid": int(rng.integers(3, 8)), "seed": int(rng.integers(2**31))}

    # -- pixels
    def render(self, i: int) -> ShapeSample:
        p = self.plan(i)
        S = 2 * self.image_size  # draw at 2x, downsample: anti-aliased edges
        bg = _background(p["background"], S)
        image = Image.fromarray(bg, "RGB")
        draw = ImageDraw.Draw(image)
        for o in p["objects"]:
            _draw_shape(draw, o, S)
        image = image.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        objects = [dict(o.phrase(), rgb=list(o.rgb), center=[round(o.center[0], 4), round(o.center[1], 4)])
                   for o in p["objects"]]
        return ShapeSample(i, image, p["captions"], p["caption"], p["labels"], objects, p["background"]["kind"])


@functools.lru_cache(maxsize=8)
def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:S, 0:S] / S
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _background(b: dict[str, Any], S: int) -> np.ndarray:
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


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
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


def _draw_shape(draw: ImageDraw.ImageDraw, o: ShapeObject, S: int) -> None:
    r = _SIZE_RADIUS[o.size] * S
    cx, cy = o.center[0] * S, o.center[1] * S
    if o.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=o.rgb)
        return
    a = math.radians(o.rotation)
    ca, sa = math.cos(a), math.sin(a)
    pts = [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in _unit_polygon(o.shape)]
    draw.polygon(pts, fill=o.rgb)


# ------------------------------------------------------------------ writing
def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _atomic_write(path: Path, data: "bytes | str") -> None:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    atomic_write(path, lambda f: f.write(payload))


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _normalize_formats(formats: "str | Iterable[str]") -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [formats]
    out: list[str] = []
    for f in formats:
        for part in str(f).split(","):
            part = part.strip().lower()
            if part in ("wds", "tar"):
                part = "webdataset"
            if part == "image-folder":
                part = "folder"
            if part not in FORMATS:
                raise DatasetError(f"unknown format {f!r}: choose from {', '.join(FORMATS)}")
            if part not in out:
                out.append(part)
    if not out:
        raise DatasetError(f"no output format given: choose from {', '.join(FORMATS)}")
    return tuple(out)


def write_shapes(
    out_dir: "str | os.PathLike[str]",
    n: int,
    seed: int = 0,
    image_size: int = 64,
    formats: "str | Iterable[str]" = DEFAULT_FORMATS,
    shard_size: int = 1000,
    label_key: str = "shape",
    two_object_prob: float = 0.25,
    overwrite: bool = False,
    progress: "bool | Callable[[int], None]" = False,
) -> dict[str, Any]:
    """Generate ``n`` samples and write them under ``out_dir``; returns the manifest (also written as
    ``out_dir/manifest.json``).

    Layout::

        out_dir/
          images/<class>/<KEY>.png               formats "folder" or "csv" (class: ``label_key``)
          shapes.csv                             format "csv": filepath (relative),caption,<labels>
          webdataset/shard-000000.tar …          format "webdataset": KEY.png KEY.txt KEY.json KEY.cls
          webdataset/nshards.txt
          tfrecord/shard-000000.tfrecord …       format "tfrecord": tf.train.Examples (png, txt, cls, key, labels)
          classnames.txt                         classes of ``label_key``, one a line (index = line)
          zeroshot_classification_templates.txt  "{c}" templates, one a line
          manifest.json

    Re-running with the same arguments resumes: finished images and shards are kept. Different
    arguments on a used folder raise :class:`DatasetError` unless ``overwrite=True``.
    ``progress``: ``True`` for a tqdm bar on stderr, or a callable given the number of samples done.
    """
    fmts = _normalize_formats(formats)
    _check_label_key(label_key)
    if not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise DatasetError(f"shard size must be a positive integer, got {shard_size!r}")
    ds = ShapesDataset(n, seed=seed, image_size=image_size, two_object_prob=two_object_prob)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output {str(out)!r} is a file, not a folder: pass a folder path to --out")

    params = {"generator": "clipzoo.shapes/1", "n": ds.n, "seed": ds.seed, "image_size": ds.image_size,
              "two_object_prob": ds.two_object_prob, "label_key": label_key, "shard_size": int(shard_size),
              "formats": list(fmts)}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text("utf-8")).get("params", {})
        except (OSError, ValueError):
            old = None
        if old != params:
            if not overwrite:
                diff = ", ".join(f"{k} {old.get(k)!r} (now {v!r})" for k, v in params.items()
                                 if old.get(k) != v) if isinstance(old, dict) else "unreadable manifest.json"
                raise DatasetError(f"{str(out)!r} already holds a data set made with other arguments: {diff}; "
                                   f"use a new folder or pass --overwrite")
            for sub in ("images", "webdataset", "tfrecord"):
                shutil.rmtree(out / sub, ignore_errors=True)
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"output folder {str(out)!r} is not empty: use a new folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    stale_files = [pat for d in ("", "*/", "images/*/") for pat in (f"{d}.*.tmp-*", f"{d}*.part")]
    for stale in [p for pat in stale_files for p in out.glob(pat)]:
        stale.unlink(missing_ok=True)  # left by a run that was killed mid-write
    _atomic_write(manifest_path, json.dumps({"params": params, "complete": False}, indent=2))

    names = classnames(label_key)
    _atomic_write(out / "classnames.txt", "".join(f"{c}\n" for c in names))
    _atomic_write(out / "zeroshot_classification_templates.txt", "".join(f"{t}\n" for t in TEMPLATES))

    want_images = "folder" in fmts or "csv" in fmts
    want_wds = "webdataset" in fmts
    want_tfr = "tfrecord" in fmts
    if want_images:
        for c in names:
            (out / "images" / class_dirname(c)).mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(ds.n / shard_size)
    if want_wds:
        (out / "webdataset").mkdir(exist_ok=True)
    if want_tfr:
        (out / "tfrecord").mkdir(exist_ok=True)

    bar = None
    tick: Callable[[int], None]
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=ds.n, unit="img", desc="shapes", dynamic_ncols=True)
        tick = bar.update
    elif callable(progress):
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            progress(done[0])
    else:
        def tick(k: int) -> None:
            pass

    rows: list[list[str]] = []
    counts = {c: 0 for c in names}
    try:
        for s in range(n_shards):
            lo, hi = s * shard_size, min(ds.n, (s + 1) * shard_size)
            shard_path = out / "webdataset" / f"shard-{s:06d}.tar"
            shard_done = not want_wds or shard_path.exists()
            tfr_path = out / "tfrecord" / f"shard-{s:06d}.tfrecord"
            tfr_samples: "list[dict[str, Any]] | None" = [] if want_tfr and not tfr_path.exists() else None
            tar = tmp_tar = None
            if not shard_done:
                tmp_tar = shard_path.with_name(f".{shard_path.name}.tmp-{os.getpid()}")
                tar = tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT)
            try:
                for i in range(lo, hi):
                    p = ds.plan(i)
                    labels = p["labels"]
                    cls = labels[label_key]
                    counts[cls] += 1
                    key = f"{i:08d}"
                    rel = f"images/{class_dirname(cls)}/{key}.png"
                    img_path = out / rel
                    need_img = want_images and not img_path.exists()
                    if need_img or tar is not None or tfr_samples is not None:
                        sample = ds.render(i)
                        png = _png_bytes(sample.image)
                        if need_img:
                            _atomic_write(img_path, png)
                        if tar is not None:
                            meta = dict(sample.labels, index=i, caption=sample.caption, captions=sample.captions,
                                        objects=sample.objects, background=sample.background)
                            _tar_add(tar, f"{key}.png", png)
                            _tar_add(tar, f"{key}.txt", sample.caption.encode("utf-8"))
                            _tar_add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                            _tar_add(tar, f"{key}.cls", str(names.index(cls)).encode("ascii"))
                        if tfr_samples is not None:
                            tfr_samples.append({"key": key, "image": png, "captions": [sample.caption],
                                                "label": names.index(cls), "meta": dict(sample.labels)})
                    if "csv" in fmts:
                        rows.append([rel, p["caption"], *(labels[k] for k in LABEL_KEYS)])
                    tick(1)
            except BaseException:
                if tar is not None:
                    tar.close()
                    tmp_tar.unlink(missing_ok=True)
                raise
            if tar is not None:
                tar.close()
                os.replace(tmp_tar, shard_path)
            if tfr_samples is not None:
                from .tfrecord import write_tfrecord_samples

                write_tfrecord_samples(tfr_path, tfr_samples)  # written to a temporary name, then renamed
    finally:
        if bar is not None:
            bar.close()

    if "csv" in fmts:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        w.writerows(rows)
        _atomic_write(out / "shapes.csv", buf.getvalue())
    if want_wds:
        _atomic_write(out / "webdataset" / "nshards.txt", f"{n_shards}\n")

    files: dict[str, Any] = {"classnames": "classnames.txt", "templates": "zeroshot_classification_templates.txt"}
    if want_images:
        files["images"] = "images"
    if "csv" in fmts:
        files["csv"] = "shapes.csv"
    if want_wds:
        files["webdataset"] = f"webdataset/shard-{{000000..{n_shards - 1:06d}}}.tar"
        files["shards"] = n_shards
    if want_tfr:
        files["tfrecord"] = f"tfrecord/shard-{{000000..{n_shards - 1:06d}}}.tfrecord"
        files["shards"] = n_shards
    manifest = {"params": params, "complete": True, "files": files, "classnames": names,
                "class_counts": counts}
    _atomic_write(manifest_path, json.dumps(manifest, indent=2))
    return manifest
