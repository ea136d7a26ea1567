"""Zero-shot multi-label classification as CLIP_benchmark runs ``voc2007_multilabel``.

Each image has a 0/1 target per class; the score of class ``c`` is the image's similarity to the zero-shot
class weight of ``c``; the metric is the mean over classes of the average precision of that ranking
(``mean_average_precision``). The data reader takes PASCAL VOC 2007's own layout::

    ROOT/VOCdevkit/VOC2007/ImageSets/Main/aeroplane_test.txt   (the split's image ids, first column)
    ROOT/VOCdevkit/VOC2007/Annotations/ID.xml                   (<object><name>CLASS</name>…)
    ROOT/VOCdevkit/VOC2007/JPEGImages/ID.jpg

>>> data = read_voc2007("VOC/", split="test")
>>> zeroshot_multilabel(model, data.paths, data.labels, data.classes)["mean_average_precision"]
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cards import IMAGE
from .metrics import EvalInputError
from .multilabel_metrics import average_precision_per_class, multilabel_metrics
from .zeroshot import class_weights

__all__ = ["VOC2007_CLASSES", "VOC2007_TEMPLATES", "MultilabelData", "read_voc2007", "average_precision_per_class",
           "multilabel_metrics", "multilabel_scores", "zeroshot_multilabel"]

VOC2007_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                   "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                   "train", "tvmonitor")
VOC2007_TEMPLATES = ("a photo of a {c}.",)  # CLIP_benchmark's templates for voc2007_multilabel
VOC_SPLITS = ("train", "val", "trainval", "test")


@dataclass
class MultilabelData:
    """Image paths, their (N, C) 0/1 targets and the class names."""

    name: str
    paths: list[Path]
    labels: torch.Tensor
    classes: list[str]


def _split_ids(main: Path, split: str) -> list[str]:
    listing = main / f"{VOC2007_CLASSES[0]}_{split}.txt"
    if not listing.is_file():
        raise EvalInputError(f"{listing} is missing: point --data-root at the folder holding VOCdevkit/ "
                             f"(PASCAL VOC 2007's layout) and pick a split it has ({', '.join(VOC_SPLITS)})")
    return [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]


def _objects(xml_file: Path) -> list[str]:
    if not xml_file.is_file():
        raise EvalInputError(f"{xml_file} is missing: every image of the split needs its VOC annotation")
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as err:
        raise EvalInputError(f"{xml_file} is not valid XML ({err}); rewrite the annotation") from None
    names = [(obj.findtext("name") or "").strip() for obj in root.iter("object")]
    unknown = sorted({n for n in names if n not in VOC2007_CLASSES})
    if unknown:
        raise EvalInputError(f"{xml_file} names unknown classes {unknown}; VOC 2007's are {', '.join(VOC2007_CLASSES)}")
    return names


def read_voc2007(root: str | Path, split: str = "test") -> MultilabelData:
    """The VOC 2007 split as multi-label data: a 1 for each class with at least one object in the image."""
    if split not in VOC_SPLITS:
        raise EvalInputError(f"unknown VOC split {split!r}: choose from {', '.join(VOC_SPLITS)}")
    base = Path(root) / "VOCdevkit" / "VOC2007"
    ids = _split_ids(base / "ImageSets" / "Main", split)
    if not ids:
        raise EvalInputError(f"the VOC 2007 split {split!r} under {root} lists no images")
    index = {c: i for i, c in enumerate(VOC2007_CLASSES)}
    labels = torch.zeros(len(ids), len(VOC2007_CLASSES))
    for row, image_id in enumerate(ids):
        for name in _objects(base / "Annotations" / f"{image_id}.xml"):
            labels[row, index[name]] = 1
    paths = [base / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise EvalInputError(f"{missing[0]} is missing ({len(missing)} images of split {split!r} in all)")
    return MultilabelData("voc2007_multilabel", paths, labels, list(VOC2007_CLASSES))


def multilabel_scores(model, images: Any, classnames: Sequence[str], templates=None, batch_size: int = 64
                      ) -> torch.Tensor:
    """(N, C) zero-shot scores of ``images`` (paths, PIL images, a pixel tensor, or a loader of
    ``(images, targets)``), the model's similarity to each class weight."""
    weights = class_weights(model, classnames, templates)
    batches = images if hasattr(images, "dataset") else (
        (images[i:i + batch_size], None) for i in range(0, len(images), batch_size))
    out = [model.score(batch[0], weights, IMAGE).float().cpu() for batch in batches]
    if not out:
        raise EvalInputError("no images to classify: the data set is empty")
    return torch.cat(out)


def zeroshot_multilabel(model, images: Any, targets: Any, classnames: Sequence[str], templates=None,
                        batch_size: int = 64) -> dict[str, Any]:
    """Zero-shot multi-label classification: ``mean_average_precision`` over the classes.

    ``targets``: (N, C) 0/1, or None when ``images`` is a loader of ``(images, targets)`` batches.
    """
    if targets is None:
        if not hasattr(images, "dataset"):
            raise EvalInputError("no targets: pass (N, C) 0/1 targets, or a loader yielding (images, targets)")
        targets = torch.cat([torch.as_tensor(batch[1]) for batch in images])
    scores = multilabel_scores(model, images, classnames, templates or VOC2007_TEMPLATES, batch_size)
    return multilabel_metrics(scores, targets, classnames)
