"""``clipzoo.load``: any spec -> a ready :class:`~clipzoo.comparator.Comparator`."""
from __future__ import annotations

import os
from typing import Any

from .backends import get_backend
from .cards import ModelCard, Source
from .checkpoints import sniff_folder
from .download import fetch_remote, hub_file, remote_protocol
from .errors import ModelNotCachedError
from .registry import REGISTRY


def load(spec: "str | ModelCard | os.PathLike", device: str = "cpu", precision: str = "fp32",
         cache_dir: "str | os.PathLike | None" = None, trust_pickle: bool = False, runtime: str = "eager",
         **kwargs: Any):
    """Load a model by any spec form and return its Comparator.

    spec: ``"[clip - openai - ViT-B/32]"`` | ``"openai/ViT-B-32"`` | ``"open_clip:ViT-B-32/laion2b_s34b_b79k"``
    | ``"hf-hub:org/name"`` | a local file (.pt/.pth/.bin/.safetensors, OpenAI TorchScript) | a local folder
    | a file or folder at an fsspec URL (``s3://bucket/run/model``; copied into ``cache_dir`` once).
    Extra keywords go to the backend (e.g. ``model_name="ViT-B-32"`` for a bare open_clip state dict).
    ``runtime``: ``"eager"`` (default), ``"compile"``, ``"onnx"``, ``"int8"`` (``"onnx-int8"``,
    ``"torch-int8"``) — see :mod:`clipzoo.runtime`. ONNX runtimes export once into ``cache_dir``/onnx.
    """
    if isinstance(spec, str) and remote_protocol(spec.strip()):
        spec = str(fetch_remote(spec.strip(), cache_dir))  # s3://, gs://, …: a local copy, then as a path
    if runtime not in ("eager", "torch", None):
        from .runtime import load_with_runtime

        return load_with_runtime(spec, runtime, device=str(device), precision=precision, cache_dir=cache_dir,
                                 trust_pickle=trust_pickle, **kwargs)
    card = REGISTRY.resolve(spec)
    if card.config.get("embedded"):
        from .catalog.embedded import materialise

        card = card.replace(source=Source(path=str(materialise(card.config["embedded"], cache_dir))))
    card = resolve_backend(card, cache_dir)
    backend = get_backend(card.backend)
    comparator = backend.load(card, device=str(device), precision=precision, cache_dir=cache_dir,
                              trust_pickle=trust_pickle, **kwargs)
    return comparator


def resolve_backend(card: ModelCard, cache_dir) -> ModelCard:
    """Decide the backend of a card whose backend is 'auto' (local paths, unknown hub repos)."""
    if card.backend != "auto":
        return card
    src = card.source
    if src.path:
        backend = sniff_folder(src.path) if os.path.isdir(src.path) else "open_clip"
        return card.replace(backend=backend)
    if src.hf_repo:
        try:
            hub_file(src.hf_repo, "open_clip_config.json", cache_dir)
            return card.replace(backend="open_clip")
        except ModelNotCachedError as exc:
            if not getattr(exc, "missing_file", False):
                # offline: go on only if the files of another backend are cached
                for name in ("config.json", "modules.json"):
                    try:
                        hub_file(src.hf_repo, name, cache_dir)
                        break
                    except ModelNotCachedError:
                        continue
                else:
                    raise exc from None
        try:
            hub_file(src.hf_repo, "modules.json", cache_dir)
            return card.replace(backend="sentence_transformers")
        except ModelNotCachedError:
            pass
        return card.replace(backend="transformers")
    return card.replace(backend="open_clip")  # a URL, or an open_clip pair
