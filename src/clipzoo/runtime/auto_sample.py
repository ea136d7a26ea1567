"""The caller's own inputs for ``runtime="auto"``'s measurement (issue 22 §3: "on the user's own inputs").

``clipzoo embed``, ``clipzoo index build`` and ``clipzoo serve INDEX`` hand a sample of what they are about to
embed — the files of ``--images``, the lines of ``--texts``, the folder being indexed, the images of the index
being served — to :func:`clipzoo.runtime.auto.apply` through :func:`sample_options`. The sample is spread evenly
over the inputs (:func:`spread`), at most :data:`SAMPLE_SIZE` of each, and an image sample is decoded only if
auto really measures (:class:`ImageSample` decodes when iterated: a cached choice, or a model under
``auto.TINY_PARAMETERS``, costs nothing); a file that does not decode is left out of it. ``origin`` names
where the sample came from, and the choice records it (``Choice.sample``, the reason's last words).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from ..embed.decode import decode_file
from ..errors import ClipzooError
from . import normalize_runtime
from .auto import BATCH_SIZE

__all__ = ["SAMPLE_SIZE", "DECODE_SIDE", "ImageSample", "TextSample", "spread", "sample_options"]

SAMPLE_SIZE = BATCH_SIZE
"""Distinct inputs of each modality in the sample: one measured batch (auto repeats them over its batches)."""
DECODE_SIDE = 224
"""Sample images decode with DCT scaling down to sides >= 2× this (embed.decode): a folder of 12-megapixel
photos does not cost seconds of full decodes before the measurement starts."""


def spread(items: Sequence, n: int = SAMPLE_SIZE) -> list:
    """At most ``n`` of ``items``, evenly spaced from the first (all of them when there are no more than ``n``)."""
    items = list(items)
    if len(items) <= n:
        return items
    return [items[i * len(items) // n] for i in range(n)]


class ImageSample:
    """Image files (or webdataset tar members) decoded when iterated, the undecodable ones left out; a list of
    them is what auto measures on. ``origin``: where they came from, for the report."""

    def __init__(self, items: Sequence, origin: str):
        self.items, self.origin = list(items), origin

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator:
        errors = []
        for item in self.items:
            try:
                yield decode_file(item, DECODE_SIDE) if isinstance(item, (str, os.PathLike)) else item.open_rgb(
                    DECODE_SIDE)
            except ClipzooError as exc:
                errors.append(str(exc))
        if errors and len(errors) == len(self.items):
            raise ClipzooError(f"runtime auto: none of the {len(self.items)} sampled images of {self.origin} "
                               f"decodes ({errors[0]}); fix the inputs, or pass --runtime eager")


class TextSample(list):
    """Texts for auto's measurement, with their ``origin``."""

    def __init__(self, texts: Sequence[str], origin: str):
        super().__init__(str(t) for t in texts)
        self.origin = origin


def sample_options(runtime: "str | None", images: "Sequence | None" = None, texts: "Sequence[str] | None" = None,
                   origin: str = "the inputs") -> dict[str, Any]:
    """``clipzoo.load`` keywords handing ``runtime="auto"`` an evenly spread sample of ``images`` / ``texts``
    (``{}`` for any other runtime, or when there are none)."""
    if normalize_runtime(runtime) != "auto":
        return {}
    out: dict[str, Any] = {}
    if images:
        picked = spread(images)
        out["sample_images"] = ImageSample(picked, f"{len(picked)} of {len(images)} images of {origin}")
    if texts:
        picked = spread(texts)
        out["sample_texts"] = TextSample(picked, f"{len(picked)} of {len(texts)} texts of {origin}")
    return out
