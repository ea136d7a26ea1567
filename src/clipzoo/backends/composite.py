"""composite backend: compositional models clipzoo trained (an image tower from timm / torchvision / open_clip, a
text tower from transformers / sentence-transformers / open_clip, projection heads).

A composite folder is what :func:`clipzoo.models.composite.save_composite` writes: ``clipzoo_composite.json`` (the
towers spec and preprocessing), ``model.safetensors`` (all weights, adapters already merged) and, for HF /
sentence-transformers text towers, ``text/`` (the tower's config and tokenizer files). Loading builds the towers
from that spec (no download, no pretrained weights) and loads the weights strictly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..cards import ModelCard
from ..comparator import Comparator, resolve_dtype
from ..errors import BackendMissingError, CheckpointError
from ..models.composite import composite_transforms, load_composite
from ..models.spec import MARKER


class CompositeComparator(Comparator):
    """A :class:`~clipzoo.models.composite.CompositeCLIP` behind the Comparator API."""

    def __init__(self, card: ModelCard, model: torch.nn.Module, *, transform, tokenizer, preprocess_config: dict):
        size = preprocess_config.get("size")
        size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else (tuple(size) if size else None)
        super().__init__(card, model, transform=transform, embed_dim=model.embed_dim, image_size=size,
                         context_length=tokenizer.context_length)
        self.tokenizer = tokenizer
        self.preprocess_config = dict(preprocess_config)
        if model.logit_bias is not None:
            self.probability = "sigmoid"

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens.long())

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        return self.tokenizer(texts, truncate=truncate)

    def logit_params(self):
        bias = self.model.logit_bias
        return self.model.logit_scale.exp(), (None if bias is None else bias)


def comparator_for(card: ModelCard, module: torch.nn.Module, tokenizer, preprocess: dict) -> CompositeComparator:
    _, eval_tf = composite_transforms(preprocess)
    return CompositeComparator(card, module, transform=eval_tf, tokenizer=tokenizer, preprocess_config=preprocess)


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None, trust_pickle: bool = False,
         **kwargs: Any) -> CompositeComparator:
    """Load a composite folder (``card.source.path``) as a Comparator."""
    if kwargs:
        raise TypeError(f"unexpected keyword(s) for the composite backend: {', '.join(sorted(kwargs))}")
    path = Path(card.source.path or "")
    if not (path / MARKER).exists():
        raise CheckpointError(f"{path} has no {MARKER}, so it is not a clipzoo composite model folder")
    try:
        module, tokenizer, preprocess, _ = load_composite(path)
    except ImportError as exc:  # a tower library that is not installed
        raise BackendMissingError(f"{path} needs {exc.name or 'a package that is not installed'}; "
                                  "pip install 'clipzoo[train]'") from None
    module.to(device=device, dtype=resolve_dtype(precision)).eval()
    return comparator_for(card, module, tokenizer, preprocess)
