"""Data sets: generated captioned shapes (offline stand-in for CIFAR / COCO; default training data).

Torch-free at import time. See :mod:`clipzoo.datasets.shapes` and ``docs/datasets.md``.
"""
from .shapes import (
                     COLORS,
                     DEFAULT_FORMATS,
                     FORMATS,
                     LABEL_KEYS,
                     POSITIONS,
                     SHAPES,
                     SIZES,
                     TEMPLATES,
                     DatasetError,
                     ShapeSample,
                     ShapesDataset,
                     class_dirname,
                     classnames,
                     write_shapes,
)

__all__ = ["COLORS", "DEFAULT_FORMATS", "FORMATS", "LABEL_KEYS", "POSITIONS", "SHAPES", "SIZES", "TEMPLATES",
           "DatasetError", "ShapeSample", "ShapesDataset", "class_dirname", "classnames", "write_shapes"]
