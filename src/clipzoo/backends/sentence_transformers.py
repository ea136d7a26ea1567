"""sentence-transformers backend: a SentenceTransformer text tower, with images from a paired model.

Two kinds of folder load here:

- a CLIP SentenceTransformer (e.g. ``sentence-transformers/clip-ViT-B-32``: one module wrapping an HF
  ``CLIPModel``) has both towers itself;
- a text-only SentenceTransformer distilled into a CLIP space (e.g. ``clip-ViT-B-32-multilingual-v1``:
  DistilBERT, mean pooling, Dense) is paired with an image model — ``image_model=`` (a spec, a folder
  or an already loaded Comparator) or the card's ``config["image_model"]``. Similarity then uses the
  image model's logit scale. Without one, the model is text-only (cosine similarity, scale 1).

Texts and images go through the SentenceTransformer's own modules (Transformer, Pooling, Dense, …),
so features are exactly those of ``SentenceTransformer.encode``.
"""
from __future__ import annotations

from typing import Any

import torch

from ..cards import IMAGE, TEXT, ModelCard
from ..comparator import Comparator, resolve_dtype
from ..errors import CheckpointError, UnsupportedError
from ..extras import require
from ..inputs import text_items
from ..models.text_towers import embedding_dim
from .transformers import (
    FAMILIES,
    HFImageTransform,
    attention_mask,
    image_size_of,
    model_folder,
    tokenize_with,
    trim_padding,
)


class SentenceTransformerComparator(Comparator):
    """``model`` is the SentenceTransformer; ``image_tower`` the paired Comparator (None when the
    SentenceTransformer encodes images itself, or when there is no image side)."""

    def __init__(self, card: ModelCard, model, *, image_tower: Comparator | None, own_images: bool,
                 transform, embed_dim: int, image_size, context_length: int):
        modalities = (IMAGE, TEXT) if (image_tower is not None or own_images) else (TEXT,)
        super().__init__(card, model, transform=transform, embed_dim=embed_dim, image_size=image_size,
                         context_length=context_length, modalities=modalities)
        self.image_tower = image_tower
        self.own_images = own_images
        first = model[0]
        self.hf_tokenizer = model.tokenizer
        processor = getattr(first, "processor", None)
        self.image_processor = getattr(processor, "image_processor", None) if own_images else \
            getattr(image_tower, "image_processor", None)
        model_type = getattr(getattr(getattr(first, "model", None), "config", None), "model_type", None)
        family = FAMILIES.get(model_type)
        self.mask_kind = family.mask if family is not None else "pad"
        self.lower_case = bool(getattr(first, "do_lower_case", False))
        if image_tower is not None:
            self.probability = image_tower.probability

    @property
    def hf_model(self):
        """The transformers model inside the first module (DistilBERT, CLIPModel, …)."""
        return getattr(self.model[0], "model", None)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        tok = self.hf_tokenizer
        mask = attention_mask(tokens, self.mask_kind, tok.pad_token_id, tok.eos_token_id)
        tokens, mask = trim_padding(tokens, mask, tok.padding_side)
        features = {"input_ids": tokens, "modality": "text"}
        if mask is not None:
            features["attention_mask"] = mask
        return self.model(features)["sentence_embedding"]

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.image_tower is not None:
            return self.image_tower.encode_pixels(pixels)
        if not self.own_images:
            raise UnsupportedError(f"{self.card.alias} has no image tower; pair it with one: "
                                   "clipzoo.load(…, image_model='sentence-transformers/clip-ViT-B-32')")
        return self.model({"pixel_values": pixels, "modality": "image"})["sentence_embedding"]

    def tokenize(self, texts: str | list[str], truncate: bool = False) -> torch.Tensor:
        texts = text_items(texts)
        if self.lower_case:  # sentence-transformers lower-cases before tokenising when configured so
            texts = [t.lower() for t in texts]
        return tokenize_with(self.hf_tokenizer, texts, self.context_length, truncate)

    def logit_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.image_tower is not None:
            return self.image_tower.logit_params()
        hf = self.hf_model
        scale = getattr(hf, "logit_scale", None)
        if scale is None:  # text-only: plain cosine similarity
            return torch.ones((), device=self.device), None
        bias = getattr(hf, "logit_bias", None)
        return scale.exp().reshape(()), (None if bias is None else bias.reshape(()))


def sentence_transformers_module():
    """The sentence-transformers package; when absent, a MissingExtraError naming ``clipzoo[sbert]``."""
    return require("sentence_transformers", "the sentence_transformers backend")


NEEDS_LOADER = True  # an image_model spec is loaded through the loader the composition root passes in


def _pair(image_model: Any, *, loader, device, precision, cache_dir, trust_pickle) -> Comparator:
    if isinstance(image_model, Comparator):
        return image_model
    if loader is None:
        raise UnsupportedError("image_model given as a spec needs a loader: load through clipzoo.load, or pass "
                               "a loaded Comparator")
    return loader(image_model, device=device, precision=precision, cache_dir=cache_dir, trust_pickle=trust_pickle)


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, image_model: Any = None, loader: Any = None,
         **kwargs: Any) -> SentenceTransformerComparator:
    """Load a SentenceTransformer folder (local or from the hub cache) as a Comparator.

    ``image_model``: the image side for a text-only tower — any spec ``clipzoo.load`` takes (hub id, alias,
    local folder) or a loaded Comparator; defaults to ``card.config["image_model"]``. ``context_length``
    overrides the text context (default: the model's ``max_seq_length``).
    """
    context_override = kwargs.pop("context_length", None)
    if kwargs:
        raise TypeError(f"unexpected keyword(s) for the sentence_transformers backend: {', '.join(sorted(kwargs))}")
    st = sentence_transformers_module()
    folder = model_folder(card, cache_dir)
    if not (folder / "modules.json").exists():
        raise CheckpointError(f"{folder} has no modules.json, so it is not a sentence-transformers folder")
    try:
        model = st.SentenceTransformer(str(folder), device=str(device), local_files_only=True,
                                       trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load {folder} as a SentenceTransformer ({first})") from None
    model.to(device=device, dtype=resolve_dtype(precision)).eval()

    first = model[0]
    own_images = "image" in (getattr(first, "modality_config", None) or {})
    image_model = image_model if image_model is not None else (None if own_images else card.config.get("image_model"))
    image_tower = None
    if image_model is not None:
        image_tower = _pair(image_model, loader=loader, device=device, precision=precision, cache_dir=cache_dir,
                            trust_pickle=trust_pickle)
        if IMAGE not in image_tower.modalities:
            raise UnsupportedError(f"image_model {image_tower.card.alias} has no image tower")
        own_images = False

    if image_tower is not None:
        transform, image_size = image_tower.transform, image_tower.image_size
    elif own_images:
        transform = HFImageTransform(first.processor.image_processor)
        image_size = image_size_of(transform)
    else:
        transform, image_size = _no_images, None

    embed_dim = embedding_dim(model)
    if image_tower is not None and image_tower.embed_dim != embed_dim:
        raise UnsupportedError(f"image_model {image_tower.card.alias} embeds into {image_tower.embed_dim} "
                               f"dimensions but the text tower of {card.alias} into {embed_dim}; pair it "
                               "with the image model it was trained against")
    known = [c for c in (card.context_length, model.max_seq_length) if c]
    context_length = context_override or (min(known) if known else model.tokenizer.model_max_length)
    return SentenceTransformerComparator(card, model, image_tower=image_tower, own_images=own_images,
                                         transform=transform, embed_dim=embed_dim, image_size=image_size,
                                         context_length=int(context_length))


def _no_images(image):
    raise UnsupportedError("this sentence-transformers model has no image tower; load it with image_model=…")
