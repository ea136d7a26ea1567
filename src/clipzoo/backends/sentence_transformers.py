"""sentence-transformers backend: a SentenceTransformer text tower, with images from a paired model.

Two kinds of folder load here:

- a CLIP SentenceTransformer (e.g. ``sentence-transformers/clip-ViT-B-32``: one module wrapping an HF
  ``CLIPModel``) has both towers itself;
- a text-only SentenceTransformer distilled into a CLIP space (e.g. ``clip-ViT-B-32-multilingual-v1``:
  DistilBERT, mean pooling, Dense) is paired with an image model — ``image_model=`` (a spec, a folder
  or an already loaded Comparator) or the card's ``config["image_model"]``. Similarity then uses the
  image model's logit scale. Without one, the model is text-only (cosine similarity, scale 1).

Texts and images go through the SentenceTransformer's own modules (Transformer, Pooling, Dense, …),
so features are exactly those of ``SentenceTransformer.encode``: a ``default_prompt_name`` in
config_sentence_transformers.json puts its prompt before every text, as ``encode`` does (and Pooling with
``include_prompt: false`` leaves the prompt's tokens out).

Before the folder is handed to sentence-transformers, modules.json and each module's folder are checked (no fifo,
readable safetensors headers, a Transformer config that builds what its weights hold) and what the library raises
on a bad module file becomes one line.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..cards import IMAGE, TEXT, ModelCard
from ..checkpoints import read_json_value, refuse_special_files
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
from .transformers_checks import (
    check_config_fits,
    check_image_fits,
    pickle_refusal,
    processor_source,
    transformers_module,
    weights_numel,
)


class SentenceTransformerComparator(Comparator):
    """``model`` is the SentenceTransformer; ``image_tower`` the paired Comparator (None when the
    SentenceTransformer encodes images itself, or when there is no image side)."""

    def __init__(self, card: ModelCard, model, *, image_tower: Comparator | None, own_images: bool,
                 transform, embed_dim: int, image_size, context_length: int, prompt: str | None = None):
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
        self.prompt = prompt or None  # the default prompt put before every text, as SentenceTransformer.encode does
        self.prompt_length = _prompt_length(self.hf_tokenizer, prompt) if prompt else None

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
        if self.prompt_length is not None:  # Pooling(include_prompt=False) leaves the prompt's tokens out
            features["prompt_length"] = self.prompt_length
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
        if self.prompt:
            texts = [self.prompt + t for t in texts]
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


def _prompt_length(tokenizer, prompt: str) -> int:
    """The prompt's length in tokens less a trailing special token (EOS, SEP), as sentence-transformers measures it
    for ``Pooling(include_prompt=False)``."""
    ids = tokenizer(prompt)["input_ids"]
    return len(ids) - (1 if ids and ids[-1] in set(tokenizer.all_special_ids) else 0)


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
    check_modules(folder)
    try:
        model = st.SentenceTransformer(str(folder), device=str(device), local_files_only=True,
                                       trust_remote_code=False)
    except pickle.UnpicklingError as exc:  # torch's weights-only load of a module's pytorch_model.bin refused it
        raise pickle_refusal(folder, exc, "sentence_transformers") from None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError,
            SafetensorError) as exc:  # a module's config of wrong types or shape: TypeError, AttributeError, …
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load {folder} as a SentenceTransformer ({type(exc).__name__}: {first})") \
            from None
    model.to(device=device, dtype=resolve_dtype(precision)).eval()
    prompt = (model.prompts or {}).get(model.default_prompt_name) if model.default_prompt_name else None

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
        source = processor_source(folder / _modules(folder)[0].get("path", ""))
        image_size = image_size_of(transform, source)
        check_image_fits(image_size, source, getattr(getattr(first, "model", None), "config", None))
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
                                         context_length=int(context_length), prompt=prompt)


TRANSFORMER_MODULES = ("Transformer", "CLIPModel")
"""Module types (the last part of modules.json ``type``) that wrap a transformers model read by ``AutoModel``."""


def _modules(folder: Path) -> list[dict]:
    """modules.json's modules; a CheckpointError when it is not a list of them (``[1]`` was a raw TypeError; a fifo
    there hung the load)."""
    modules = read_json_value(folder / "modules.json")
    if not isinstance(modules, list) or not modules or not all(
            isinstance(m, dict) and isinstance(m.get("path", ""), str) and isinstance(m.get("type", ""), str)
            for m in modules):
        raise CheckpointError(f"{folder / 'modules.json'} is not a list of modules (objects with a 'path' and a "
                              "'type'); save the model again with SentenceTransformer.save")
    return modules


def check_modules(folder: Path) -> None:
    """Each module folder checked before sentence-transformers reads it: no fifo among its files, its safetensors
    headers whole (an empty or truncated model.safetensors was a raw SafetensorError), and a Transformer module's
    config.json built and counted on the meta device against its weights."""
    refuse_special_files(folder)
    for module in _modules(folder):
        module_dir = folder / module.get("path", "")
        if not module_dir.is_dir():
            continue  # sentence-transformers says what is missing
        refuse_special_files(module_dir)
        if module.get("type", "").rsplit(".", 1)[-1] in TRANSFORMER_MODULES and (module_dir / "config.json").is_file():
            check_config_fits(module_dir, transformers_module().AutoModel)
        else:
            weights_numel(module_dir)


def _no_images(image):
    raise UnsupportedError("this sentence-transformers model has no image tower; load it with image_model=…")
