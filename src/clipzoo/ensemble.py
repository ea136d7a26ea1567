"""Ensemble: several Comparators scored together, each in its own embedding space.

    ens = clipzoo.Ensemble(["clipzoo/tiny-shapes", "[clip - openai - ViT-B/32]"], weights=[2, 1])
    out = ens.compare(image=["a.png", "b.png"], text=["a cat", "a dog"])
    out.similarity            # [2, 2]: weighted mean of the models' cosine similarities
    out.per_model             # {alias: [2, 2] cosine matrix}
    ens.predict(images, ["cat", "dog"])               # zero-shot probabilities over the ensemble
    ens.loss(x01, ["a red circle", ("blurry", -0.5)])  # scalar to minimise for CLIP guidance

Rules (docs/ensembles.md):

- Model weights are normalised to sum to 1 (they must be positive).
- ``compare`` gives ``Σ_m w_m · cos_m(image_i, text_j)`` with each model's features L2-normalised — not the
  models' scaled logits, so models with different logit scales count as their weights say.
- ``predict`` gives ``Σ_m w_m · p_m`` where ``p_m`` is model m's own zero-shot probability (softmax over the
  labels of its scaled logits; sigmoid for SigLIP-style models). Rows sum to 1 when every model is a softmax
  model.
- Image inputs are anything ``encode_image`` takes (paths, PIL, uint8 arrays), each model preprocessing
  them its own way; a *float tensor* given to an ensemble means RGB values in [0, 1] of any size (there is no
  one "preprocessed" size for several models) and goes through each model's differentiable
  ``encode_image01``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .api import load
from .cards import parse_alias
from .comparator import Comparator, pairs_by_score_features
from .errors import AmbiguousModelError, BadOptionError, ClipzooError, UnknownModelError, warn_user
from .guidance import TextFeatureCache, check_image01, spherical_distance
from .guidance import cutouts as make_cutouts
from .inputs import is_float_tensor, real_value
from .modalities import AUDIO, IMAGE, TEXT, Modality, get_modality, supports_modality
from .registry import REGISTRY

_TWO_PART_ALIAS = re.compile(r"^\[\s*(?P<a>[^\]]+?)\s+-\s+(?P<p>[^\]]+?)\s*\]$")
_GLOB = set("*?[")


@dataclass
class Comparison:
    """What :meth:`Ensemble.compare` returns."""

    similarity: torch.Tensor           # [N_rows, N_cols] weighted mean of per-model cosines
    per_model: dict[str, torch.Tensor]  # alias -> that model's cosine matrix
    weights: dict[str, float]           # alias -> normalised weight


def _query_of(spec: Any) -> dict[str, Any] | None:
    """A spec that is a query (no literal id) -> registry filters; None for an ordinary spec."""
    if isinstance(spec, dict):
        return dict(spec)
    if not isinstance(spec, str):
        return None
    text = spec.strip()
    parts = parse_alias(text)
    if parts is not None:
        arch, pub, ident = parts
        if _GLOB & set(ident) or _GLOB & set(arch) or _GLOB & set(pub):
            return {"architecture": arch, "publisher": pub, "id": ident}
        return None
    two = _TWO_PART_ALIAS.match(text)
    if two:
        return {"architecture": two["a"], "publisher": two["p"]}
    return None


class Ensemble:
    """A weighted set of Comparators that all have the ensemble's ``modalities``.

    ``models_or_specs``: Comparators and/or anything :meth:`add` takes. ``weights``: one positive number
    per model (default equal). ``device`` / ``precision`` / ``load_kwargs`` are used when loading specs.
    """

    def __init__(self, models_or_specs: Any = (), weights: Sequence[float] | None = None,
                 modalities: Iterable[str] = (IMAGE, TEXT), device: str = "cpu", precision: str = "fp32",
                 **load_kwargs: Any):
        if isinstance(modalities, str):  # one name, not its letters
            modalities = (modalities,)
        self.modalities: tuple[Modality, ...] = tuple(get_modality(m) for m in modalities)
        if not self.modalities:
            raise ClipzooError("an Ensemble needs at least one modality")
        self.device, self.precision, self.load_kwargs = device, precision, load_kwargs
        self._models: list[Comparator] = []
        self._aliases: list[str] = []
        self._weights: list[float] = []
        self._text_cache = TextFeatureCache()
        self._said_unused = False  # the warning that loss()'s augment / generator do nothing without cutouts
        if models_or_specs is None:
            raise BadOptionError("Ensemble(None): pass models or specs (a list, or one), or nothing for an empty "
                                 "ensemble to add() to")
        if isinstance(models_or_specs, (str, dict, Comparator)) or not isinstance(models_or_specs, Iterable):
            models_or_specs = [models_or_specs]
        items = list(models_or_specs)
        weights = None if weights is None else _weight_list(weights)
        if weights is not None and len(weights) != len(items):
            raise ClipzooError(f"{len(weights)} weights given for {len(items)} models; give one weight per model")
        for i, item in enumerate(items):
            self.add(item, weight=1.0 if weights is None else weights[i])

    # ------------------------------------------------------------------ membership
    def add(self, spec: Any = None, weight: float = 1.0, **filters: Any) -> Comparator:
        """Add a model: a loaded Comparator, any spec ``clipzoo.load`` takes, or a query.

        A query is a spec without a literal id — ``"[clip - openai - *]"``, ``"[clip - openai]"``, a dict of
        registry filters, or keyword filters (``add(architecture="clip", publisher="openai")``). It loads the
        model when exactly one card matches and raises, listing the candidates, when several do.
        """
        weight = positive_weight(weight)
        if spec is not None and filters:
            raise BadOptionError("pass a spec or filters to add(), not both")
        query = dict(filters) if spec is None else _query_of(spec)
        if spec is None and not filters:
            raise BadOptionError("add() needs a model, a spec or registry filters")
        if isinstance(spec, Comparator):
            model = spec
        else:
            card = self._resolve_query(query) if query is not None else REGISTRY.resolve(spec)
            if card.backend != "auto":  # a local folder's card learns its modalities when loaded
                self._check_modalities(card.alias, card.modalities)  # before paying for the load
            model = load(card if query is not None else spec, device=self.device, precision=self.precision,
                         **self.load_kwargs)
        self._check_modalities(model.card.alias, model.modalities)
        alias = model.card.alias
        if alias in self._aliases:
            k = 2
            while f"{alias} #{k}" in self._aliases:
                k += 1
            alias = f"{alias} #{k}"
            self._say_added_again(model, alias)
        self._models.append(model)
        self._aliases.append(alias)
        self._weights.append(weight)
        return model

    def _say_added_again(self, model: Comparator, alias: str) -> None:
        """One warning when ``model`` is one already in the ensemble (the same object, or the same card: the same
        weights): it joins as ``alias`` and that model now counts with both weights."""
        same = [a for m, a in zip(self._models, self._aliases) if m is model or m.card == model.card]
        if same:
            warn_user(f"{same[0]} is already in this ensemble: it is added again as {alias!r}, and that model's "
                      f"share is the sum of its weights; to change its weight instead, remove({same[0]!r}) and add "
                      "it with the new one")

    def add_all(self, query: "str | dict[str, Any] | None" = None, weight: float = 1.0,
                **filters: Any) -> list[Comparator]:
        """Add every model a registry query matches, each with ``weight`` (mmc's ``MultiMMC.load_model``):
        ``add_all(architecture="clip", publisher="openai")`` or ``add_all("[clip - openai - RN*]")``. Models
        without the ensemble's modalities are left out; none left raises a ClipzooError."""
        parsed = _query_of(query) if isinstance(query, str) else query
        found = REGISTRY.find(**{**(parsed or {}), **filters}) if parsed is not None or filters else []
        if isinstance(query, str) and parsed is None:
            found = [REGISTRY.resolve(query)]  # a literal alias: that one model
        cards = [c for c in found if all(m in c.modalities for m in self.modalities)]
        if not cards:
            raise UnknownModelError(f"no model with {', '.join(self.modalities)} matches {query or filters}; "
                                    "list models with `clipzoo models`")
        return [self.add(load(card, device=self.device, precision=self.precision, **self.load_kwargs), weight=weight)
                for card in cards]

    def _resolve_query(self, query: dict[str, Any]):
        try:
            hits = REGISTRY.find(**query)
        except TypeError as exc:
            raise ClipzooError(f"bad model query {query}: {exc}") from None
        shown = ", ".join(f"{k}={v!r}" for k, v in query.items())
        if not hits:
            raise UnknownModelError(f"no model matches {shown}; list models with `clipzoo models`")
        if len(hits) > 1:
            listing = "; ".join(c.alias for c in hits[:20]) + (f" … ({len(hits) - 20} more)" if len(hits) > 20 else "")
            raise AmbiguousModelError(f"{shown} matches {len(hits)} models: {listing}; "
                                      "add one of them by its full alias")
        return hits[0]

    def _check_modalities(self, alias: str, has: Iterable[str]) -> None:
        has = tuple(has)
        for modality in self.modalities:
            if modality not in has:
                raise ClipzooError(f"cannot add {alias} to the ensemble: it has no {modality} modality "
                                   f"(it has: {', '.join(has) or 'none'}); this ensemble needs "
                                   f"{', '.join(self.modalities)}")

    def remove(self, alias: str) -> Comparator:
        i = self._index(alias)
        self._aliases.pop(i), self._weights.pop(i)
        self._text_cache.clear()
        return self._models.pop(i)

    def _index(self, key: "str | int") -> int:
        if isinstance(key, int) and not isinstance(key, bool):
            if not -len(self._models) <= key < len(self._models):
                raise ClipzooError(f"no model {key} in this ensemble of {len(self._models)}; it has: "
                                   f"{', '.join(self._aliases) or 'none'}")
            return key
        if not isinstance(key, str):
            raise BadOptionError(f"an ensemble member is named by its alias or position, not {key!r}")
        try:
            return self._aliases.index(key)
        except ValueError:
            raise ClipzooError(f"no model {key!r} in this ensemble; it has: {', '.join(self._aliases)}") from None

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self):
        return iter(self._models)

    def __getitem__(self, key: "str | int") -> Comparator:
        return self._models[self._index(key)]

    @property
    def models(self) -> list[Comparator]:
        return list(self._models)

    @property
    def aliases(self) -> list[str]:
        return list(self._aliases)

    @property
    def weights(self) -> dict[str, float]:
        """alias -> weight, normalised to sum to 1."""
        return dict(zip(self._aliases, self._normalised()))

    def _normalised(self, weights: Sequence[float] | None = None) -> list[float]:
        raw = list(self._weights) if weights is None else _weight_list(weights)
        if len(raw) != len(self._models):
            raise ClipzooError(f"{len(raw)} weights given for an ensemble of {len(self._models)} models")
        if not self._models:
            raise ClipzooError("the ensemble is empty; add a model first")
        raw = [positive_weight(w) for w in raw]
        top = max(raw)  # scaled first: two weights of 1e308 summed to inf, and both became 0.0
        total = sum(w / top for w in raw)
        return [w / top / total for w in raw]

    def freeze(self) -> "Ensemble":
        """Stop gradients into the models' weights (``requires_grad_(False)``), so guidance only computes
        gradients for the pixels — about twice as fast. Changes the member models in place."""
        for m in self._models:
            m.requires_grad_(False)
        return self

    def to(self, device) -> "Ensemble":
        for m in self._models:
            m.to(device)
        self._text_cache.clear()
        return self

    def __repr__(self) -> str:
        inner = ", ".join(f"{a}: {w:.3g}" for a, w in self.weights.items()) if self._models else ""
        return f"Ensemble({inner}; modalities={', '.join(self.modalities)})"

    # ------------------------------------------------------------------ encoding / comparing
    @staticmethod
    def _encode(model: Comparator, modality: Modality, inputs: Any, normalize: bool = True) -> torch.Tensor:
        if modality == IMAGE and is_float_tensor(inputs):
            return model.encode_image01(inputs, normalize=normalize)
        return model.encode(modality, inputs, normalize=normalize)

    @classmethod
    def _pair_features(cls, model: Comparator, modality: Modality, inputs: Any, other: Modality,
                       normalize: bool = True) -> torch.Tensor:
        """What ``model`` scores ``inputs`` by against ``other``: its ``score_features`` (BLIP-2: query vectors)
        for a non-text input against a text when normalised, else :meth:`_encode`; [0, 1] float images go
        through the model's ``preprocess01`` first, as :meth:`_encode` does."""
        if not pairs_by_score_features(modality, other, normalize):
            return cls._encode(model, modality, inputs, normalize)
        if modality == IMAGE and is_float_tensor(inputs):
            inputs = model.preprocess01(inputs)
        return model.score_features(inputs, modality)

    def supports_modality(self, modality: Any) -> bool:
        """Whether the ensemble compares ``modality`` (mmc's ``MultiMMC.supports_modality``)."""
        return supports_modality(self.modalities, modality)

    def compare(self, image: Any = None, text: Any = None, audio: Any = None, normalize: bool = True) -> Comparison:
        """Weighted mean of each model's cosine similarities, batched: rows are the first of image / audio /
        text given, columns the second (``compare(image=…, text=…)`` -> [N_images, N_texts]).
        ``normalize=False``: mmc's semantics instead, the raw dot products of unnormalised features."""
        given = [(m, x) for m, x in ((IMAGE, image), (AUDIO, audio), (TEXT, text)) if x is not None]
        if len(given) != 2:
            raise ClipzooError("compare() needs exactly two of image=, audio=, text=")
        for modality, _ in given:
            if modality not in self.modalities:
                raise ClipzooError(f"this ensemble has no {modality} modality (it has: {', '.join(self.modalities)})")
        (row_mod, rows), (col_mod, cols) = given
        weights = self._normalised()
        per_model: dict[str, torch.Tensor] = {}
        total = None
        for alias, model, w in zip(self._aliases, self._models, weights):
            a = self._pair_features(model, row_mod, rows, col_mod, normalize)
            cos = model.pair_scores(a, self._pair_features(model, col_mod, cols, row_mod, normalize))
            per_model[alias] = cos
            part = w * cos.to(torch.float32).cpu() if not cos.requires_grad else w * cos
            total = part if total is None else total + part.to(total.device)
        return Comparison(similarity=total, per_model=per_model, weights=dict(zip(self._aliases, weights)))

    def similarity(self, image: Any, text: Any) -> torch.Tensor:
        """``compare(image=…, text=…).similarity``."""
        return self.compare(image=image, text=text).similarity

    def predict(self, images: Any, labels: Iterable[str], templates: Sequence | None = None) -> torch.Tensor:
        """Zero-shot probabilities [N_inputs, N_labels]: the weighted mean ``Σ_m w_m · p_m`` of each model's
        own probabilities (its softmax — or sigmoid for SigLIP-style models — of its scaled logits).

        The inputs are images, or audio for an ensemble of audio–text models (``modalities=(AUDIO, TEXT)``)."""
        labels = [labels] if isinstance(labels, str) else list(labels)  # one label, not its characters
        modality = next((m for m in self.modalities if m != TEXT), IMAGE)
        out = None
        for model, w in zip(self._models, self._normalised()):
            classes = model.classifier(labels, templates)
            feats = self._pair_features(model, modality, images, TEXT)  # the model's scorer (BLIP-2: ITC)
            with model._grad_context(images):
                probs = model.probabilities(model.similarity(feats, classes))
            part = w * probs.float().cpu() if not probs.requires_grad else w * probs
            out = part if out is None else out + part.to(out.device)
        return out

    # ------------------------------------------------------------------ guidance
    def loss(self, image01: torch.Tensor, prompts: Any, weights: Sequence[float] | None = None, cutouts: int = 0,
             min_frac: float = 0.5, augment: bool = False, generator: torch.Generator | None = None,
             kind: str = "spherical") -> torch.Tensor:
        """A scalar to minimise that pulls ``image01`` toward the prompts (and away from negative ones).

        ``image01``: float RGB in [0, 1], (N, 3, H, W) of any size, usually ``requires_grad``.
        ``prompts``: a string, a list of strings and ``(string, weight)`` pairs, or a dict ``{string: weight}``; a
        negative weight means "not this". ``weights``: per-model weights for this call (default: the ensemble's).
        ``cutouts``: 0 scores each whole image through each model's own resize / centre crop; n > 0 scores n
        random crops per image (``min_frac``, ``augment``, ``generator`` as in
        :func:`clipzoo.guidance.cutouts`), resized to each model's resolution. ``augment`` and ``generator``
        act on cutouts only: given with ``cutouts=0`` they are ignored, with a warning (once per ensemble).
        ``kind``: ``"spherical"`` (VQGAN+CLIP's ``d = 2·arcsin(‖a−b‖/2)² = θ²/2``) or ``"cosine"`` (``d = −cos``).

        loss = Σ_m w_m · Σ_p v_p · mean_{images, cutouts} d_m(image, p) / Σ_p |v_p|
        """
        if IMAGE not in self.modalities or TEXT not in self.modalities:
            raise ClipzooError("loss() needs an ensemble of image and text models")
        if kind not in ("spherical", "cosine"):
            raise ClipzooError(f"unknown loss kind {kind!r}; use 'spherical' or 'cosine'")
        texts, pw = _parse_prompts(prompts)
        x = check_image01(image01)
        if not cutouts and (augment or generator is not None) and not self._said_unused:
            self._said_unused = True
            given = [name for name, on in (("augment=", augment), ("generator=", generator is not None)) if on]
            warn_user(f"loss(): {' and '.join(given)} {'is' if len(given) == 1 else 'are'} ignored with cutouts=0 "
                      "(options of the cutouts); pass cutouts=n to score n random crops per image")
        pw_t = torch.tensor(pw, dtype=torch.float32)
        norm = pw_t.abs().sum()
        total = None
        for model, w in zip(self._models, self._normalised(weights)):
            if cutouts:
                size = model.pixel_config.size
                crops = make_cutouts(x, cutouts, size, min_frac=min_frac, augment=augment, generator=generator)
                feats = model.encode_image01(crops)
            else:
                feats = model.encode_image01(x)
            text = self._text_cache.features(model, texts).to(feats.device)
            d = spherical_distance(feats, text) if kind == "spherical" else -(feats @ text.T)
            per_prompt = d.mean(dim=0)  # [P]: mean over images and cutouts
            part = w * (per_prompt * pw_t.to(per_prompt.device)).sum() / norm.to(per_prompt.device)
            total = part if total is None else total + part.to(total.device)
        return total


def _number(value: Any, what: str) -> float:
    """``float(value)`` for a real number (:func:`clipzoo.inputs.real_value`: numpy's and one-element tensors
    too); a :class:`BadOptionError` naming ``what`` for a string, None, a bool, or an integer past float's range
    (``10**400``)."""
    number = real_value(value)
    if number is None:
        raise BadOptionError(f"{what} must be a number, got {value!r}")
    try:
        return float(number)
    except OverflowError:
        raise BadOptionError(f"{what} is past float's range ({len(str(abs(int(number))))} digits)") from None


def positive_weight(value: Any) -> float:
    """A model weight: a finite number above 0 (else :class:`BadOptionError` for no number, :class:`ClipzooError`
    for one out of range)."""
    weight = _number(value, "model weight")
    if not math.isfinite(weight) or weight <= 0:
        raise ClipzooError(f"model weight must be a positive number, got {weight}")
    return weight


def _weight_list(weights: Any) -> list[Any]:
    """Model weights as a list, read once (a generator is read one time only); a BadOptionError for one number,
    a string or anything else that is not a sequence of them."""
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
        raise BadOptionError(f"weights must be a list of numbers, one per model; got {weights!r}")
    return list(weights)


def _parse_prompts(prompts: Any) -> tuple[list[str], list[float]]:
    """Prompts as texts and weights scaled by the largest: a string, a ``(string, weight)`` pair, a list of strings
    and pairs, or a Mapping ``{string: weight}`` (its items: iterating it gave the keys, every weight 1)."""
    if isinstance(prompts, str) or (isinstance(prompts, tuple) and len(prompts) == 2
                                    and isinstance(prompts[0], str) and real_value(prompts[1]) is not None):
        prompts = [prompts]
    elif isinstance(prompts, Mapping):
        prompts = list(prompts.items())
    elif isinstance(prompts, bytes) or not isinstance(prompts, Iterable):
        raise BadOptionError(f"prompts must be a string, a list of strings and (string, weight) pairs, or a dict "
                             f"{{string: weight}}; got {prompts!r:.60}")
    texts, weights = [], []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            text, w = p, 1.0
        elif isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str):
            text, w = p[0], _number(p[1], f"prompt {i}'s weight")
        else:
            raise ClipzooError(f"prompt {i} is {p!r}; pass strings or (string, weight) pairs")
        if not math.isfinite(w):  # a NaN or infinite weight made the loss NaN
            raise ClipzooError(f"prompt {i}'s weight is {w}; give a finite number (negative: 'not this')")
        texts.append(text)
        weights.append(w)
    if not texts:
        raise ClipzooError("no prompts given; pass a string or a list of strings / (string, weight) pairs")
    top = max(abs(w) for w in weights)
    if top == 0:
        raise ClipzooError("every prompt weight is 0; give at least one non-zero weight")
    return texts, [w / top for w in weights]  # the loss divides by Σ|v|: scaled first, 1e39 or 1e-46 stay finite
