"""The Comparator: the one model API that every backend returns.

A backend subclasses :class:`Comparator` and implements four small methods:

- ``encode_pixels(pixels)``: preprocessed float pixels (N, 3, H, W) -> raw image features (N, D);
- ``encode_tokens(tokens)``: token ids (N, L) from :meth:`tokenize` -> raw text features (N, D);
- ``tokenize(texts, truncate=False)``: strings -> token ids the way the model was trained;
- ``logit_params()``: ``(scale, bias)`` tensors, bias None for softmax (CLIP) models.

Everything else — input coercion, batching, devices, precision, normalisation, similarity,
zero-shot prediction — lives here once, so every backend behaves the same.
"""
from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .cards import AUDIO, IMAGE, TEXT, ModelCard
from .constants import DEFAULT_LONG_TEXT, DEFAULT_TEMPLATE, TIE_TOLERANCE
from .errors import BadTextError, ClipzooError, UnsupportedError
from .inputs import (
    batched,
    check_batch_size,
    check_pixel_tensor,
    check_token_tensor,
    group_means,
    image_items,
    is_float_tensor,
    map_images,
    split_long_text,
    text_items,
    text_policy,
    to_pil,
)
from .modalities import VIDEO, get_modality
from .pixels import pixel_config, preprocess01
from .templates import TemplateError, fill_template, template_list  # noqa: F401 (TemplateError re-exported)
from .tokenizers import token_count
from .video import encode_by_frames

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
              "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_TEMPLATES = (DEFAULT_TEMPLATE,)


def resolve_dtype(precision: str | torch.dtype) -> torch.dtype:
    if isinstance(precision, torch.dtype):
        return precision
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ClipzooError(f"unknown precision {precision!r}; use one of fp32, fp16, bf16") from None


def format_template(template: str | Callable[[str], str], label: str) -> str:
    """The prompt for ``label``: ``template(label)`` for a callable; for a string, each ``{}``, ``{label}``
    or ``{c}`` replaced by ``label`` literally (never ``str.format``: no format specs, fields or escapes)."""
    if callable(template):
        return template(label)
    return fill_template(template, label)


def pairs_by_score_features(modality: Any, other: Any, normalize: bool = True) -> bool:
    """Whether a pair of ``modality`` against ``other`` is scored by ``score_features`` (a non-text input against
    a text, normalised: BLIP-2's query vectors) rather than by ``encode`` — the one rule for
    :meth:`Comparator.compare_features` and the ensemble's pairs."""
    return bool(normalize and other == TEXT and modality != TEXT)


class Comparator(torch.nn.Module):
    """One CLIP-family model: encode images and texts, compare them, classify zero-shot.

    Attributes: ``card``, ``embed_dim``, ``image_size``, ``context_length``, ``modalities``,
    ``logit_scale`` (the multiplier, i.e. ``exp`` of the stored log-scale), ``logit_bias`` (None
    for softmax models), ``probability`` ("softmax" or "sigmoid"), ``preprocess`` (PIL -> tensor).
    """

    probability: str = "softmax"
    long_text: str = DEFAULT_LONG_TEXT  # what encode_text does with a too-long text: see encode_text
    default_templates: tuple[str, ...] = DEFAULT_TEMPLATES  # zero-shot prompts when none are given

    def __init__(self, card: ModelCard, model: torch.nn.Module, *, transform: Callable,
                 embed_dim: int, image_size: int | tuple[int, int] | None, context_length: int | None,
                 modalities: Sequence[str] = (IMAGE, TEXT)):
        super().__init__()
        self.card = card
        self.model = model
        self._transform = transform
        self.embed_dim = int(embed_dim)
        self.image_size = image_size
        self.context_length = context_length
        self.modalities = tuple(get_modality(m) for m in modalities)
        self.decode_workers = 0
        self.runtime = "eager"  # how it executes: see clipzoo.runtime
        self.eval()

    # ------------------------------------------------------------ backend hooks
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise UnsupportedError(f"{self.card.alias} has no image tower")

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        raise UnsupportedError(f"{self.card.alias} has no text tower")

    def tokenize(self, texts: str | list[str], truncate: bool = False) -> torch.Tensor:
        raise UnsupportedError(f"{self.card.alias} has no tokenizer")

    def logit_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    # ------------------------------------------------------------ captions (CoCa models override these)
    can_caption: bool = False

    def generate(self, images: Any, **kwargs: Any) -> torch.Tensor:
        """Caption token ids for images; only captioning (CoCa) models have it."""
        raise UnsupportedError(f"{self.card.alias} cannot caption images (no text decoder); load a CoCa model "
                               "such as [coca - laion - coca_ViT-B-32/mscoco_finetuned_laion2b_s13b_b90k]")

    def decode(self, ids: Any) -> str | list[str]:
        """Caption token ids -> text; only captioning (CoCa) models have it."""
        raise UnsupportedError(f"{self.card.alias} cannot decode captions (no text decoder); load a CoCa model "
                               "such as [coca - laion - coca_ViT-B-32/mscoco_finetuned_laion2b_s13b_b90k]")

    # ------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @property
    def logit_scale(self) -> float:
        return float(self.logit_params()[0].detach())

    @property
    def logit_bias(self) -> float | None:
        bias = self.logit_params()[1]
        return None if bias is None else float(bias.detach())

    def preprocess(self, image) -> torch.Tensor:
        """A PIL image (or path / uint8 array) -> the model's input tensor (3, H, W)."""
        return self._transform(to_pil(image))

    @property
    def transform(self) -> Callable:
        """The raw torchvision transform (PIL -> tensor), as open_clip / openai return it."""
        return self._transform

    def supports_modality(self, modality: Any) -> bool:
        """Whether this model encodes ``modality`` (a name or a :class:`~clipzoo.modalities.Modality`): what
        :meth:`require` accepts; an unknown name is not supported."""
        try:
            self.require(get_modality(modality))
        except ClipzooError:
            return False
        return True

    def require(self, modality: str) -> None:
        if modality == VIDEO and VIDEO not in self.modalities and IMAGE in self.modalities:
            return  # an image model encodes a video by its frames (encode_video)
        if modality not in self.modalities:
            raise UnsupportedError(f"{self.card.alias} has no {modality} modality (it has: "
                                   f"{', '.join(self.modalities)})")

    # ------------------------------------------------------------ encoding
    @staticmethod
    def _grad_context(x: Any):
        wants_grad = isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()
        return contextlib.nullcontext() if wants_grad else torch.no_grad()

    def _finish(self, features: torch.Tensor, normalize: bool) -> torch.Tensor:
        features = features.float()
        if not bool(torch.isfinite(features.detach()).all()):  # NaN weights, an fp16 overflow: never rows of NaN
            raise ClipzooError(f"{self.card.alias} gave NaN or infinite features: its weights hold non-finite "
                               "values, or the computation overflowed (try precision='fp32')")
        return F.normalize(features, dim=-1) if normalize else features

    def pixels(self, images: Any) -> torch.Tensor:
        """Any image input -> preprocessed pixel tensor (N, 3, H, W) on CPU (float tensors pass through)."""
        if is_float_tensor(images):
            return check_pixel_tensor(images, self.image_size)
        items = image_items(images)
        return torch.stack(map_images(items, self._transform, self.decode_workers))

    def encode_image(self, images: Any, normalize: bool = True, batch_size: int = 64) -> torch.Tensor:
        """Images -> features (N, D). Paths, PIL images, uint8 HWC arrays, or preprocessed float tensors.

        Gradients flow when a float tensor that requires grad is given; otherwise runs without grad.
        """
        self.require(IMAGE)
        if is_float_tensor(images):  # in batch_size rows at a time, as any other input (activations bounded)
            x = check_pixel_tensor(images, self.image_size)
            with self._grad_context(x):
                return torch.cat([self._finish(self.encode_pixels(chunk.to(self.device, self.dtype)), normalize)
                                  for chunk in x.split(check_batch_size(batch_size))])
        items = image_items(images)
        out = []
        with torch.no_grad():
            for chunk in batched(items, batch_size):
                x = torch.stack(map_images(chunk, self._transform, self.decode_workers))
                out.append(self._finish(self.encode_pixels(x.to(self.device, self.dtype)), normalize))
        return torch.cat(out)

    def encode_text(self, texts: Any, normalize: bool = True, batch_size: int = 256,
                    truncate: bool = False, long_text: str | None = None) -> torch.Tensor:
        """Texts -> features (N, D). A string, a list of strings, or a token tensor from :meth:`tokenize`.

        A text longer than the context follows ``long_text`` (``None``: the model's :attr:`long_text`, set by
        ``clipzoo.load(..., long_text=…)``, else ``"error"``): ``"error"`` raises :class:`~clipzoo.errors.BadTextError`
        with its token count, ``"truncate"`` cuts it (``truncate=True`` is the same, refused with another
        ``long_text``), ``"chunks"`` splits it at sentence, word, then character boundaries into pieces that fit,
        encodes each and returns the mean of their L2-normalised features (renormalised when ``normalize``)."""
        self.require(TEXT)
        policy = text_policy(truncate, long_text, self.long_text)
        if isinstance(texts, torch.Tensor):
            tokens = check_token_tensor(texts, self.context_length)
        elif policy == "chunks":
            return self._encode_chunks(text_items(texts), normalize, batch_size)
        else:
            tokens = self.tokenize(text_items(texts), truncate=policy == "truncate")
        return self._encode_token_rows(tokens, normalize, batch_size)

    def fits_context(self, text: str) -> bool:
        """Whether ``text`` fits the model's context without cutting."""
        try:
            self.tokenize([text], truncate=False)
            return True
        except BadTextError:
            return False

    def count_tokens(self, text: str) -> int | None:
        """Tokens ``text`` takes, special ones included; None when the tokenizer gives no count."""
        return token_count(getattr(self, "tokenizer", None) or getattr(self, "hf_tokenizer", None), text)

    def _encode_chunks(self, texts: list[str], normalize: bool, batch_size: int) -> torch.Tensor:
        groups = [[t] if self.fits_context(t) else
                  split_long_text(t, self.fits_context, self.count_tokens, self.context_length) for t in texts]
        feats = self._encode_token_rows(self.tokenize([p for g in groups for p in g], truncate=True), False, batch_size)
        return self._finish(group_means(feats, [len(g) for g in groups]), normalize)

    def _encode_token_rows(self, tokens: torch.Tensor, normalize: bool, batch_size: int) -> torch.Tensor:
        batch_size = check_batch_size(batch_size)
        out = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                try:
                    feats = self.encode_tokens(tokens[start:start + batch_size].to(self.device))
                except IndexError:  # the embedding table's lookup: an id past the vocabulary
                    raise BadTextError(f"a token id ({int(tokens.max())}) is past {self.card.alias}'s vocabulary; "
                                       "make the tokens with model.tokenize") from None
                out.append(self._finish(feats, normalize))
        return torch.cat(out)

    def encode_audio(self, audio: Any, normalize: bool = True, batch_size: int = 32) -> torch.Tensor:
        """Audio -> features (N, D); only audio models (CLAP) have it, the rest raise UnsupportedError."""
        self.require(AUDIO)
        raise UnsupportedError(f"{self.card.alias} has no audio encoder")

    def encode_video(self, videos: Any, normalize: bool = True, batch_size: int = 64,
                     num_frames: int | None = None) -> torch.Tensor:
        """Videos -> features (N, D): paths (mp4/webm/mkv/avi), lists of frames or (T, H, W, C) arrays. An
        image–text model samples ``num_frames`` (default 8) frames uniformly and returns the mean of their
        L2-normalised image features, renormalised when ``normalize`` (:func:`clipzoo.video.encode_by_frames`);
        video models (X-CLIP, PE video, VideoPrism) override this with their own video tower."""
        self.require(VIDEO)
        return encode_by_frames(self, videos, num_frames=num_frames, normalize=normalize, batch_size=batch_size)

    @property
    def query_modality(self):
        """What zero-shot ``predict`` classifies: the first modality that is not text (image for CLIP, audio
        for CLAP)."""
        return next((m for m in self.modalities if m != TEXT), IMAGE)

    def encode(self, modality: str, inputs: Any, normalize: bool = True, **kwargs: Any) -> torch.Tensor:
        """Generic entry point: ``encode(IMAGE, …)``, ``encode(TEXT, …)``, ``encode("audio", …)``.

        ``modality`` is a :mod:`clipzoo.modalities` object or its name; the call goes to that
        modality's encoder (``encode_image`` / ``encode_text`` / ``encode_audio``).
        """
        modality = get_modality(modality)
        self.require(modality)
        method = getattr(self, modality.encoder, None)
        if method is None:
            raise UnsupportedError(f"{self.card.alias} cannot encode {modality}")
        return method(inputs, normalize=normalize, **kwargs)

    # ------------------------------------------------------------ differentiable [0, 1] images
    @property
    def pixel_config(self):
        """The eval preprocessing as data (size, mean, std, interpolation, resize mode): see
        :func:`clipzoo.pixels.pixel_config`."""
        return pixel_config(self)

    def preprocess01(self, images01: torch.Tensor) -> torch.Tensor:
        """[0, 1] float images (N, 3, H, W) of any size -> this model's normalised pixels, in torch
        (resize, centre crop, normalise), so gradients flow back to ``images01``."""
        self.require(IMAGE)
        return preprocess01(images01, self.pixel_config)

    def encode_image01(self, images01: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Features (N, D) of [0, 1] float images of any size, differentiably (the guidance path).

        Unlike :meth:`encode_image` (where a float tensor means pixels already preprocessed for this
        model), the tensor here holds plain RGB values in [0, 1]; the model's own preprocessing is done in
        torch. Runs with autograd when ``images01`` requires grad. It is :meth:`encode_image` of the preprocessed
        pixels, so a model that computes no gradients refuses a tensor that requires grad here too (it was left out
        of the gradient without a word).
        """
        return self.encode_image(self.preprocess01(images01), normalize=normalize)

    # ------------------------------------------------------------ comparing
    def similarity(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Logits as the model defines them: ``scale * cosine (+ bias)``, shape [N_images, N_texts]."""
        with self._grad_context(image_features if image_features.requires_grad else text_features):
            return self._similarity(image_features, text_features)

    def _similarity(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        scale, bias = self.logit_params()
        if not bool(torch.isfinite(scale).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
            raise ClipzooError(f"{self.card.alias}'s logit scale or bias is not finite ({float(scale)}); its "
                               "checkpoint holds a broken value")
        a = F.normalize(image_features.float(), dim=-1)
        b = F.normalize(text_features.float(), dim=-1).to(a.device)
        logits = scale.float().to(a.device) * a @ b.T
        if bias is not None:
            logits = logits + bias.float().to(a.device)
        return logits

    def score_features(self, inputs: Any, modality: Any = None, normalize: bool = True) -> torch.Tensor:
        """The features a pair with a text is scored by (``modality``: default :attr:`query_modality`): one
        vector per input, ``encode(modality, inputs)``, for most models; a model that scores a pair by several
        vectors overrides it (BLIP-2: its (N, Q, D) query vectors). :meth:`similarity` and :meth:`pair_scores`
        take them as the image side."""
        return self.encode(modality or self.query_modality, inputs, normalize=normalize)

    def score(self, inputs: Any, text_features: torch.Tensor, modality: Any = None) -> torch.Tensor:
        """The model's own logits [N_inputs, N_texts] of inputs (images; audio for CLAP) against text features
        (``encode_text`` or ``classifier``): ``similarity(score_features(inputs), text_features)``. The one place
        a score is made: ``predict``, ``forward``, ``clipzoo compare``, the service's ``/rank`` and ``/classify``,
        zero-shot evaluation and ensembles go through it, so a model's own scorer (BLIP-2's ITC, the max over its
        queries) is used everywhere; for a one-vector model it is scale × cosine (+ bias)."""
        with self._grad_context(inputs):
            return self.similarity(self.score_features(inputs, modality), text_features)

    def pair_scores(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Dot products [N_rows, N_cols] of features as :meth:`compare` makes them (cosines when normalised):
        no scale or bias. BLIP-2 overrides it for its (N, Q, D) query features (the max over queries)."""
        return rows @ cols.to(rows.device).T

    def compare(self, image: Any = None, text: Any = None, audio: Any = None, normalize: bool = True,
                **inputs: Any) -> torch.Tensor:
        """Scores of two modalities, [N_rows, N_cols]; rows are the first of image / audio / text (then other
        modalities by name) given, columns the second. ``normalize=True``: the cosine (what
        :meth:`clipzoo.Ensemble.compare` averages) — against a text, of the model's :meth:`score_features`
        (BLIP-2: its ITC, the max over queries); ``normalize=False``: mmc's raw dot product of the
        unnormalised features. No logit scale or bias (that is :meth:`similarity`)."""
        given = [(m, x) for m, x in ((IMAGE, image), (AUDIO, audio), (TEXT, text), *inputs.items()) if x is not None]
        if len(given) != 2:
            raise ClipzooError(f"compare() needs exactly two inputs of image=, audio=, text= (got {len(given)})")
        (row_mod, rows), (col_mod, cols) = given
        a = self.compare_features(row_mod, rows, col_mod, normalize)
        return self.pair_scores(a, self.compare_features(col_mod, cols, row_mod, normalize))

    def compare_features(self, modality: Any, inputs: Any, other: Any, normalize: bool = True) -> torch.Tensor:
        """The features :meth:`compare` pairs: :meth:`score_features` for a non-text input against a text (when
        normalised), else ``encode``."""
        if pairs_by_score_features(modality, other, normalize):
            return self.score_features(inputs, modality)
        return self.encode(modality, inputs, normalize=normalize)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.probability == "sigmoid" else logits.softmax(dim=-1)

    def classifier(self, labels: Iterable[str], templates: Sequence[str | Callable] | None = None,
                   truncate: bool = False, long_text: str | None = None) -> torch.Tensor:
        """Zero-shot class weights [L, D]: the renormalised mean of normalised template embeddings. A string is
        one label (one template), never its characters; a template string needs a ``{}`` (or ``{label}``) where
        the label goes — without one every label had the same prompt, and the same probability. A prompt longer
        than the context follows ``truncate`` / ``long_text`` as in :meth:`encode_text` (the model's policy)."""
        labels = text_items([labels] if isinstance(labels, str) else list(labels))
        templates = template_list(templates, self.default_templates)
        prompts = [format_template(t, label) for label in labels for t in templates]
        feats = self.encode_text(prompts, truncate=truncate, long_text=long_text).view(len(labels), len(templates), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)

    def predict(self, images: Any, labels: Iterable[str], templates: Sequence[str | Callable] | None = None
                ) -> torch.Tensor:
        """Zero-shot probabilities [N_inputs, N_labels]: softmax (CLIP, CLAP) or sigmoid (SigLIP).

        The inputs are of the model's :attr:`query_modality`: images for image–text models, audio for CLAP.
        """
        return self.probabilities(self.score(images, self.classifier(labels, templates)))

    def forward(self, images: Any, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)`` as openai's CLIP returns them (:meth:`score`)."""
        logits = self.score(images, self.encode_text(texts), IMAGE)
        return logits, logits.T

    def extra_repr(self) -> str:
        runtime = "" if self.runtime == "eager" else f", runtime={self.runtime}"
        return f"card={self.card.alias}, embed_dim={self.embed_dim}, image_size={self.image_size}{runtime}"


class ForeignComparator(Comparator):
    """A Comparator whose towers run outside PyTorch (ONNX Runtime, JAX, MindSpore): it holds no torch
    parameters, so its device (where features are handed back) is set, and its features are float32. Its
    engine hands torch no gradients: an image tensor that requires grad is refused with ``NO_GRAD`` (what
    runs it and what to do instead), not silently detached."""

    ENGINE = "another engine"
    NO_GRAD = "runs outside PyTorch, which hands torch no gradients; load the PyTorch model to backpropagate"

    def __init__(self, *args: Any, device: "str | torch.device" = "cpu", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode_image(self, images: Any, normalize: bool = True, batch_size: int = 64) -> torch.Tensor:
        if is_float_tensor(images) and images.requires_grad and torch.is_grad_enabled():
            raise UnsupportedError(f"{self.card.alias} {self.NO_GRAD}")
        return super().encode_image(images, normalize=normalize, batch_size=batch_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f" ({self.ENGINE})"


def competition_ranks(scores: Iterable[float], tol: float = TIE_TOLERANCE) -> list[int]:
    """Standard competition ranks ("1, 1, 3") of ``scores``, highest first; a tie shares a rank, never an arbitrary
    winner. Two scores tie when they differ by at most ``tol`` × their sum: relative, so 3e-8 and 8e-19 do not."""
    scores = [float(s) for s in scores]
    keys = sorted(s - tol * abs(s) for s in scores)  # rises with s: the scores above s by more than the tolerance
    return [1 + len(keys) - bisect.bisect_right(keys, s + tol * abs(s)) for s in scores]
