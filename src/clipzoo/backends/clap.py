"""CLAP backend: HF transformers' ``ClapModel`` (LAION's audio–text models) as an audio + text Comparator.

- Audio: each clip is decoded / downmixed / resampled to the model's rate (:mod:`clipzoo.audio`), then turned
  into log-mel features by the checkpoint's own ``ClapFeatureExtractor`` — one clip per call, as
  transformers does for a single clip, so a clip's features never depend on the rest of its batch. Clips
  longer than the extractor's ``max_length_s`` are cropped the transformers way, which is random; numpy's
  global generator is seeded with :data:`CROP_SEED` around each call (and restored), so the same clip always
  gives the same features (and equals transformers after ``np.random.seed(CROP_SEED)``).
- Text: the checkpoint's RoBERTa tokenizer, padded to the context and masked at the pad id (the padding is
  trimmed per batch before the model sees it, so this equals transformers' ``padding=True``).
- Similarity: ``logits_per_audio = exp(logit_scale_a) · cos(audio, text)``, as ``ClapModel.forward`` computes
  it; transformers' ``logits_per_text`` uses the other scale, ``logit_scale_t`` (:meth:`ClapComparator.forward`
  returns both).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..audio import audio_items, load_audio
from ..cards import AUDIO, TEXT, ModelCard
from ..checkpoints import read_json
from ..comparator import Comparator, resolve_dtype
from ..errors import CheckpointError, UnsupportedError
from .transformers import (
    attention_mask,
    features_of,
    load_hf_model,
    model_folder,
    tokenize_with,
    transformers_module,
    trim_padding,
)
from .transformers import load_tokenizer as load_hf_tokenizer

CROP_SEED = 0
DEFAULT_AUDIO_TEMPLATES = ("This is a sound of {}.",)  # transformers' zero-shot-audio-classification default


@contextlib.contextmanager
def _seeded_numpy(seed: int):
    """Seed numpy's global generator (which ClapFeatureExtractor's random crops use), then restore it."""
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class _NoImages:
    """The ``transform`` of a model without an image tower."""

    def __init__(self, alias: str):
        self.alias = alias

    def __call__(self, image):
        raise UnsupportedError(f"{self.alias} has no image modality (it has: audio, text); it compares audio "
                               "with text: use encode_audio")

    def __repr__(self) -> str:
        return "NoImages()"


class ClapComparator(Comparator):
    """A transformers ``ClapModel``: ``encode_audio``, ``encode_text``, ``similarity``, ``predict`` (zero-shot
    audio classification). ``sample_rate`` is the rate audio is resampled to; ``max_seconds`` the clip length
    the model sees (shorter clips are repeated and padded, longer ones cropped, as the feature extractor does).
    """

    default_templates = DEFAULT_AUDIO_TEMPLATES

    def __init__(self, card: ModelCard, model, *, tokenizer, feature_extractor, context_length: int):
        super().__init__(card, model, transform=_NoImages(card.alias), embed_dim=int(model.config.projection_dim),
                         image_size=None, context_length=context_length, modalities=(AUDIO, TEXT))
        self.hf_tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.max_seconds = float(feature_extractor.nb_max_samples) / self.sample_rate

    # ------------------------------------------------------------ audio
    def audio_inputs(self, waveforms: list) -> dict[str, torch.Tensor]:
        """Mono waveforms at :attr:`sample_rate` -> ``{"input_features", "is_longer"}`` for the model."""
        feats, longer = [], []
        for wave in waveforms:
            with _seeded_numpy(CROP_SEED):
                out = self.feature_extractor(wave, sampling_rate=self.sample_rate, return_tensors="pt")
            feats.append(out["input_features"])
            longer.append(out["is_longer"])
        return {"input_features": torch.cat(feats), "is_longer": torch.cat(longer)}

    def encode_features(self, input_features: torch.Tensor, is_longer: torch.Tensor | None = None) -> torch.Tensor:
        """Feature-extractor output -> raw audio embeddings (N, D) (the audio counterpart of ``encode_pixels``)."""
        x = input_features.to(self.device, self.dtype)
        longer = None if is_longer is None else is_longer.to(self.device)
        return features_of(self.model.get_audio_features(input_features=x, is_longer=longer))

    def encode_audio(self, audio: Any, normalize: bool = True, batch_size: int = 32) -> torch.Tensor:
        """Audio -> features (N, D). Paths (.wav/.flac/.ogg), ``(array, sample_rate)`` pairs, or arrays /
        tensors already at :attr:`sample_rate`; one item or a list. Stereo is averaged to mono."""
        self.require(AUDIO)
        items = audio_items(audio)
        out = []
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                waves = [load_audio(item, self.sample_rate, start + i) for i, item in enumerate(chunk)]
                out.append(self._finish(self.encode_features(**self.audio_inputs(waves)), normalize))
        return torch.cat(out)

    # ------------------------------------------------------------ text
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        mask = attention_mask(tokens, "pad", self.hf_tokenizer.pad_token_id, None)
        tokens, mask = trim_padding(tokens, mask, self.hf_tokenizer.padding_side)
        return features_of(self.model.get_text_features(input_ids=tokens, attention_mask=mask))

    def tokenize(self, texts: str | list[str], truncate: bool = False) -> torch.Tensor:
        return tokenize_with(self.hf_tokenizer, texts, self.context_length, truncate)

    # ------------------------------------------------------------ comparing
    def logit_params(self) -> tuple[torch.Tensor, None]:
        """``(exp(logit_scale_a), None)``: the scale of ``logits_per_audio`` (audio rows, text columns)."""
        return self.model.logit_scale_a.exp().reshape(()), None

    @property
    def text_logit_scale(self) -> float:
        """``exp(logit_scale_t)``, the scale transformers applies to ``logits_per_text``."""
        return float(self.model.logit_scale_t.detach().exp())

    def forward(self, audio: Any, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_audio, logits_per_text)`` as ``ClapModel.forward`` returns them (each with its own scale)."""
        a, t = self.encode_audio(audio), self.encode_text(texts)
        cos = a @ t.to(a.device).T
        return self.logit_scale * cos, self.text_logit_scale * cos.T

    def extra_repr(self) -> str:
        runtime = getattr(self, "runtime", "eager")
        return (f"card={self.card.alias}, embed_dim={self.embed_dim}, sample_rate={self.sample_rate}"
                + ("" if runtime == "eager" else f", runtime={runtime}"))


# ------------------------------------------------------------------------------------ loading
def load_tokenizer(folder):
    tokenizer = load_hf_tokenizer(folder)
    if len(tokenizer) <= 10:  # transformers 5 builds a near-empty tokenizer when no vocabulary file exists
        raise CheckpointError(f"{folder} has no tokenizer vocabulary; save the tokenizer with the model "
                              "(processor.save_pretrained(folder))")
    return tokenizer


def load_feature_extractor(folder):
    transformers = transformers_module()
    try:
        return transformers.ClapFeatureExtractor.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{folder} has no usable CLAP feature extractor ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); save it with the model (processor.save_pretrained(folder))"
                              ) from None


def text_context(model_config, tokenizer, card: ModelCard, override: int | None) -> int:
    """Context: explicit > card > tokenizer's model_max_length, capped by RoBERTa's position table (whose
    positions start after the pad id)."""
    text_cfg = model_config.text_config
    positions = text_cfg.max_position_embeddings - ((getattr(text_cfg, "pad_token_id", 1) or 1) + 1)
    ctx = override or card.context_length
    if not ctx:
        max_len = getattr(tokenizer, "model_max_length", None)
        ctx = max_len if max_len and max_len < 100_000 else positions
    return int(min(ctx, positions))


def audio_card(card: ModelCard) -> ModelCard:
    """A card made for an unknown folder / repo (image + text, backend "auto") -> one that says what CLAP is."""
    changes: dict[str, Any] = {"backend": "clap"}
    if AUDIO not in card.modalities:
        changes["modalities"] = (AUDIO, TEXT)
    if card.architecture == "clip" and card.backend in ("auto", "transformers", "clap"):
        changes["architecture"] = "clap"
    return card.replace(**changes)


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, **kwargs: Any) -> ClapComparator:
    """Load a ClapModel save_pretrained folder (local, or a hub repo from the cache) as a Comparator.

    Keywords: ``context_length`` (override the text context). ``trust_pickle`` is unused: transformers reads
    safetensors, and ``.bin`` weights only with ``weights_only=True``.
    """
    context_override = kwargs.pop("context_length", None)
    kwargs.pop("hf_class", None)
    if kwargs:
        raise TypeError(f"unexpected keyword(s) for the clap backend: {', '.join(sorted(kwargs))}")
    folder = model_folder(card, cache_dir)
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder} has no config.json, so it is not a transformers save_pretrained folder")
    model_type = read_json(folder / "config.json").get("model_type")
    if model_type != "clap":
        raise UnsupportedError(f"{folder} holds a {model_type!r} model (config.json model_type), not a CLAP "
                               "model (model_type 'clap'); load it with the transformers backend")
    model = load_hf_model(folder, "ClapModel", resolve_dtype(precision)).to(device)
    tokenizer = load_tokenizer(folder)
    extractor = load_feature_extractor(folder)
    card = audio_card(card)
    return ClapComparator(card, model, tokenizer=tokenizer, feature_extractor=extractor,
                          context_length=text_context(model.config, tokenizer, card, context_override))
