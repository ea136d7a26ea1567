"""The built-in catalogue: the embedded model, open_clip's pretrained pairs and the curated TOML cards.

Importing open_clip takes seconds (it imports torch, timm, …), so open_clip's cards are also kept as JSON
in the cache folder, keyed by the installed open_clip's version and files: ``clipzoo models`` reads them
without importing open_clip once they are there. Any change to open_clip (an upgrade, an edited config in
an editable install) changes the key, and the cards are read afresh.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib import metadata
from pathlib import Path

from .cards import ModelCard
from .catalog import card_from_dict, open_clip_card, toml_cards
from .catalog.embedded import embedded_cards
from .constants import default_cache_dir
from .files import atomic_write_text

TOML_FILES = ("openai.toml", "hf_hub.toml", "clap.toml", "open_clip_jax.toml", "mindspore.toml",
              "slip.toml", "kelip.toml", "clip_fa.toml", "cloob.toml", "long_clip.toml", "hf_families.toml",
              "video.toml")


def builtin_cards() -> list[ModelCard]:
    """Every card clipzoo knows without being told: embedded, open_clip's catalogue, curated TOML."""
    return embedded_cards() + open_clip_cards() + [c for name in TOML_FILES for c in toml_cards(name)]


def open_clip_cards() -> list[ModelCard]:
    """open_clip's pretrained catalogue as cards, read from open_clip itself (cached, see the module doc)."""
    key = open_clip_key()
    path = default_cache_dir() / "catalog" / f"open_clip-{key}.json" if key else None
    if path is not None:
        try:
            return [card_from_dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError):
            pass  # missing or unreadable: rebuild it
    import open_clip

    cards = [open_clip_card(model, tag) for model, tag in open_clip.list_pretrained()]
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = [{k: v for k, v in c.to_dict().items() if k != "alias"} for c in cards]
            atomic_write_text(path, json.dumps(data))
        except OSError:
            pass  # a read-only cache only costs speed
    return cards


def open_clip_key() -> str | None:
    """A short digest naming the installed open_clip (version, and the mtimes of its catalogue files),
    found without importing it; None when it is not installed."""
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
