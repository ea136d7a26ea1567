"""Modalities as objects: :data:`IMAGE`, :data:`TEXT`, :data:`AUDIO`.

Each is a ``str`` subclass, so it *is* the string it was before (``IMAGE == "image"``, same hash, JSON
writes ``"image"``, ``"image" in card.modalities`` still works) and it owns two things:

- ``coerce(inputs, comparator)``: a user's input -> what the comparator's encoder takes (a list of image
  items or a float pixel tensor; a token tensor; a list of audio items), with the clear errors of
  :mod:`clipzoo.inputs`;
- ``encoder``: the name of the Comparator method that encodes it (``encode_image``, ``encode_text``,
  ``encode_audio``).

``Comparator.encode(modality, inputs)`` dispatches through these. This module imports nothing heavy, so
``import clipzoo`` stays fast.
"""
from __future__ import annotations

from typing import Any

from .errors import ClipzooError
from .inputs import check_pixel_tensor, image_items, is_float_tensor, text_items


class Modality(str):
    """One input modality. Compares equal to its name; ``coerce`` normalises inputs for a comparator."""

    encoder: str = ""

    def __new__(cls, name: str):
        self = super().__new__(cls, name)
        self.encoder = f"encode_{name}"
        return self

    @property
    def name(self) -> str:
        return str.__str__(self)

    def coerce(self, inputs: Any, comparator: Any = None) -> Any:  # pragma: no cover - overridden
        return inputs

    # the three objects are singletons: copying or pickling gives back the same object
    def __reduce__(self):
        return (get_modality, (str.__str__(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class _Image(Modality):
    def coerce(self, inputs: Any, comparator: Any = None) -> Any:
        """A float tensor -> checked pixels (N, 3, H, W) at the model's size (already preprocessed);
        anything else -> a list of image items (paths, PIL images, uint8 arrays)."""
        if is_float_tensor(inputs):
            return check_pixel_tensor(inputs, getattr(comparator, "image_size", None))
        return image_items(inputs)


class _Text(Modality):
    def coerce(self, inputs: Any, comparator: Any = None) -> Any:
        """Strings -> the comparator's token tensor (a list of strings without a comparator);
        a token tensor passes through as (N, L)."""
        import torch

        if isinstance(inputs, torch.Tensor):
            return inputs if inputs.ndim == 2 else inputs.unsqueeze(0)
        texts = text_items(inputs)
        return comparator.tokenize(texts) if comparator is not None else texts


class _Audio(Modality):
    def coerce(self, inputs: Any, comparator: Any = None) -> Any:
        """A path, an array / tensor, or a ``(array, sample_rate)`` pair -> a list of such items.
        Decoding and resampling belong to the audio backend (its ``encode_audio``)."""
        if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], (int, float)):
            return [inputs]
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise ClipzooError("no audio given; pass at least one file path or (array, sample_rate) pair")
            return list(inputs)
        return [inputs]


IMAGE = _Image("image")
TEXT = _Text("text")
AUDIO = _Audio("audio")
MODALITIES = {m.name: m for m in (IMAGE, TEXT, AUDIO)}


def get_modality(name: "str | Modality") -> Modality:
    """``"image"`` / ``IMAGE`` / ``"Image"`` -> the :data:`IMAGE` object; unknown names raise ClipzooError."""
    if isinstance(name, Modality):
        return name
    key = str(getattr(name, "name", name)).strip().lower()
    try:
        return MODALITIES[key]
    except KeyError:
        raise ClipzooError(f"unknown modality {name!r}; use one of {', '.join(MODALITIES)}") from None
