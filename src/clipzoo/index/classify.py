"""Image -> text over a vocabulary: zero-shot classification with cached vocabulary embeddings.

The vocabulary's prompt embeddings (``fill_template(template, label)``) are computed once per (model weights,
vocabulary, template) and kept as their own small FAISS index (exact inner product) with the labels in
a JSON beside it, under ``cache_dir`` (default ``~/.cache/clipzoo/vocab``)::

    from clipzoo.index import classify_images, load_vocabulary
    labels = load_vocabulary("vocab.txt")
    classify_images(model, ["cat.jpg"], labels, k=3)   # [[("cat", 0.91), ("dog", 0.05), ...]]
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..api import load
from ..cards import IMAGE
from ..constants import DEFAULT_TEMPLATE, default_cache_dir
from ..errors import BadTextError, ClipzooError
from ..files import NOT_REGULAR, atomic_write, special_file
from ..templates import fill_template, repeated_label, require_placeholder
from .search import check_k, image_from_bytes
from .stores.faiss_kinds import import_faiss

__all__ = ["load_vocabulary", "classify_images", "vocabulary_embeddings", "default_vocab_cache", "check_template"]

_MEMORY: dict[str, np.ndarray] = {}  # folder:key -> embeddings, this process


def default_vocab_cache() -> Path:
    """Where vocabulary embeddings are cached by default: ``<clipzoo cache>/vocab``."""
    return default_cache_dir() / "vocab"


def load_vocabulary(path: "str | os.PathLike") -> list[str]:
    """Labels from a ``.txt`` (one a line; blank lines and ``#`` comments ignored) or a ``.json`` (a list
    of strings, or ``{"labels": [...]}``)."""
    path = Path(os.path.expanduser(os.fspath(path)))
    fix = "pass a .txt with one label a line, or a .json list of labels"
    if not path.exists():
        raise ClipzooError(f"vocabulary {str(path)!r} does not exist; {fix}")
    if path.is_dir():
        raise ClipzooError(f"vocabulary {str(path)!r} is a folder; {fix}")
    if special_file(path):
        raise ClipzooError(f"vocabulary {str(path)!r} {NOT_REGULAR}; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ClipzooError(f"vocabulary {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "save it as UTF-8") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ClipzooError(f"vocabulary {str(path)!r} is not valid JSON ({exc}); {fix}") from None
        if isinstance(data, dict):
            if "labels" not in data:
                raise ClipzooError(f"vocabulary {str(path)!r} is a JSON object without \"labels\"; "
                                   "write {\"labels\": [\"cat\", \"dog\"]} or a plain list")
            data = data["labels"]
        if not isinstance(data, list):
            raise ClipzooError(f"vocabulary {str(path)!r} must hold a JSON list of strings, not a "
                               f"{type(data).__name__}")
        for i, label in enumerate(data):
            if not isinstance(label, str):
                raise ClipzooError(f"vocabulary {str(path)!r}: entry {i} is a {type(label).__name__}, not a string")
        labels = [s.strip() for s in data if s.strip()]
    elif path.suffix.lower() in (".txt", ""):
        labels = [line.strip() for line in text.splitlines()]
        labels = [s for s in labels if s and not s.startswith("#")]
    else:
        raise ClipzooError(f"vocabulary {str(path)!r} has an unknown extension {path.suffix!r}; {fix}")
    if not labels:
        raise ClipzooError(f"vocabulary {str(path)!r} holds no labels; {fix}")
    repeated = repeated_label(labels)
    if repeated:
        raise ClipzooError(f"vocabulary {str(path)!r} lists {repeated}; keep each label once")
    return labels


def check_template(template: str) -> str:
    """``template`` if it is plain text with a ``{}`` (or ``{label}``) for the label and no other brace;
    a ClipzooError naming it otherwise (templates are data, never ``str.format`` strings)."""
    return require_placeholder(template)


def _fingerprint(model: Any) -> str:
    """A hash of the model's card and a sample of its weights (two local files at one path differ)."""
    cached = getattr(model, "_clipzoo_fingerprint", None)
    if cached:
        return cached
    h = hashlib.sha256(model.card.alias.encode("utf-8"))
    params = list(model.parameters())
    for p in params[:2] + params[-2:]:
        h.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    digest = h.hexdigest()
    try:
        object.__setattr__(model, "_clipzoo_fingerprint", digest)
    except Exception:  # noqa: BLE001 - a model that refuses attributes is hashed each time
        pass
    return digest


def vocabulary_embeddings(model: Any, labels: Sequence[str], template: str = DEFAULT_TEMPLATE,
                          cache_dir: "str | os.PathLike | None" = None) -> np.ndarray:
    """Normalised prompt embeddings [L, D] of ``labels``, read from / written to the vocabulary cache."""
    faiss = import_faiss()
    template = check_template(template)
    labels = list(labels)
    if not labels:
        raise BadTextError("the vocabulary is empty; give at least one label")
    key = hashlib.sha256(json.dumps([_fingerprint(model), template, labels], ensure_ascii=False)
                         .encode("utf-8")).hexdigest()[:32]
    folder = Path(cache_dir) if cache_dir is not None else default_vocab_cache()
    mem_key = f"{folder}:{key}"
    if mem_key in _MEMORY:
        return _MEMORY[mem_key]
    index_path, labels_path = folder / f"{key}.faiss", folder / f"{key}.json"
    x = None
    if index_path.is_file() and labels_path.is_file():
        try:
            index = faiss.read_index(str(index_path))
            stored = json.loads(labels_path.read_text("utf-8"))
            if stored.get("labels") == labels and index.ntotal == len(labels):
                x = index.reconstruct_n(0, index.ntotal)
        except (RuntimeError, OSError, ValueError):
            x = None  # a damaged cache entry is recomputed
    if x is None:
        prompts = [fill_template(template, label) for label in labels]
        x = model.encode_text(prompts, truncate=True).float().cpu().numpy()
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(np.ascontiguousarray(x, dtype=np.float32))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(labels_path, lambda f: f.write(json.dumps(
                {"model": model.card.alias, "template": template, "labels": labels}, ensure_ascii=False)
                .encode("utf-8")))
            atomic_write(index_path, lambda f: f.write(faiss.serialize_index(index).tobytes()))
        except OSError:
            pass  # a read-only cache only costs recomputation
    x = np.ascontiguousarray(x, dtype=np.float32)
    _MEMORY[mem_key] = x
    return x


def classify_images(model: Any, images: Any, labels: Sequence[str], template: str = DEFAULT_TEMPLATE, k: int = 5,
                    cache_dir: "str | os.PathLike | None" = None) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(label, probability)`` per image over ``labels`` (softmax, or sigmoid for SigLIP models).

    ``images``: one or a list of paths, PIL images or encoded bytes; ``model``: a Comparator or a spec.
    """
    import torch

    if isinstance(model, (str, os.PathLike)):
        model = load(os.fspath(model))
    k = check_k(k)
    labels = list(labels)
    if isinstance(images, (str, os.PathLike, bytes, bytearray)) or hasattr(images, "getpixel"):
        images = [images]
    images = [image_from_bytes(bytes(im), f"image {i}") if isinstance(im, (bytes, bytearray, memoryview)) else
              (os.fspath(im) if isinstance(im, os.PathLike) else im) for i, im in enumerate(images)]
    weights = torch.from_numpy(vocabulary_embeddings(model, labels, template, cache_dir))
    with torch.no_grad():  # the model's own scorer (BLIP-2: its ITC over the query vectors)
        probs = model.probabilities(model.score(images, weights, IMAGE)).float().cpu()
    top = probs.topk(min(k, len(labels)), dim=-1)
    return [[(labels[int(j)], float(p)) for p, j in zip(vals, idx)] for vals, idx in zip(top.values, top.indices)]
