"""The vocabulary of the generated captioned shapes: shapes, colours, sizes, positions, label keys,
formats, zero-shot templates, class names and caption phrasings (plain data, no pixels)."""
from __future__ import annotations

from ..errors import DatasetError

__all__ = [
    "SHAPES", "COLOR_RGB", "COLORS", "SIZES", "POSITIONS", "LABEL_KEYS", "FORMATS", "DEFAULT_FORMATS", "BACKGROUNDS",
    "SIZE_RADIUS", "POSITION_XY", "OPPOSITE", "POSITION_PHRASES", "POSITION_SIDES", "MIN_CONTRAST", "TEMPLATES",
    "CSV_COLUMNS", "classnames", "class_dirname", "check_label_key", "captions",
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

SIZE_RADIUS = {"small": 0.11, "medium": 0.17, "large": 0.24}
"""Half-extent of a shape as a fraction of the image side."""
POSITION_XY = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
               "center": (0.5, 0.5)}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                    "center": "in the center"}
"""How a caption says where an object is ("a red circle *on the left*")."""
POSITION_SIDES = {"left": "left side", "right": "right side", "top": "top", "bottom": "bottom", "center": "center"}
MIN_CONTRAST = 120.0
"""Least RGB distance between an object's colour and each background colour."""

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
    check_label_key(label_key)
    if label_key == "shape_color":
        return sorted(f"{c} {s}" for c in COLORS for s in SHAPES)
    return list({"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}[label_key])


def class_dirname(name: str) -> str:
    """The image-folder subfolder of a class name (spaces become underscores; sorting is preserved)."""
    return name.replace(" ", "_")


def check_label_key(label_key: str) -> None:
    """:class:`DatasetError` unless ``label_key`` is one of :data:`LABEL_KEYS`."""
    if label_key not in LABEL_KEYS:
        raise DatasetError(f"unknown label key {label_key!r}: choose one of {', '.join(LABEL_KEYS)}")


# ------------------------------------------------------------------ captions
def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _phrasings(o: dict[str, str]) -> list[str]:
    size, color, shape, pos = o["size"], o["color"], o["shape"], o["position"]
    return [
        f"{_article(size)} {size} {color} {shape} {POSITION_PHRASES[pos]}",
        f"{_article(color)} {color} {shape}, {size}, {POSITION_SIDES[pos]}",
        f"{_article(size)} {size} {shape} in {color} {POSITION_PHRASES[pos]}",
        f"{color} {shape} ({size}) {POSITION_PHRASES[pos]}",
        f"there is {_article(color)} {color} {shape} {POSITION_PHRASES[pos]}",
    ]


def captions(objects: list[dict[str, str]]) -> list[str]:
    """Every phrasing of a sample's objects (``shape``, ``color``, ``size``, ``position`` each), joined by "and"."""
    per_object = [_phrasings(o) for o in objects]
    return [" and ".join(p[k] for p in per_object) for k in range(len(per_object[0]))]
