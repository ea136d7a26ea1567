"""The ``towers`` table of a compositional model, checked before anything is built (torch-free)::

    {"image": {"source": "timm", "name": "resnet18"},                 # timm | torchvision | open_clip
     "text": {"source": "hf", "name": "bert-base-uncased", "pooling": "mean"},  # hf | sentence_transformers | open_clip
     "image_head": {"kind": "mlp", "layers": 2}, "text_head": {"kind": "linear"},
     "embed_dim": 256, "logit_bias": null}

Image tower keys: ``source``, ``name`` (or, for open_clip, ``config``: a model config dict), ``pretrained``
(timm / torchvision / open_clip weights; default false), ``image_size``, ``mean``, ``std``, ``kwargs`` (more
constructor arguments). Text tower keys: ``source``, ``name`` (a hub id or a local folder; open_clip: a model
config name, or ``config``), ``pooling`` (hf: ``cls`` | ``mean`` | ``pooler``), ``pretrained`` (hf /
sentence-transformers: load the folder's weights, default true; open_clip: a pretrained tag), ``context_length``.
"""
from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any

from ..errors import ClipzooError

__all__ = ["ConfigError", "check_towers", "MARKER", "WEIGHTS", "IMAGE_SOURCES", "TEXT_SOURCES"]

MARKER = "clipzoo_composite.json"
"""The file that makes a folder a composite model (the towers spec and preprocessing)."""
WEIGHTS = "model.safetensors"
"""All weights of a composite folder (adapters already merged)."""

TOP_KEYS = ("image", "text", "image_head", "text_head", "embed_dim", "logit_bias")
CODE_OPTIONS = frozenset({"trust_remote_code", "code_revision"})
"""Keyword arguments that let transformers / sentence-transformers run a model folder's own Python."""
IMAGE_KEYS = ("source", "name", "config", "pretrained", "image_size", "mean", "std", "kwargs")
TEXT_KEYS = ("source", "name", "config", "pretrained", "pooling", "context_length", "kwargs")
IMAGE_SOURCES = ("timm", "torchvision", "open_clip")
TEXT_SOURCES = ("hf", "sentence_transformers", "open_clip")
SOURCE_ALIASES = {"transformers": "hf", "huggingface": "hf", "sentence-transformers": "sentence_transformers",
                  "sbert": "sentence_transformers", "st": "sentence_transformers", "open-clip": "open_clip",
                  "openclip": "open_clip"}
POOLINGS = ("cls", "mean", "pooler")


class ConfigError(ClipzooError, ValueError):
    """A training configuration that cannot be used: unknown key, bad value, mismatched resume."""


def _keys(spec: Mapping[str, Any], valid: tuple[str, ...], where: str) -> None:
    for key in spec:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _tower(towers: dict[str, Any], side: str, valid: tuple[str, ...], sources: tuple[str, ...]) -> dict[str, Any]:
    spec = towers.get(side)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"towers.{side} is missing: give its source ({' | '.join(sources)}) and name")
    spec = dict(spec)
    _keys(spec, valid, f"towers.{side}")
    source = str(spec.get("source", "")).lower()
    source = SOURCE_ALIASES.get(source, source)
    if source not in sources:
        raise ConfigError(f"towers.{side}.source must be one of {', '.join(sources)}, got {spec.get('source')!r}")
    if not spec.get("name") and not spec.get("config"):
        raise ConfigError(f"towers.{side}: give its name" + (" (or config)" if source == "open_clip" else ""))
    kwargs = spec.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigError(f"towers.{side}.kwargs must be a table of keyword arguments, got {kwargs!r}")
    code = sorted(CODE_OPTIONS & set(kwargs or {}))
    if code:  # a saved composite folder's clipzoo_composite.json ran the folder's own Python through these
        raise ConfigError(f"towers.{side}.kwargs: {', '.join(code)} is refused; loading a model never runs code "
                          "from its files (use a model whose architecture transformers ships)")
    spec["source"] = source
    return spec


def check_towers(towers: Any) -> dict[str, Any]:
    """The ``towers`` config with its keys checked and sources normalised (raises :class:`ConfigError`)."""
    if not isinstance(towers, Mapping):
        raise ConfigError(f"towers must be a table with image / text / image_head / text_head / embed_dim, "
                          f"got {type(towers).__name__}")
    towers = copy.deepcopy(dict(towers))
    _keys(towers, TOP_KEYS, "towers")
    towers["image"] = _tower(towers, "image", IMAGE_KEYS, IMAGE_SOURCES)
    towers["text"] = _tower(towers, "text", TEXT_KEYS, TEXT_SOURCES)
    pooling = towers["text"].get("pooling")
    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"towers.text.pooling must be cls, mean or pooler, got {pooling!r}")
    if towers.get("embed_dim") is not None and int(towers["embed_dim"]) < 1:
        raise ConfigError(f"towers.embed_dim must be positive, got {towers['embed_dim']}")
    return towers
