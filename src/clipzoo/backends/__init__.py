"""Backends: one module per implementation, imported only when a model of theirs is loaded.

Each module defines ``load(card, *, device, precision, cache_dir, trust_pickle, **kwargs) -> Comparator``.
A backend that loads a second model (sentence-transformers' image side) sets ``NEEDS_LOADER = True`` and
receives ``loader=`` (``clipzoo.api.load``) from the composition root; no backend imports ``api``.
Adding a backend is one module here plus one line in :data:`BACKENDS` (docs/architecture.md).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ClipzooError
from ..extras import missing

# backend name -> (module, the import names whose absence means "install the extra")
BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "open_clip": ("clipzoo.backends.open_clip", ("open_clip",)),
    "transformers": ("clipzoo.backends.transformers", ("transformers",)),
    "clap": ("clipzoo.backends.clap", ("transformers", "soundfile")),
    "sentence_transformers": ("clipzoo.backends.sentence_transformers", ("sentence_transformers", "transformers")),
    "onnx": ("clipzoo.backends.onnx", ("onnxruntime", "onnx")),
    "composite": ("clipzoo.backends.composite", ("timm", "transformers", "sentence_transformers", "peft")),
    "jax": ("clipzoo.backends.jax", ("jax", "jaxlib", "flax")),
    "mindspore": ("clipzoo.backends.mindspore", ("mindspore",)),
    "slip": ("clipzoo.backends.slip", ("timm", "torchvision")),
    "kelip": ("clipzoo.backends.kelip", ("open_clip", "transformers")),
    "clip_fa": ("clipzoo.backends.clip_fa", ("transformers",)),
    "cloob": ("clipzoo.backends.cloob", ("open_clip", "numpy")),
    "hf_family": ("clipzoo.backends.transformers_families", ("transformers",)),
    "hf_video": ("clipzoo.backends.transformers_video", ("transformers",)),
}


def get_backend(name: str) -> ModuleType:
    """The module of backend ``name``; a missing optional package is a one-line error naming its extra."""
    try:
        module_name, packages = BACKENDS[name]
    except KeyError:
        raise ClipzooError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}") from None
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        root = (exc.name or "").split(".")[0]
        if root in packages:
            raise missing(root, f"backend {name!r}") from None
        raise
