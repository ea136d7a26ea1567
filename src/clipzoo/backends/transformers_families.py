"""Backend ``hf_family``: transformers' other image–text families, one generic mechanism over a table.

ALIGN, GroupViT, OWL-ViT, OWLv2, CLIPSeg (its CLIP features), MetaCLIP 2, AIMv2 (the text-aligned
``Aimv2Model``), TIPSv2, FLAVA and BLIP's ``BlipModel`` all expose ``get_image_features`` / ``get_text_features``
returning the projected features in ``pooler_output`` (FLAVA: at every position, its [CLS] one is used);
what differs is the model class, how text is
masked and how the logit scale is stored — rows of :data:`clipzoo.backends.hf_families.FAMILY_SPECS`.
Images go through each checkpoint's own image processor (EfficientNet's for ALIGN, OWLv2's
pad-to-square, ViT's for CLIPSeg, …) so preprocessing is transformers' own, pixel for pixel. BLIP's
retrieval checkpoints (``BlipForImageTextRetrieval``) give contrastive features from their ``vision_proj`` /
``text_proj`` and re-rank pairs with their image–text matching head (:meth:`FamilyComparator.rank`).

Cards with ``config.remote_code = true`` (jina-clip, nomic-embed-vision, LLM2CLIP) hold modelling code in
their hub repo; they load only with ``trust_remote_code=True`` and are refused before any download otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..cards import ModelCard
from ..comparator import resolve_dtype
from ..download import hub_snapshot
from ..errors import CheckpointError, ClipzooError, UnsupportedError
from .blip2 import load_blip2
from .hf_families import FAMILY_TABLE, FamilySpec
from .transformers import (
    HUB_PATTERNS,
    Family,
    HFComparator,
    HFImageTransform,
    attention_mask,
    embed_dim_of,
    hub_meta_model,
    image_size_of,
    load_hf_model,
    load_keywords,
    load_processors,
    model_folder,
    pretrained_config,
    text_context,
    transformers_module,
    trim_padding,
)


class RemoteCodeRefusedError(ClipzooError):
    """A model whose code lives in its hub repo was loaded without ``trust_remote_code=True``."""


class FamilyComparator(HFComparator):
    """An :class:`HFComparator` whose logit scale is read the family's way (see :class:`FamilySpec`)."""

    def __init__(self, card: ModelCard, model, *, spec: FamilySpec, **kwargs: Any):
        super().__init__(card, model, **kwargs)
        self.spec = spec

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.spec.features == "cls":
            return super().encode_pixels(pixels)[:, 0]
        if self.spec.features != "blip_itm":
            return super().encode_pixels(pixels)
        states = self.model.vision_model(pixel_values=pixels).last_hidden_state
        return self.model.vision_proj(states[:, 0, :])

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.spec.features == "cls":
            return super().encode_tokens(tokens)[:, 0]
        if self.spec.features != "blip_itm":
            return super().encode_tokens(tokens)
        tokens, mask = self.text_inputs(tokens)
        states = self.model.text_encoder(input_ids=tokens, attention_mask=mask).last_hidden_state
        return self.model.text_proj(states[:, 0, :])

    def text_inputs(self, tokens: torch.Tensor):
        tokens = tokens.long().to(self.device)
        mask = attention_mask(tokens, self.family.mask, self.pad_id, self.eos_id)
        return trim_padding(tokens, mask, self.hf_tokenizer.padding_side)

    @torch.no_grad()
    def rank(self, images, texts: "str | list[str]", truncate: bool = False) -> torch.Tensor:
        """Image–text matching probabilities, (n_images, n_texts): the ITM head's P(match) for every pair,
        the text attending to the image (BLIP's re-ranking step after contrastive retrieval)."""
        if self.spec.features != "blip_itm":
            raise UnsupportedError(f"{self.card.alias} has no image-text matching head; rank() needs a BLIP "
                                   "retrieval model (BlipForImageTextRetrieval)")
        pixels = self.pixels(images)
        states = self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype)).last_hidden_state
        tokens, mask = self.text_inputs(self.tokenize(texts, truncate=truncate))
        n, t = states.shape[0], tokens.shape[0]
        image_states = states.repeat_interleave(t, dim=0)
        image_mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=image_states.device)
        out = self.model.text_encoder(input_ids=tokens.repeat(n, 1), attention_mask=mask.repeat(n, 1),
                                      encoder_hidden_states=image_states, encoder_attention_mask=image_mask)
        logits = self.model.itm_head(out.last_hidden_state[:, 0, :]).float()
        return logits.softmax(-1)[:, 1].reshape(n, t)

    def logit_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = self.model
        if self.spec.logit == "unit":
            return torch.ones((), device=self.device), None
        if self.spec.logit == "temperature":
            return (1.0 / model.temperature).reshape(()), None
        log_scale = model.logit_scale
        if self.spec.logit == "clamped":
            log_scale = log_scale.clamp(0.0, model.max_log_logit_scale)
        return log_scale.exp().reshape(()), None


def refuse_remote_code(card: ModelCard, trusted: bool) -> None:
    """A remote-code card without ``trust_remote_code=True``: a one-line error, before anything is fetched."""
    if card.config.get("remote_code") and not trusted:
        where = card.source.hf_repo or card.source.path or card.alias
        raise RemoteCodeRefusedError(
            f"{card.alias} runs Python code from its hub repo {where!r} (its model class is not part of "
            "transformers), which clipzoo does not execute unasked; read that code, then pass "
            "trust_remote_code=True to load it")


def pick_spec(config: dict, hf_class: str | None, folder) -> FamilySpec:
    """The family row from ``hf_class`` when given, else from config.json ``architectures``, else ``model_type``."""
    return FAMILY_TABLE.pick(config, hf_class, folder)


def load_family_processors(folder: Path):
    """The folder's tokenizer and image processor. A ``tokenizer.json`` is a full vocabulary too (TIPSv2's
    tokenizer names a sentencepiece ``tokenizer.model`` it does not need once converted)."""
    if (folder / "tokenizer.json").exists():
        try:
            tokenizer = transformers_module().AutoTokenizer.from_pretrained(str(folder))
            image_processor = transformers_module().AutoImageProcessor.from_pretrained(str(folder))
            return tokenizer, image_processor
        except (OSError, ValueError, TypeError, KeyError):
            pass  # load_processors reports the problem in its own words
    return load_processors(folder)


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, **kwargs: Any) -> HFComparator:
    """Load one of the families of :data:`~clipzoo.backends.hf_families.FAMILY_SPECS` from a save_pretrained
    folder or the hub cache.

    Keywords: ``hf_class`` (the transformers class, default from config.json ``model_type``),
    ``context_length``, ``trust_remote_code`` (required for remote-code cards). ``trust_pickle`` is
    unused: weights are safetensors, or ``.bin`` read by transformers with ``weights_only=True``.
    """
    trusted = bool(kwargs.pop("trust_remote_code", False))
    refuse_remote_code(card, trusted)
    hf_class, context_override = load_keywords(card, kwargs, "hf_family")
    if card.config.get("remote_code"):
        return load_remote_code(card, remote_code_folder(card, cache_dir), device=device, precision=precision)
    folder, config = pretrained_config(card, cache_dir)
    spec = pick_spec(config, hf_class, folder)
    if spec.features == "blip2":
        return load_blip2(card, folder, spec, *load_family_processors(folder), device=device, precision=precision,
                          context_override=context_override)
    family = Family(spec.hf_class, mask=spec.mask)
    model = load_hf_model(folder, spec.hf_class, resolve_dtype(precision)).to(device)
    tokenizer, image_processor = load_family_processors(folder)
    transform = HFImageTransform(image_processor)
    dim = model.config.image_text_hidden_size if spec.features == "blip_itm" else embed_dim_of(model.config)
    return FamilyComparator(card, model, spec=spec, tokenizer=tokenizer, image_processor=image_processor,
                            family=family, transform=transform, embed_dim=int(dim),
                            image_size=image_size_of(transform),
                            context_length=text_context(model.config, tokenizer, card, context_override, family))


def remote_code_folder(card: ModelCard, cache_dir) -> Path:
    """A remote-code model's folder: a local path, or its hub snapshot including the ``*.py`` modelling files."""
    if card.source.hf_repo and not card.source.path:
        return hub_snapshot(card.source.hf_repo, cache_dir, allow_patterns=HUB_PATTERNS + ["*.py"])
    return model_folder(card, cache_dir)


def load_remote_code(card: ModelCard, folder, *, device: str, precision: str) -> HFComparator:
    """A trusted remote-code model: ``AutoModel(trust_remote_code=True)`` with its own
    ``get_image_features`` / ``get_text_features``, fed like a bidirectional text tower."""
    transformers = transformers_module()
    try:
        model = transformers.AutoModel.from_pretrained(str(folder), trust_remote_code=True,
                                                       dtype=resolve_dtype(precision)).eval().to(device)
    except (OSError, ValueError, ImportError) as exc:
        raise CheckpointError(f"cannot load {folder} with its remote code ({str(exc).splitlines()[0][:200]})") from None
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise UnsupportedError(f"{card.alias}: its remote model class {type(model).__name__} has no "
                               "get_image_features / get_text_features pair, so it cannot run as an image-text model")
    tokenizer, image_processor = load_family_processors(folder)
    family = Family(type(model).__name__, mask="pad")
    transform = HFImageTransform(image_processor)
    dim = getattr(model.config, "projection_dim", None) or card.embed_dim
    return HFComparator(card, model, tokenizer=tokenizer, image_processor=image_processor, family=family,
                        transform=transform, embed_dim=int(dim), image_size=image_size_of(transform),
                        context_length=text_context(model.config, tokenizer, card, None, family))


def meta_model(card: ModelCard, cache_dir=None):
    """The card's model on the meta device from its cached config.json, downloading nothing (``clipzoo info``);
    None for a local folder (summarised as any save_pretrained folder) or a remote-code card (its code would run)."""
    src = card.source
    if src.path or not src.hf_repo or card.config.get("remote_code"):
        return None
    return hub_meta_model(card, cache_dir, pick_spec)
