"""mmc's perceptor API (``mmc.multimodalcomparator.MultiModalComparator``) on a loaded clipzoo model.

mmc's loaders return a ``MultiModalComparator``: per modality a *mode* — a ``preprocessor`` (openai's
``clip.tokenize`` for text, the eval transform plus a batch axis for images), a ``projector`` (the model's
``encode_text`` / ``encode_image``: unnormalised features) and a ``postprocessor`` (identity) — and
``project_text(text, preprocess=True)`` / ``project_image(image, preprocess=True)`` / ``project_audio``, which
preprocess (unless told not to), move the item to the model's device, add a batch axis to a 1-D item and
project it. ``supports_text`` / ``supports_image`` / ``supports_audio`` say which modes there are.

:func:`as_perceptor` gives a Comparator that API in place: its class becomes a subclass of both
:class:`MultiModalComparator` and the Comparator's own class, so it stays that Comparator (every clipzoo
method, ``isinstance``, an ``nn.Module``) and answers mmc's calls too.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...errors import UnsupportedError
from ...modalities import AUDIO, IMAGE, TEXT, get_modality

__all__ = ["MultiModalComparator", "as_perceptor"]


def _identity(item: Any) -> Any:
    return item


class MultiModalComparator:
    """mmc's ``MultiModalComparator`` methods, mixed into a Comparator's class by :func:`as_perceptor`."""

    @property
    def modes(self) -> dict[str, dict[str, Any]]:
        """mmc's ``modes``: modality name -> ``{'modality_obj', 'projector', 'preprocessor', 'postprocessor'}``."""
        return {str(name): self._mode(get_modality(name)) for name in self.modalities}

    def _mode(self, modality) -> dict[str, Any]:
        if modality == TEXT:
            preprocessor, projector = self.tokenize, self._project_tokens
        elif modality == IMAGE:
            preprocessor, projector = self._preprocess_image, self._project_pixels
        else:  # audio and registered modalities: the raw item, encoded without normalising
            preprocessor, projector = _identity, self._encoder_of(modality)
        return {"modality_obj": modality, "projector": projector, "preprocessor": preprocessor,
                "postprocessor": _identity}

    def _project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_tokens(tokens.to(self.device))

    def _project_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_pixels(pixels.to(self.device, self.dtype))

    def _preprocess_image(self, image: Any) -> torch.Tensor:
        pixels = self.transform(image)
        return pixels.unsqueeze(0) if pixels.ndim == 3 else pixels  # mmc's loaders add the batch axis

    def _encoder_of(self, modality) -> Callable[[Any], torch.Tensor]:
        def project(item: Any) -> torch.Tensor:
            return self.encode(modality, item, normalize=False)
        return project

    def _supports_mode(self, modality_name: str) -> bool:
        return modality_name in self.modes

    def _preprocess_item(self, item: Any, mode: str) -> Any:
        item = self.modes[mode]["preprocessor"](item)
        if isinstance(item, torch.Tensor):
            item = item.to(self.device)
            if item.ndim == 1:
                item = item.unsqueeze(0)
        return item

    def _project_item(self, item: Any, mode: str, preprocess: bool = True) -> torch.Tensor:
        modes = self.modes
        if mode not in modes:  # mmc asserts
            raise UnsupportedError(f"{self.card.alias} has no {mode} modality (it has: {', '.join(modes)})")
        if preprocess:
            item = self._preprocess_item(item, mode)
        return modes[mode]["projector"](item)

    @property
    def supports_text(self) -> bool:
        return self._supports_mode(str(TEXT))

    @property
    def supports_image(self) -> bool:
        return self._supports_mode(str(IMAGE))

    @property
    def supports_audio(self) -> bool:
        return self._supports_mode(str(AUDIO))

    def project_text(self, text: Any, preprocess: bool = True) -> torch.Tensor:
        """Unnormalised text features ``[N, D]`` of a text or texts (``preprocess=False``: token ids)."""
        return self._project_item(item=text, mode=str(TEXT), preprocess=preprocess)

    def project_image(self, image: Any, preprocess: bool = True) -> torch.Tensor:
        """Unnormalised image features ``[N, D]`` of a PIL image (``preprocess=False``: pixels ``[N, 3, H, W]``)."""
        return self._project_item(item=image, mode=str(IMAGE), preprocess=preprocess)

    def project_audio(self, audio: Any, preprocess: bool = True) -> torch.Tensor:
        """Unnormalised audio features of what :meth:`encode_audio` takes."""
        return self._project_item(item=audio, mode=str(AUDIO), preprocess=preprocess)

    @property
    def name(self) -> str:
        return self.card.alias

    def __reduce_ex__(self, protocol: int):
        """Pickled as the Comparator's own class, given mmc's API again when unpickled."""
        return _unpickle, (type(self)._mmc_base,), self.__getstate__()


_CLASSES: dict[type, type] = {}


def _perceptor_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (MultiModalComparator, cls), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__, "_mmc_base": cls})
    return _CLASSES[cls]


def _unpickle(cls: type) -> Any:
    obj = cls.__new__(cls)
    obj.__class__ = _perceptor_class(cls)
    return obj


def as_perceptor(comparator: Any) -> Any:
    """``comparator`` with mmc's perceptor API (:class:`MultiModalComparator`), in place; returned."""
    if not isinstance(comparator, MultiModalComparator):
        comparator.__class__ = _perceptor_class(type(comparator))
    return comparator
