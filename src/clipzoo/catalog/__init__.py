"""Built-in model cards.

Three kinds of source:
- the embedded default model(s) shipped in this package (``clipzoo/tiny-shapes``, see :mod:`.embedded`);
- open_clip's own catalogue, read at run time from ``open_clip.list_pretrained()`` (never retyped);
- curated TOML files beside this module (OpenAI's names, HF hub models, LAION's CLAP audio models), kept as data.
"""
from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from pathlib import Path

from ..cards import ModelCard, Source

# open_clip pretrained tag (prefix) -> publisher. First match wins.
_TAG_PUBLISHERS = [
    ("openai", "openai"),
    ("laion", "laion"), ("frozen_laion", "laion"), ("mscoco_finetuned_laion", "laion"),
    ("datacompdr", "apple"), ("datacomp", "datacomp"), ("commonpool", "datacomp"),
    ("dfn", "apple"),
    ("metaclip", "facebook"), ("meta", "facebook"),
    ("webli", "google"),
    ("merged2b", "baai"),
    ("yfcc15m", "openclip"), ("cc12m", "openclip"),
]
# open_clip model name pattern -> architecture. First match wins.
_NAME_ARCHITECTURES = [
    (r"coca", "coca"), (r"siglip2", "siglip2"), (r"siglip", "siglip"), (r"^eva", "eva-clip"),
    (r"mobileclip", "mobileclip"), (r"^pe-core", "pe"), (r"clipa", "clipa"), (r"vitamin", "vitamin"),
    (r"nllb-clip", "nllb-clip"),
]


def open_clip_publisher(model: str, tag: str) -> str:
    if model.startswith("nllb-clip") and tag == "v1":
        return "facebook"
    if model.startswith("MobileCLIP"):
        return "apple"
    for prefix, publisher in _TAG_PUBLISHERS:
        if tag.startswith(prefix):
            return publisher
    return "openclip"


def open_clip_architecture(model: str) -> str:
    low = model.lower()
    for pattern, arch in _NAME_ARCHITECTURES:
        if re.search(pattern, low):
            return arch
    return "clip"


def open_clip_dims(model: str) -> tuple[int | None, int | None, int | None]:
    import open_clip

    cfg = open_clip.get_model_config(model) or {}
    image_size = cfg.get("vision_cfg", {}).get("image_size")
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    return cfg.get("embed_dim"), image_size, cfg.get("text_cfg", {}).get("context_length", 77)


def open_clip_card(model: str, tag: str | None) -> ModelCard:
    """A card for an open_clip (model, pretrained tag) pair; ``tag=None`` means untrained weights."""
    embed_dim, image_size, context_length = open_clip_dims(model)
    return ModelCard(
        architecture=open_clip_architecture(model),
        publisher=open_clip_publisher(model, tag) if tag else "untrained",
        id=f"{model}/{tag}" if tag else model,
        backend="open_clip",
        source=Source(open_clip=(model, tag or "")),
        embed_dim=embed_dim,
        image_size=image_size,
        context_length=context_length,
        config={"model_name": model, "pretrained": tag},
    )


def open_clip_cards() -> list[ModelCard]:
    """open_clip's pretrained catalogue as cards, read from open_clip itself.

    Importing open_clip takes seconds (it imports torch, timm, …), so the cards are also kept as JSON
    in the cache folder, keyed by the installed open_clip's version and files: ``clipzoo models``
    reads them without importing open_clip once they are there. Any change to open_clip (an upgrade,
    an edited config in an editable install) changes the key, and the cards are read afresh.
    """
    key = _open_clip_key()
    path = _cards_cache_path(key) if key else None
    if path is not None:
        try:
            return [_card_from_dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError):
            pass  # missing or unreadable: rebuild it
    import open_clip

    cards = [open_clip_card(model, tag) for model, tag in open_clip.list_pretrained()]
    if path is not None:
        try:
            from ..files import atomic_write

            path.parent.mkdir(parents=True, exist_ok=True)
            data = [{k: v for k, v in c.to_dict().items() if k != "alias"} for c in cards]
            atomic_write(path, lambda f: f.write(json.dumps(data).encode("utf-8")))
        except OSError:
            pass  # a read-only cache only costs speed
    return cards


def _open_clip_key() -> str | None:
    """A short digest naming the installed open_clip (version, and the mtimes of its catalogue files),
    found without importing it; None when it is not installed."""
    import hashlib
    import importlib.util
    from importlib import metadata

    try:
        spec = importlib.util.find_spec("open_clip")
        version = metadata.version("open_clip_torch")
    except (ImportError, ValueError, metadata.PackageNotFoundError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    parts = [version, str(root)]
    for name in ("pretrained.py", "factory.py", "model_configs"):
        try:
            parts.append(f"{name}:{(root / name).stat().st_mtime_ns}")
        except OSError:
            parts.append(f"{name}:-")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _cards_cache_path(key: str) -> Path:
    from ..download import default_cache_dir

    return default_cache_dir() / "catalog" / f"open_clip-{key}.json"


def _card_from_dict(entry: dict) -> ModelCard:
    entry = dict(entry)
    source = dict(entry.pop("source", {}))
    if source.get("open_clip") is not None:
        source["open_clip"] = tuple(source["open_clip"])  # JSON gives a list
    source = Source(**source)
    entry.pop("alias", None)  # to_dict() adds it; it is derived
    for key in ("modalities", "also_known_as"):
        if key in entry:
            entry[key] = tuple(entry[key])
    return ModelCard(source=source, **entry)


def toml_cards(name: str) -> list[ModelCard]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return [_card_from_dict(e) for e in tomllib.loads(text)["model"]]


def builtin_cards() -> list[ModelCard]:
    from .embedded import embedded_cards

    return (embedded_cards() + open_clip_cards() + toml_cards("openai.toml") + toml_cards("hf_hub.toml")
            + toml_cards("clap.toml"))
