"""clipzoo: one API for contrastive vision-language (CLIP-family) models.

``import clipzoo`` is cheap: torch and the backends load when a model does.
"""
from __future__ import annotations

from .cards import AUDIO, IMAGE, TEXT, ModelCard, Source
from .constants import VERSION as __version__
from .errors import ClipzooError
from .registry import REGISTRY, Registry, list_models, register

__all__ = ["REGISTRY", "Registry", "ModelCard", "Source", "ClipzooError", "IMAGE", "TEXT", "AUDIO",
           "list_models", "register", "load", "Comparator", "Ensemble", "__version__"]


def __getattr__(name: str):
    if name == "load":
        from .api import load

        return load
    if name == "Ensemble":
        from .ensemble import Ensemble

        return Ensemble
    if name == "Comparator":
        from .comparator import Comparator

        return Comparator
    raise AttributeError(f"module 'clipzoo' has no attribute {name!r}")
