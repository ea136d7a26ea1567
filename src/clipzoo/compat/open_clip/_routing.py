"""Which model names the shim hands to open_clip as they are, and which it loads through clipzoo."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...cards import ModelCard
from ...download import hub_file
from ...errors import AmbiguousModelError, ModelNotCachedError, UnknownModelError, UnsupportedError
from ...registry import REGISTRY
from ._real import REAL


@dataclass
class Route:
    native: bool
    model_name: str = ""
    pretrained: str | None = None
    card: ModelCard | None = None


class NotFound(UnknownModelError, RuntimeError):
    """open_clip raises RuntimeError for an unknown model name; this is both that and clipzoo's error."""


def is_open_clip_name(name: str) -> bool:
    return REAL.get_model_config(name.replace("/", "-")) is not None


def open_clip_spelling(name: str) -> str | None:
    """open_clip's own architecture name that ``name`` spells in other letter case (``rn50`` → ``RN50``), if any."""
    key = name.replace("/", "-").lower()
    return next((arch for arch in REAL.list_models() if arch.lower() == key), None)


def hub_has_open_clip_config(repo: str, cache_dir) -> bool | None:
    """True / False when known (the config file is cached, or the repo is cached without it); None if unknown."""
    try:
        hub_file(repo, "open_clip_config.json", cache_dir)
        return True
    except ModelNotCachedError as exc:
        if getattr(exc, "missing_file", False):
            return False
    try:
        hub_file(repo, "config.json", cache_dir)
        return False
    except ModelNotCachedError:
        return None


def registry_only(card: ModelCard) -> bool:
    """A registry model that open_clip cannot name itself (not an open_clip pair, not OpenAI's nine)."""
    return not card.source.open_clip and not card.config.get("openai")


def _route_hub(model_name: str, pretrained: str | None, cache_dir) -> Route:
    repo = model_name[len("hf-hub:"):].strip("/")
    has = hub_has_open_clip_config(repo, cache_dir)
    if has is False:
        return Route(False, card=REGISTRY.resolve(model_name))
    if has is None:  # not cached at all: a registry model of another backend goes to clipzoo
        cards = [c for c in REGISTRY if c.source.hf_repo and c.source.hf_repo.lower() == repo.lower()]
        if cards and cards[0].backend not in ("open_clip", "auto"):
            return Route(False, card=cards[0])
    return Route(True, model_name, pretrained)


def route(model_name: Any, pretrained: str | None, cache_dir=None) -> Route:
    """open_clip's own names, schemas and (model, tag) pairs go to open_clip; the rest to clipzoo."""
    if isinstance(model_name, os.PathLike):
        model_name = os.fspath(model_name)
    if isinstance(model_name, ModelCard):
        card = model_name
    else:
        if not isinstance(model_name, str):
            raise TypeError(f"model_name must be a string, got {type(model_name).__name__}")
        if model_name.startswith("local-dir:"):
            return Route(True, model_name, pretrained)
        if model_name.startswith("hf-hub:"):
            return _route_hub(model_name, pretrained, cache_dir)
        if is_open_clip_name(model_name):
            return Route(True, model_name, pretrained)
        spelled = open_clip_spelling(model_name)
        if spelled is not None:  # open_clip's names are case-sensitive; a registry match would load weights
            raise NotFound(f"Model config for '{model_name}' not found: open_clip's architecture names are "
                           f"case-sensitive — did you mean '{spelled}'?")
        try:
            card = REGISTRY.resolve(model_name)
        except (UnknownModelError, AmbiguousModelError) as exc:
            raise NotFound(f"Model config for '{model_name}' not found in open_clip's built-ins nor in "
                           f"clipzoo's registry: {exc}") from None
    if card.source.open_clip:
        name, tag = card.source.open_clip
        if pretrained and tag and pretrained != tag:
            raise UnsupportedError(f"{card.alias} names open_clip's {name}/{tag}; pretrained={pretrained!r} "
                                   "contradicts it — pass the open_clip name and tag instead")
        return Route(True, name, pretrained or tag or None, card)
    if pretrained and pretrained.lower() != card.publisher.lower():
        raise UnsupportedError(f"{card.alias} names its weights already; pretrained={pretrained!r} does not "
                               f"apply to it (leave it out, or pass {card.publisher!r} as "
                               "list_registry_pretrained() does)")
    return Route(False, card=card)
