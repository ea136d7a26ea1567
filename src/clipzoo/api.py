"""The composition root: ``clipzoo.load`` (any spec -> a ready Comparator) and ``clipzoo.list_models``.

The only module that knows the registry, the backends and the runtimes together. A load goes:
spec -> card (:data:`~clipzoo.registry.REGISTRY`) -> backend decided (:func:`resolve_backend`) ->
``backends.<name>.load(card, …)`` -> a runtime wraps it when one other than eager is asked for.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .backends import get_backend
from .backends.hf_families import FAMILY_CLASSES, FAMILY_TYPES
from .backends.hf_video_families import VIDEO_CLASSES, VIDEO_TYPES
from .cards import ModelCard, parse_alias
from .checkpoints import read_json, sniff_folder
from .download import fetch_remote, hub_file, remote_protocol
from .errors import ClipzooError, ModelNotCachedError, UnknownModelError
from .inputs import check_long_text
from .packing import with_files
from .registry import REGISTRY, list_models
from .runtime import EAGER_NAMES, apply_runtime

if TYPE_CHECKING:  # a Comparator module imports torch; api itself stays importable without it
    from .comparator import Comparator

__all__ = ["load", "load_all", "list_models", "resolve_card", "resolve_backend"]


def load(spec: "str | ModelCard | os.PathLike", device: str = "cpu", precision: str = "fp32",
         cache_dir: "str | os.PathLike | None" = None, trust_pickle: bool = False, runtime: str = "eager",
         **kwargs: Any) -> Comparator:
    """Load a model by any spec form and return its Comparator.

    spec: ``"[clip - openai - ViT-B/32]"`` | ``"openai/ViT-B-32"`` | ``"open_clip:ViT-B-32/laion2b_s34b_b79k"``
    | ``"hf-hub:org/name"`` | a local file (.pt/.pth/.bin/.safetensors, OpenAI TorchScript) | a local folder
    | a file or folder at an fsspec URL (``s3://bucket/run/model``; copied into ``cache_dir`` once).
    Extra keywords go to the backend (e.g. ``model_name="ViT-B-32"`` for a bare open_clip state dict).
    ``runtime``: ``"eager"`` (default), ``"compile"``, ``"onnx"``, ``"int8"`` (``"onnx-int8"``,
    ``"torch-int8"``) — see :mod:`clipzoo.runtime`. ONNX runtimes export once into ``cache_dir``/onnx.
    ``engine="mindspore"`` runs an OpenAI / open_clip model's weights in MindSpore (:mod:`clipzoo.backends.mindspore`).
    ``long_text``: ``"error"`` (clipzoo's default), ``"truncate"`` or ``"chunks"`` — what ``encode_text`` does
    with a text longer than the model's context (see :meth:`clipzoo.Comparator.encode_text`).
    """
    long_text = kwargs.pop("long_text", None)
    if long_text is not None:
        check_long_text(long_text)
    check_device(device)  # before any file is read
    card = with_engine(resolve_card(spec, cache_dir, hf_class=kwargs.get("hf_class")), kwargs.pop("engine", None))
    if card.backend == "clap":
        kwargs.pop("hf_class", None)  # "ClapModel" named through the transformers backend's keyword
    options = {"device": str(device), "precision": precision, "cache_dir": cache_dir, "trust_pickle": trust_pickle}

    def build(**overrides: Any) -> Comparator:
        try:
            return _build(card, {**options, **overrides}, kwargs)
        except RuntimeError:  # torch's "Found no NVIDIA driver", "invalid device ordinal", … from deep inside
            missing = absent_device(overrides.get("device", options["device"]))
            if missing:
                raise ClipzooError(missing) from None
            raise

    if runtime is None or str(runtime).strip().lower() in EAGER_NAMES:
        model = build()
    else:
        model = apply_runtime(runtime, card, build, device=str(device), precision=precision, cache_dir=cache_dir,
                              load_kwargs=kwargs)
    if long_text is not None:
        model.long_text = long_text  # what encode_text does with a too-long text (Comparator.encode_text)
    return model


def check_device(device: Any) -> None:
    """A :class:`~clipzoo.errors.ClipzooError` for a device name torch does not know (``"bogus"``: a torch error
    from deep in a backend). A known device this machine lacks is said by :func:`absent_device`."""
    import torch

    try:
        torch.device(str(device))
    except (RuntimeError, ValueError, TypeError):
        raise ClipzooError(f"device {str(device)!r} is not a device; use 'cpu', 'cuda', 'cuda:1', 'mps', …") from None


def absent_device(device: Any) -> "str | None":
    """What to say when ``device`` is a CUDA device torch does not have here (``"cuda"`` without a GPU, ``"cuda:3"``
    with one); None otherwise. Checked after a backend fails, so its own refusal (MindSpore, OpenVINO: CPU only)
    is said first."""
    import torch

    parsed = torch.device(str(device))
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type != "cuda" or (parsed.index or 0) < have:
        return None
    return f"device {str(device)!r}: torch sees {have} CUDA device(s) here; use device='cpu'" + (
        " or another index" if have else "")


def resolve_card(spec: "str | ModelCard | os.PathLike", cache_dir=None, hf_class: str | None = None) -> ModelCard:
    """The card ``spec`` names, with its backend decided and its files local where they must be (an fsspec
    URL copied into the cache, the embedded model unpacked)."""
    if isinstance(spec, str) and remote_protocol(spec.strip()):
        spec = str(fetch_remote(spec.strip(), cache_dir))  # s3://, gs://, …: a local copy, then as a path
    card = REGISTRY.resolve(spec)
    return resolve_backend(with_files(card, cache_dir), cache_dir, hf_class)


# engine= -> the backend that runs a torch model's weights elsewhere (it loads the torch model through `load`)
ENGINES = {"mindspore": "mindspore"}


def with_engine(card: ModelCard, engine: "str | None") -> ModelCard:
    """``engine="mindspore"``: the card, run by that engine's backend (which converts the torch model)."""
    if engine is None or engine == "torch" or ENGINES.get(engine) == card.backend:
        return card
    if engine not in ENGINES:
        raise ClipzooError(f"unknown engine {engine!r}; use torch or {', '.join(ENGINES)}")
    return card.replace(backend=ENGINES[engine], config={**card.config, "torch_backend": card.backend})


def _build(card: ModelCard, options: dict[str, Any], kwargs: dict[str, Any]) -> Comparator:
    backend = get_backend(card.backend)
    if getattr(backend, "NEEDS_LOADER", False):  # it loads a second model (an image side): it gets ours
        kwargs = {"loader": load, **kwargs}
    return backend.load(card, **options, **kwargs)


def resolve_backend(card: ModelCard, cache_dir, hf_class: str | None = None) -> ModelCard:
    """Decide the backend of a card whose backend is 'auto' (local paths, unknown hub repos), and send a
    transformers folder whose config.json is CLAP's to the clap backend."""
    if card.backend == "auto":
        card = card.replace(backend=_sniff_backend(card, cache_dir))
    hf_class = hf_class or card.config.get("hf_class")
    if card.backend == "transformers" and hf_class in (None, "ClapModel") and _model_type(card, cache_dir) == "clap":
        card = card.replace(backend="clap")
    elif card.backend == "transformers" and (hf_class in FAMILY_CLASSES or (  # ALIGN, OWL-ViT, … (hf_families)
            hf_class is None and _model_type(card, cache_dir) in FAMILY_TYPES)):
        card = card.replace(backend="hf_family")
    elif card.backend == "transformers" and (hf_class in VIDEO_CLASSES or (  # X-CLIP, PE video, VideoPrism
            hf_class is None and _model_type(card, cache_dir) in VIDEO_TYPES)):
        card = card.replace(backend="hf_video", modalities=("video", "text"))
    return card


def _sniff_backend(card: ModelCard, cache_dir) -> str:
    src = card.source
    if src.path:
        if os.path.isdir(src.path):
            return sniff_folder(src.path)
        if src.path.lower().endswith(".ckpt") and not _is_torch_file(src.path):
            return "mindspore"  # a MindSpore checkpoint (protobuf; a Lightning .ckpt is a torch zip or pickle)
        return "jax" if src.path.lower().endswith(".pkl") else "open_clip"  # .pkl: open_clip_jax's parameters
    if not src.hf_repo:
        return "open_clip"  # a URL, or an open_clip pair
    try:
        hub_file(src.hf_repo, "open_clip_config.json", cache_dir)
        return "open_clip"
    except ModelNotCachedError as exc:
        if not getattr(exc, "missing_file", False) and not _any_cached(src.hf_repo, cache_dir):
            raise exc from None  # offline, and no other backend's files are cached either
    if _any_cached(src.hf_repo, cache_dir, ("modules.json",)):
        return "sentence_transformers"
    return "transformers"


def _is_torch_file(path: str) -> bool:
    """A torch.save file: a zip archive or a bare pickle (MindSpore's .ckpt is protobuf)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return head == b"PK" or head[:1] == b"\x80"


def _any_cached(repo: str, cache_dir, names=("config.json", "modules.json")) -> bool:
    for name in names:
        try:
            hub_file(repo, name, cache_dir)
            return True
        except ModelNotCachedError:
            continue
    return False


def _model_type(card: ModelCard, cache_dir) -> str | None:
    """``model_type`` in a transformers model's config.json (None when it cannot be read here, or is no name — a
    list there was an unhashable-type traceback: the backend then reports the problem in its own words)."""
    try:
        if card.source.path:
            config = os.path.join(card.source.path, "config.json")
        elif card.source.hf_repo:
            config = hub_file(card.source.hf_repo, "config.json", cache_dir)
        else:
            return None
        model_type = read_json(config).get("model_type")
    except (ClipzooError, OSError, ValueError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) else None


def load_all(query: "str | dict[str, Any] | None" = None, *, device: str = "cpu", precision: str = "fp32",
             load_kwargs: "dict[str, Any] | None" = None, **filters: Any) -> "list[Comparator]":
    """Load every model a registry query matches, in registry order (mmc: ``REGISTRY.find(...)`` then each
    loader's ``load()``): ``load_all(architecture="clip", publisher="openai")``,
    ``load_all("[clip - openai - RN*]")`` (an alias whose parts may be globs) or ``load_all({"id": "ViT-B*"})``.
    Filters are :meth:`Registry.find`'s; ``load_kwargs`` go to each :func:`load`. No match raises
    :class:`UnknownModelError`."""
    if isinstance(query, str):
        parts = parse_alias(query.strip())
        if parts is None:
            raise ClipzooError(f"query {query!r} is not an alias pattern; write '[architecture - publisher - id]' "
                               "(globs allowed, e.g. '[clip - openai - RN*]') or pass registry filters")
        filters = {"architecture": parts[0], "publisher": parts[1], "id": parts[2], **filters}
    elif isinstance(query, dict):
        filters = {**query, **filters}
    try:
        cards = REGISTRY.find(**filters)
    except TypeError as exc:
        raise ClipzooError(f"bad model query: {exc}") from None
    if not cards:
        shown = ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "(no filters)"
        raise UnknownModelError(f"no model matches {shown}; list models with `clipzoo models`")
    return [load(card, device=device, precision=precision, **(load_kwargs or {})) for card in cards]
