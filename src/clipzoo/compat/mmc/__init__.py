"""mmc's API (dmarx/Multi-Modal-Comparators) over clipzoo: the parts of mmc listed below, on every clipzoo model.

    from clipzoo.compat import mmc
    mmc.IMAGE.read_from_disk("cat.jpg")                      # an RGB PIL image; TEXT: the file's str
    DEPTH = mmc.register_modality("depth")                    # a custom modality (mmc's Modality(name=...))
    [str(l) for l in mmc.REGISTRY.find(architecture="clip", publisher="openai")]   # loaders, by query
    ldr.supports_modality(mmc.AUDIO); model = ldr.load()      # a Comparator with mmc's perceptor API
    model.project_text("a dog"); model.project_image(img)      # mmc's unnormalised projections
    models = mmc.load_all(architecture="clip", publisher="openai")   # every match, loaded
    perceptor = mmc.MultiMMC(mmc.TEXT, mmc.IMAGE)
    perceptor.load_model(architecture="clip", publisher="openai", id="RN*")   # all matches at once
    perceptor.compare(image=img, text="a dog")                # mmc's score: Σ weight · raw dot product
    clip_like = mmc.MockOpenaiClip(model)                     # openai's clip.load model API on any model
    from clipzoo.compat.mmc.ez.CLIP import clip               # mmc's "ez" mode: openai's clip API, any model

What is mmc's, what is clipzoo's:

- Modalities are :mod:`clipzoo.modalities` objects: ``read_from_disk(path)`` / ``write_to_disk(path, obj)``
  (image: path <-> RGB PIL; text: file <-> ``str``; audio: file <-> ``(samples, sample_rate)``; a registered
  modality: its own functions, text by default as mmc's), :func:`register_modality` for new ones.
- ``REGISTRY.find(**query)`` returns :class:`Loader` objects (``architecture``, ``publisher``, ``id``,
  ``modalities``, ``supports_modality``, ``load()``, ``str()`` = the alias), as mmc's loaders; queries are
  :meth:`clipzoo.Registry.find`'s (globs, lists, any card field).
- ``Loader.load()`` returns the Comparator with mmc's perceptor API (:class:`MultiModalComparator`,
  :mod:`.perceptor`): ``modes``, ``project_text`` / ``project_image`` / ``project_audio(item, preprocess=True)``
  (unnormalised features, as mmc's openai loader projects with ``encode_text`` / ``encode_image``),
  ``supports_text`` / ``supports_image`` / ``supports_audio``; it stays a Comparator.
- ``mmc.ez.CLIP.clip`` is :mod:`clipzoo.compat.clip` (openai's ``clip`` API: ``available_models``, ``load`` of
  OpenAI's names and of ``[architecture - publisher - id]`` aliases, ``tokenize`` for the last loaded model).
- :class:`MultiMMC` is a :class:`clipzoo.Ensemble`; its ``compare`` keeps mmc's semantics (the weighted sum of
  raw dot products of unnormalised features, a scalar for one item against one), where the Ensemble's own
  ``compare`` averages cosines unless ``normalize=False``.
- :class:`MockOpenaiClip` wraps any loaded model (a Comparator) in openai's model API: ``encode_image(pixels)``,
  ``encode_text(tokens)`` (unnormalised), ``model(image, text)`` -> logits, ``visual.input_resolution``,
  ``logit_scale``, ``dtype``, ``device``; :func:`as_openai_clip` also returns the preprocess transform and
  :class:`MockOpenaiClipModule` stands in for the ``clip`` module itself (``load``, ``tokenize``,
  ``available_models``).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...api import load, load_all
from ...cards import ModelCard
from ...comparator import Comparator
from ...ensemble import Ensemble
from ...errors import UnsupportedError
from ...modalities import AUDIO, IMAGE, TEXT, Modality, get_modality, register_modality, supports_modality
from ...registry import REGISTRY as CLIPZOO_REGISTRY
from .._models import ClipModel
from . import ez  # noqa: F401 - mmc's ``mmc.ez.CLIP``
from .perceptor import MultiModalComparator, as_perceptor

__all__ = ["AUDIO", "IMAGE", "TEXT", "Modality", "register_modality", "Loader", "REGISTRY", "load_all",
           "MultiMMC", "MultiModalComparator", "as_perceptor", "MockOpenaiClip", "MockOpenaiClipModule",
           "as_openai_clip"]


@dataclass(frozen=True)
class Loader:
    """mmc's model loader for one card: what it is, which modalities it has, and ``load()``."""

    card: ModelCard

    @property
    def architecture(self) -> str:
        return self.card.architecture

    @property
    def publisher(self) -> str:
        return self.card.publisher

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def modalities(self) -> tuple[Modality, ...]:
        return tuple(get_modality(m) for m in self.card.modalities)

    def supports_modality(self, modality: Any) -> bool:
        return supports_modality(self.card.modalities, modality)

    def load(self, device: "str | torch.device" = "cpu", **kwargs: Any) -> Comparator:
        """The model, a Comparator with mmc's perceptor API (``project_text``, ``project_image``, ``modes``, …)."""
        return as_perceptor(load(self.card, device=str(device), **kwargs))

    def __str__(self) -> str:
        return self.card.alias


class _LoaderRegistry:
    """mmc's ``REGISTRY``: ``find(**query)`` -> the matching :class:`Loader` objects (clipzoo's registry inside)."""

    def find(self, **query: Any) -> list[Loader]:
        return [Loader(card) for card in CLIPZOO_REGISTRY.find(**query)]

    @property
    def loaders(self) -> list[Loader]:
        return [Loader(card) for card in CLIPZOO_REGISTRY]


REGISTRY = _LoaderRegistry()


class MultiMMC(Ensemble):
    """mmc's ``MultiMMC(*modalities)``: an :class:`~clipzoo.Ensemble` whose ``load_model`` loads every match of a
    query and whose ``compare`` is mmc's weighted sum of raw dot products."""

    def __init__(self, *modalities: Any, device: "str | torch.device" = "cpu", **load_kwargs: Any):
        super().__init__((), modalities=modalities or (TEXT, IMAGE), device=str(device), **load_kwargs)

    def load_model(self, architecture: str = "clip", publisher: str = "openai", id: "str | None" = None,
                   weight: float = 1.0, device: Any = None) -> list[Comparator]:
        """Load every model matching the three fields (an omitted or None field, or a glob, matches several)."""
        if device is not None:
            self.device = str(device)
        query = {"architecture": architecture, "publisher": publisher, "id": id}
        found = CLIPZOO_REGISTRY.find(**query)
        again = [c.alias for c in found if c.alias in self._aliases]
        if not again:
            return self.add_all(weight=weight, **query)
        warnings.warn(f"already loaded, not added again (as mmc skips them): {', '.join(again)}", stacklevel=2)
        fresh = [c for c in found  # a second copy doubled every score
                 if c.alias not in self._aliases and all(m in c.modalities for m in self.modalities)]
        return [self.add(card.alias, weight=weight) for card in fresh]

    @property
    def supports_image(self) -> bool:
        return self.supports_modality(IMAGE)

    @property
    def supports_text(self) -> bool:
        return self.supports_modality(TEXT)

    @property
    def supports_audio(self) -> bool:
        return self.supports_modality(AUDIO)

    def compare(self, return_projections: bool = False, normalize: bool = False, **inputs: Any):
        """mmc's score: ``Σ_m weight_m · (a_m · b_m)`` of unnormalised features (a 0-d tensor for one item
        against one, else [N_rows, N_cols]); ``normalize=True`` for cosines instead. Weights are used as given
        (mmc does not normalise them)."""
        out = super().compare(normalize=normalize, **inputs)
        total = sum(self._weights)
        score = out.similarity * total  # Ensemble weights sum to 1; mmc's are raw
        score = score.reshape(()) if score.numel() == 1 else score
        return (score, out.per_model) if return_projections else score


    def similarity(self, image: Any, text: Any) -> torch.Tensor:
        """The ensemble's weighted cosines, as :meth:`clipzoo.Ensemble.similarity`."""
        return Ensemble.compare(self, image=image, text=text).similarity


class MockOpenaiClip(ClipModel):
    """openai's ``clip.load`` model API over any loaded model (mmc.mock.openai's class of the same name):
    ``encode_image`` takes preprocessed pixels, ``encode_text`` the model's own tokens (from
    :meth:`Comparator.tokenize` or :class:`MockOpenaiClipModule`'s ``tokenize``), both unnormalised."""

    def __init__(self, comparator: Comparator, device: "str | torch.device | None" = None):
        for modality in (IMAGE, TEXT):
            if not comparator.supports_modality(modality):
                raise UnsupportedError(f"{comparator.card.alias} has no {modality} modality, which openai's clip "
                                       f"API needs (it has: {', '.join(comparator.modalities)})")
        super().__init__(comparator)
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        return self.comparator.device

    @property
    def mmc_object(self) -> Comparator:
        return self.comparator


def as_openai_clip(comparator: Comparator) -> tuple[MockOpenaiClip, Callable[[Any], torch.Tensor]]:
    """``(model, preprocess)`` as openai's ``clip.load`` returns them, for an already loaded model."""
    return MockOpenaiClip(comparator), comparator.transform


class MockOpenaiClipModule:
    """Stands in for openai's ``clip`` module over one model (a spec or a loaded Comparator), as mmc's
    ``MockOpenaiClipModule``: ``load()`` -> ``(model, preprocess)``, ``tokenize`` the model's own tokenizer."""

    def __init__(self, model: "str | Comparator | Loader", device: "str | torch.device" = "cpu"):
        self._spec = model.card if isinstance(model, Loader) else model  # mmc's own argument is a loader
        self.device = str(device)
        self._comparator = model if isinstance(model, Comparator) else None

    @property
    def comparator(self) -> Comparator:
        if self._comparator is None:
            self._comparator = load(self._spec, device=self.device)
        return self._comparator

    def available_models(self) -> list[str]:
        return [self.comparator.card.alias]

    def load(self, name: Any = None, device: Any = None, jit: bool = False, download_root: Any = None):
        model, preprocess = as_openai_clip(self.comparator)
        if device is not None:
            model.to(device)
        return model, preprocess

    def tokenize(self, texts: "str | list[str]", context_length: "int | None" = None,
                 truncate: bool = False) -> torch.Tensor:
        return self.comparator.tokenize([texts] if isinstance(texts, str) else list(texts), truncate=truncate)

    @property
    def preprocess_image(self) -> Callable[[Any], torch.Tensor]:
        return self.comparator.transform
