"""Which model an index records: the spec that reloads it (and its alias), and for a local model a fingerprint of
its files, so that other weights at the same path are never mixed into the index."""
from __future__ import annotations

import os
from typing import Any

from ..errors import ClipzooError
from ..files import model_fingerprint  # the core layer's: the runtimes' caches key local models by it too
from .embedding_store import EmbeddingStore

__all__ = ["WEIGHTS_META", "check_weights", "check_recorded_weights", "model_fingerprint", "model_identity",
           "weights_changed"]


def model_identity(model: Any) -> tuple[str, str | None]:
    """``(spec to reload it, card alias or None)`` of a spec string or a Comparator, loading nothing.

    A spec string that names an existing file or folder becomes its absolute path; its alias is only
    known once loaded (or resolved, see :meth:`EmbeddingStore.check_model`)."""
    if isinstance(model, (str, os.PathLike)):
        spec = os.fspath(model)
        if os.path.exists(os.path.expanduser(spec)):
            spec = os.path.abspath(os.path.expanduser(spec))
        return spec, None
    card = getattr(model, "card", None)
    if card is None:
        raise ClipzooError(f"model must be a spec string or a clipzoo Comparator, not a {type(model).__name__}")
    if card.source.path:
        spec = os.path.abspath(card.source.path)
    elif getattr(model, "spec", None):
        spec = str(model.spec)
    else:
        spec = card.alias
    return spec, card.alias


WEIGHTS_META = "model_weights"  # the fingerprint of a local model's files (model_fingerprint)


def check_weights(store: EmbeddingStore, spec: str) -> None:
    """A local model (a file or folder named by its path) whose files changed since the index recorded them is
    refused: other weights at the same path were mixed into the index without a word. Recorded on first use."""
    now = model_fingerprint(spec)
    old = store.get_meta(WEIGHTS_META)
    if now is None:
        return
    if old is None:
        store.set_meta(**{WEIGHTS_META: now})
    elif old != now:
        raise ClipzooError(f"{weights_changed(spec, store.path)}; embeddings of different weights cannot be mixed: "
                           "pass a new --out")


def weights_changed(spec: str, index: "str | os.PathLike") -> str:
    """The start of the one line for a local model whose files changed since ``index`` recorded them."""
    return (f"the model at {spec!r} is not the one index {os.fspath(index)!r} was built with: its files changed "
            "since (other weights at the same path)")


def check_recorded_weights(store: Any, spec: str) -> None:
    """For a reader (search, serve): queries embedded by other weights than the index's vectors were made with
    would be meaningless, so a local model whose files changed since the build is refused (``store``: anything
    with ``get_meta`` and ``path``). Costs what :func:`model_fingerprint` reads: 2 MiB a file."""
    old = store.get_meta(WEIGHTS_META)
    if old is None or not spec:
        return
    now = model_fingerprint(spec)
    if now is not None and now != old:
        raise ClipzooError(f"{weights_changed(spec, store.path)}; queries embedded by them would not match the "
                           "index's vectors: put the original weights back, or build the index again with these "
                           "(a new --out)")
