"""The embedded default model, ``clipzoo/tiny-shapes``: a tiny CLIP trained offline, shipped in the package.

Data only: the model's card and its two packed files beside this module —

- ``tiny-shapes.json``: the open_clip model / preprocessing config, the recipe's metrics and the
  token ids the training captions used;
- ``tiny-shapes.safetensors``: every weight in fp16, except that the 49,408-row token table keeps
  only the rows of those token ids.

:mod:`clipzoo.packing` writes them from a trained folder (``scripts/build_tiny_shapes.py``, after
``clipzoo train --recipe tiny-shapes``) and, on first load, unpacks them into an ordinary open_clip
folder in the cache (``~/.cache/clipzoo/embedded/<name>-<digest>``). Loading never trains.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..cards import ModelCard, Source
from ..constants import default_cache_dir

__all__ = ["EMBEDDED", "embedded_cards", "packed_files", "packed_meta", "cache_folder"]

EMBEDDED: dict[str, dict[str, Any]] = {
    "tiny-shapes": {
        "recipe": "tiny-shapes",
        "description": ("Tiny CLIP trained offline by clipzoo's tiny-shapes recipe on generated captioned shapes "
                        "(64 px ModifiedResNet, 3-layer text transformer); knows 7 shapes x 11 colours"),
    },
}


def packed_files(name: str) -> tuple[Path, Path]:
    """The packed metadata (.json) and weights (.safetensors) of embedded model ``name``."""
    base = resources.files(__package__)
    return Path(str(base.joinpath(f"{name}.json"))), Path(str(base.joinpath(f"{name}.safetensors")))


def packed_meta(name: str, files: "tuple[Path, Path] | None" = None) -> "dict[str, Any] | None":
    """The packed metadata of ``name``, or None when its files are missing (a stripped install)."""
    meta_path, weights = files or packed_files(name)
    if not (meta_path.is_file() and weights.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if "sha256" not in meta:
        meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return meta


def cache_folder(name: str, meta: "dict[str, Any] | None", cache_dir=None) -> Path:
    """Where the unpacked open_clip folder of ``name`` lives: keyed by the packed weights' digest."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    digest = meta["sha256"][:16] if meta else "missing"
    return root / "embedded" / f"{name}-{digest}"


def embedded_cards() -> list[ModelCard]:
    cards = []
    for name, spec in EMBEDDED.items():
        meta = packed_meta(name)
        model_cfg = (meta or {}).get("model_cfg") or {}
        image_size = model_cfg.get("vision_cfg", {}).get("image_size")
        cards.append(ModelCard(
            architecture="clip", publisher="clipzoo", id=name, backend="open_clip",
            source=Source(path=str(cache_folder(name, meta))),
            embed_dim=model_cfg.get("embed_dim"),
            image_size=image_size[0] if isinstance(image_size, (list, tuple)) else image_size,
            context_length=model_cfg.get("text_cfg", {}).get("context_length"),
            description=spec["description"],
            config={"embedded": name},
        ))
    return cards
