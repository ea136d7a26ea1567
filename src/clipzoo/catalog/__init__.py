"""Built-in model cards.

Data only (it imports nothing of clipzoo but cards, errors and constants — an import-linter contract):
- the embedded default model(s) shipped in this package (``clipzoo/tiny-shapes``, see :mod:`.embedded`);
- the rules that name open_clip's catalogue (publisher from the pretrained tag, architecture from the
  model name); the catalogue itself is read from ``open_clip.list_pretrained()`` by
  :mod:`clipzoo.builtin_cards` (never retyped);
- curated TOML files beside this module (OpenAI's names, HF hub models, LAION's CLAP audio models).
"""
from __future__ import annotations

import re
import tomllib
from importlib import resources

from ..cards import ModelCard, Source
from ..constants import DEFAULT_CONTEXT_LENGTH

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
    return cfg.get("embed_dim"), image_size, cfg.get("text_cfg", {}).get("context_length", DEFAULT_CONTEXT_LENGTH)


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


def card_from_dict(entry: dict) -> ModelCard:
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
    return [card_from_dict(e) for e in tomllib.loads(text)["model"]]
