"""The model registry: every card clipzoo knows, queried by field, resolved from any spec form."""
from __future__ import annotations

import difflib
import fnmatch
import os
import re
import threading
from collections.abc import Iterable
from typing import Any

from .builtin_cards import builtin_cards
from .cards import IMAGE, TEXT, ModelCard, Source, parse_alias
from .catalog import open_clip_card
from .constants import CHECKPOINT_SUFFIXES
from .errors import AmbiguousModelError, CheckpointError, ClipzooError, UnknownModelError, one_line
from .files import NOT_REGULAR, special_file
from .modalities import get_modality

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = ("architecture", "publisher", "id", "backend", "alias", "embed_dim", "image_size",
           "context_length", "modality", "source")


def _norm(text: str) -> str:
    return text.strip().lower()


def _matches(value: Any, wanted: Any) -> bool:
    if wanted is None:
        return True
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return any(_matches(value, w) for w in wanted)
    if isinstance(value, str) and isinstance(wanted, str):
        v, w = _norm(value), _norm(wanted)
        return fnmatch.fnmatchcase(v, w) if any(c in w for c in "*?[") else v == w
    return value == wanted


class Registry:
    """Holds model cards. The built-in catalogue is read on first use, so ``import clipzoo`` stays fast."""

    def __init__(self, cards: Iterable[ModelCard] | None = None, builtin: bool = True):
        self._cards: dict[str, ModelCard] = {}
        self._builtin_loaded = not builtin
        self._lock = threading.RLock()
        for card in cards or ():
            self.register(card)

    # ---------------------------------------------------------------- contents
    def _ensure_builtin(self) -> None:
        if self._builtin_loaded:
            return
        with self._lock:
            if self._builtin_loaded:
                return
            user_cards = dict(self._cards)
            self._cards = {}
            for card in builtin_cards():
                self._cards.setdefault(_norm(card.alias), card)
            self._cards.update(user_cards)  # a user's registration wins over a built-in alias
            self._builtin_loaded = True

    def register(self, card: ModelCard | None = None, /, *, overwrite: bool = True, **fields: Any) -> ModelCard:
        """Add a card, or build one from fields.

        ``register(architecture="clip", publisher="me", id="run7", path="ckpt.pt", model_name="ViT-B-32")``
        registers a local checkpoint; it then shows in :meth:`find` and loads by its alias.
        """
        if card is None:
            card = card_from_fields(**fields)
        elif fields:
            raise TypeError("pass either a ModelCard or fields, not both")
        check_card(card)  # a card that cannot be looked up again broke every later lookup's suggestions
        key = _norm(card.alias)
        if not overwrite:  # a built-in alias counts too: before the catalogue was read, it was silently shadowed
            self._ensure_builtin()
        with self._lock:
            if not overwrite and key in self._cards:
                raise ValueError(f"{card.alias} is already registered; pass overwrite=True to replace it")
            self._cards[key] = card
        return card

    def unregister(self, alias: str) -> None:
        self._ensure_builtin()
        with self._lock:
            self._cards.pop(_norm(alias), None)

    def __iter__(self):
        self._ensure_builtin()
        return iter(list(self._cards.values()))

    def __len__(self) -> int:
        self._ensure_builtin()
        return len(self._cards)

    def __contains__(self, spec: str) -> bool:
        try:
            self.resolve(spec)
            return True
        except (UnknownModelError, AmbiguousModelError):
            return False

    # ---------------------------------------------------------------- queries
    def find(self, **filters: Any) -> list[ModelCard]:
        """Cards whose fields match every given filter; an omitted (or None) filter matches anything.

        Strings match case-insensitively and may be glob patterns (``id="ViT-B-32*"``); a list
        matches any of its items; ``modality="image"`` matches cards that have that modality.
        """
        unknown = set(filters) - set(_FIELDS) - {"modalities"}
        if unknown:
            raise TypeError(f"unknown filter(s) {sorted(unknown)}; filter by any of {list(_FIELDS)}")
        self._ensure_builtin()
        out = []
        for card in self._cards.values():
            ok = True
            for key, wanted in filters.items():
                if wanted is None:
                    continue
                if key in ("modality", "modalities"):
                    ok = any(_matches(m, wanted) for m in card.modalities)
                elif key == "id":
                    ok = any(_matches(i, wanted) for i in (card.id, *card.also_known_as))
                elif key == "source":
                    ok = _matches(card.source.describe(), wanted)
                else:
                    ok = _matches(getattr(card, key), wanted)
                if not ok:
                    break
            if ok:
                out.append(card)
        return out

    def resolve(self, spec: "str | ModelCard | os.PathLike") -> ModelCard:
        """Turn any spec form into one card.

        Forms: ``[arch - publisher - id]`` · ``publisher/id`` · ``open_clip:MODEL[/TAG]`` ·
        ``hf-hub:org/name`` · a local file or folder · an HF repo id of a catalogued model · a bare id
        that names one model.
        """
        if isinstance(spec, ModelCard):
            return spec
        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        if not isinstance(spec, str) or not spec.strip():
            raise UnknownModelError(f"model spec {spec!r} is not a non-empty string; "
                                    "pass an alias such as '[clip - openai - ViT-B/32]', a path or a hub id")
        text = spec.strip()
        self._ensure_builtin()

        alias = parse_alias(text)
        if alias is not None:
            arch, pub, ident = alias
            hits = self.find(architecture=arch, publisher=pub, id=_literal(ident))
            return self._one(text, hits)

        if text.startswith("open_clip:"):
            return self._resolve_open_clip(text[len("open_clip:"):], text)

        if text.startswith("hf-hub:"):
            repo = hub_repo_id(text)
            hits = [c for c in self._cards.values() if c.source.hf_repo and _norm(c.source.hf_repo) == _norm(repo)]
            return hits[0] if len(hits) == 1 else hub_card(repo)

        expanded = os.path.expanduser(text)
        if os.path.exists(expanded):
            return local_card(expanded)
        if _looks_like_path(text):
            raise UnknownModelError(f"model path {text!r} does not exist (no such file or folder); check the "
                                    "path, or name a catalogued model (`clipzoo models`)")

        if "/" in text:
            pub, _, ident = text.partition("/")
            hits = self.find(publisher=pub, id=_literal(ident))
            if hits:
                return self._one(text, hits)
            hits = [c for c in self._cards.values() if c.source.hf_repo and _norm(c.source.hf_repo) == _norm(text)]
            if hits:
                return self._one(text, hits)

        hits = self.find(id=_literal(text))
        if hits:
            return self._one(text, hits)
        hits = self.find(alias=_literal(text))
        if hits:
            return self._one(text, hits)
        raise self._unknown(text)

    def _resolve_open_clip(self, rest: str, spec: str) -> ModelCard:
        model, _, tag = rest.strip().partition("/")
        hits = [c for c in self.find(backend="open_clip")
                if c.config.get("model_name") == model and (c.config.get("pretrained") or "") == tag
                and not c.config.get("openai")]
        if hits:
            return hits[0]
        import open_clip

        if model not in open_clip.list_models():
            close = difflib.get_close_matches(model, open_clip.list_models(), n=5, cutoff=0.5)
            raise UnknownModelError(f"unknown open_clip model {model!r} in {spec!r}; "
                                    f"closest: {', '.join(close) or '(none)'}; "
                                    "see `clipzoo models --backend open_clip`")
        if tag:
            tags = open_clip.list_pretrained_tags_by_model(model)
            raise UnknownModelError(f"open_clip has no pretrained tag {tag!r} for {model!r} in {spec!r}; "
                                    f"available tags: {', '.join(tags) or '(none)'}; "
                                    f"or 'open_clip:{model}' for untrained weights")
        return open_clip_card(model, None)

    def _one(self, spec: str, hits: list[ModelCard]) -> ModelCard:
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise self._unknown(spec)
        listing = "; ".join(c.alias for c in hits[:10]) + (" …" if len(hits) > 10 else "")
        raise AmbiguousModelError(f"model spec {spec!r} matches {len(hits)} models: {listing}; "
                                  "name one by its full alias")

    def _unknown(self, spec: str) -> UnknownModelError:
        cards = list(self._cards.values())
        by_key: dict[str, str] = {}
        for c in cards:
            by_key.setdefault(_norm(c.alias), c.alias)
            for ident in (c.id, *c.also_known_as, f"{c.publisher}/{c.id}"):
                by_key.setdefault(_norm(ident), c.alias)
        close = difflib.get_close_matches(_norm(spec), list(by_key), n=8, cutoff=0.4)
        suggestions = list(dict.fromkeys(by_key[k] for k in close))[:5]
        hint = f"closest known: {', '.join(suggestions)}" if suggestions else "no close match"
        return UnknownModelError(f"unknown model {spec!r} ({hint}); list models with `clipzoo models`, "
                                 "or pass a local checkpoint path or 'hf-hub:org/name'")


def _looks_like_path(text: str) -> bool:
    return (text.startswith(("/", "./", "../", "~", "\\")) or (len(text) > 2 and text[1] == ":")
            or text.lower().endswith(CHECKPOINT_SUFFIXES))


def _literal(text: str) -> str:
    """Escape glob characters so that a resolved id is matched literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def check_card(card: ModelCard) -> ModelCard:
    """``card`` if its names are non-empty strings whose alias reads back as them, its modalities are known and its
    ``sha256``, when given, is 64 hex digits; else a :class:`~clipzoo.errors.ClipzooError` saying which field."""
    for name in ("architecture", "publisher", "id"):
        value = getattr(card, name)
        if not isinstance(value, str) or not value.strip():
            raise ClipzooError(f"register(): {name} must be a non-empty string, got {value!r}")
    if parse_alias(card.alias) != (card.architecture, card.publisher, card.id):
        raise ClipzooError(f"register(): {card.alias} does not read back as an alias (' - ', brackets or spaces "
                           "at the ends of architecture, publisher or id); choose other names")
    for modality in card.modalities:
        get_modality(modality)  # an unknown one: its one-line error
    sha256 = card.source.sha256
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise ClipzooError(f"register(): sha256 must be the file's SHA-256, 64 hex digits, got {str(sha256)[:80]!r} "
                           "(`sha256sum FILE` prints it); or leave it out")  # each load downloaded the whole file
    return card


def local_card(path: str, **config: Any) -> ModelCard:
    path = os.path.abspath(path)
    if special_file(path):  # reading it would wait for a writer
        raise CheckpointError(f"model {path!r} {NOT_REGULAR}; pass a checkpoint file or a model folder")
    return ModelCard(architecture="clip", publisher="local", id=path, backend="auto",
                     source=Source(path=path), config=config)


def hub_repo_id(spec: str) -> str:
    """The repo id of an ``hf-hub:`` spec (spaces and outer slashes dropped); an :class:`UnknownModelError` when it
    is no Hugging Face repo id (``hf-hub:``, ``hf-hub:a/b/c``, ``hf-hub:../../etc`` became cards that could only fail
    later as "not in the local cache")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo = spec[len("hf-hub:"):].strip().strip("/")
    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        why = one_line(exc, 200).split(" Use `repo_type`")[0] if repo else "it is empty"
        raise UnknownModelError(f"model spec {spec!r} names no Hugging Face repo ({why}); write "
                                "'hf-hub:org/name'") from None
    return repo


def hub_card(repo: str) -> ModelCard:
    org, _, name = repo.partition("/")
    return ModelCard(architecture="clip", publisher=org.lower() or "hf", id=name or repo, backend="auto",
                     source=Source(hf_repo=repo))


def card_from_fields(*, architecture: str = "clip", publisher: str = "local", id: str | None = None,
                     path: str | None = None, url: str | None = None, sha256: str | None = None,
                     hf_repo: str | None = None, hf_file: str | None = None, backend: str = "auto",
                     modalities: Iterable[str] = (IMAGE, TEXT), embed_dim: int | None = None,
                     image_size: int | None = None, context_length: int | None = None,
                     description: str = "", **config: Any) -> ModelCard:
    """Build a card from keyword fields; extra keywords (``model_name=``, ``hf_class=``…) go to ``config``."""
    if path is not None:
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(path):
            raise FileNotFoundError(f"cannot register {path!r}: no such file or folder")
    if id is None:
        id = os.path.basename(path.rstrip("/")) if path else (hf_repo or url or "")
    if not id:
        raise ValueError("register() needs an id (or a path, url or hf_repo to name it by)")
    return ModelCard(architecture=architecture, publisher=publisher, id=id, backend=backend,
                     source=Source(path=path, url=url, sha256=sha256, hf_repo=hf_repo, hf_file=hf_file),
                     modalities=(modalities,) if isinstance(modalities, str) else tuple(modalities),
                     embed_dim=embed_dim, image_size=image_size,
                     context_length=context_length, description=description, config=config)


REGISTRY = Registry()


def register(card: ModelCard | None = None, /, **fields: Any) -> ModelCard:
    """Register a user's model in the global :data:`REGISTRY`."""
    return REGISTRY.register(card, **fields)


def list_models(**filters: Any) -> list[ModelCard]:
    """Cards in the global registry matching the filters (see :meth:`Registry.find`)."""
    return REGISTRY.find(**filters)
