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

The code lives in :mod:`~clipzoo.datasets.shapes_spec` (vocabulary, class names, captions),
:mod:`~clipzoo.datasets.shapes_dataset` (samples), :mod:`~clipzoo.datasets.shapes_draw` (pixels) and
:mod:`~clipzoo.datasets.shapes_write` (files on disk); this module gathers their public names.
"""
from __future__ import annotations

from ..errors import DatasetError
from .shapes_dataset import ShapeSample, ShapesDataset
from .shapes_draw import ShapeObject
from .shapes_spec import (
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    CSV_COLUMNS,
    DEFAULT_FORMATS,
    FORMATS,
    LABEL_KEYS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    TEMPLATES,
    class_dirname,
    classnames,
)
from .shapes_write import write_shapes

__all__ = [
    "SHAPES", "COLORS", "SIZES", "POSITIONS", "LABEL_KEYS", "FORMATS", "DEFAULT_FORMATS", "TEMPLATES", "DatasetError",
    "ShapeSample", "ShapesDataset", "classnames", "class_dirname", "write_shapes", "COLOR_RGB", "BACKGROUNDS",
    "CSV_COLUMNS", "POSITION_PHRASES", "ShapeObject",
]
