"""Backends: one module per implementation, imported only when a model of theirs is loaded.

Each module defines ``load(card, *, device, precision, cache_dir, trust_pickle, **kwargs) -> Comparator``.
"""
from __future__ import annotations

import importlib

from ..errors import BackendMissingError, ClipzooError

BACKENDS = {
    "open_clip": ("clipzoo.backends.open_clip", "open_clip_torch"),
    "transformers": ("clipzoo.backends.transformers", "transformers"),
    "clap": ("clipzoo.backends.clap", "transformers"),
    "sentence_transformers": ("clipzoo.backends.sentence_transformers", "sentence-transformers"),
    "onnx": ("clipzoo.backends.onnx", "onnxruntime"),
    "composite": ("clipzoo.backends.composite", "torch"),
}


def get_backend(name: str):
    try:
        module_name, package = BACKENDS[name]
    except KeyError:
        raise ClipzooError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}") from None
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in (package.replace("-", "_"), "open_clip", "transformers",
                                                     "sentence_transformers"):
            raise BackendMissingError(f"backend {name!r} needs {package}, which is not installed; "
                                      f"pip install 'clipzoo[all]' or pip install {package}") from None
        raise
