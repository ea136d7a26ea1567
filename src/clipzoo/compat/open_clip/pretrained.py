"""``open_clip.pretrained`` through the shim: open_clip's listings exactly as open_clip gives them.

clipzoo's other models are listed apart, by :func:`list_registry_pretrained` and
:func:`list_registry_models` (code that walks ``list_pretrained()`` — open_clip's own tests, benchmark
scripts — sees open_clip's catalogue and nothing else). ``create_model`` takes either kind of name.
"""
from __future__ import annotations

from ...cards import ModelCard
from ...registry import REGISTRY
from ._passthrough import passthrough
from ._real import REAL
from ._routing import registry_only


def list_pretrained(as_str: bool = False) -> list:
    """open_clip's ``(model, tag)`` pairs (``"model:tag"`` strings with ``as_str``), exactly."""
    return list(REAL.list_pretrained(as_str))


def list_pretrained_tags_by_model(model: str) -> list[str]:
    """open_clip's tags of an architecture, exactly."""
    return list(REAL.list_pretrained_tags_by_model(model))


def list_pretrained_models_by_tag(tag: str) -> list[str]:
    """open_clip's architectures with that tag, exactly."""
    return list(REAL.list_pretrained_models_by_tag(tag))


def registry_cards() -> list[ModelCard]:
    """The registry models open_clip cannot name itself (not an open_clip pair, not OpenAI's nine)."""
    return [c for c in REGISTRY if registry_only(c)]


def list_registry_models() -> list[str]:
    """The clipzoo alias of every registry model open_clip cannot name (``create_model`` takes them)."""
    return [c.alias for c in registry_cards()]


def list_registry_pretrained(as_str: bool = False) -> list:
    """``(alias, publisher)`` for every registry model open_clip cannot name: the pairs that
    ``create_model(alias, pretrained=publisher)`` takes, in ``list_pretrained``'s shape."""
    pairs = [(c.alias, c.publisher) for c in registry_cards()]
    return [":".join(p) for p in pairs] if as_str else pairs


__getattr__, __dir__, __all__ = passthrough("pretrained", globals())
