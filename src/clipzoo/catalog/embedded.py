"""The embedded default model, ``clipzoo/tiny-shapes``: a tiny CLIP trained offline, shipped in the package.

``clipzoo train --recipe tiny-shapes`` trains it from scratch on generated captioned shapes (2 CPU
cores, minutes). :func:`pack` turns the trained folder into two small files beside this module:

- ``tiny-shapes.json``: the open_clip model / preprocessing config, the recipe's metrics and the
  token ids the training captions used;
- ``tiny-shapes.safetensors``: every weight in fp16, except that the 49,408-row token table keeps
  only the rows of those token ids (rows no training caption touched were never updated from their
  random initialisation; they are stored as zeros). That keeps the file at a few MB instead of 25.

On first load, :func:`materialise` writes an ordinary open_clip folder (``open_clip_config.json`` +
``open_clip_model.safetensors``, float32) into the cache (``~/.cache/clipzoo/embedded/<name>-<digest>``)
and the open_clip backend loads it like any trained folder. If the packed files are missing (a
stripped install), the recipe is run once instead and its output cached — same model, minutes later.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from ..cards import ModelCard, Source

__all__ = ["EMBEDDED", "embedded_cards", "pack", "materialise", "packed_files"]

EMBEDDED: dict[str, dict[str, Any]] = {
    "tiny-shapes": {
        "recipe": "tiny-shapes",
        "description": ("Tiny CLIP trained offline by clipzoo's tiny-shapes recipe on generated captioned shapes "
                        "(64 px ModifiedResNet, 3-layer text transformer); knows 7 shapes x 11 colours"),
    },
}
TOKEN_KEY = "token_embedding.weight"


def packed_files(name: str) -> tuple[Path, Path]:
    base = resources.files(__package__)
    return Path(str(base.joinpath(f"{name}.json"))), Path(str(base.joinpath(f"{name}.safetensors")))


def _meta(name: str) -> "dict[str, Any] | None":
    meta_path, weights = packed_files(name)
    if not (meta_path.is_file() and weights.is_file()):
        return None
    return json.loads(meta_path.read_text(encoding="utf-8"))


def embedded_cards() -> list[ModelCard]:
    cards = []
    for name, spec in EMBEDDED.items():
        meta = _meta(name)
        model_cfg = (meta or {}).get("model_cfg") or _recipe_model_cfg(spec["recipe"])
        image_size = model_cfg["vision_cfg"]["image_size"]
        cards.append(ModelCard(
            architecture="clip", publisher="clipzoo", id=name, backend="open_clip",
            source=Source(path=str(_cache_folder(name, meta))),
            embed_dim=model_cfg["embed_dim"],
            image_size=image_size[0] if isinstance(image_size, (list, tuple)) else image_size,
            context_length=model_cfg["text_cfg"]["context_length"],
            description=spec["description"],
            config={"embedded": name},
        ))
    return cards


def _recipe_model_cfg(recipe: str) -> dict[str, Any]:
    from ..train.recipes import RECIPES

    return RECIPES[recipe]["model_config"]


def _digest(name: str, meta: "dict[str, Any] | None") -> str:
    if meta is None:
        return "recipe"
    if "sha256" not in meta:
        meta["sha256"] = hashlib.sha256(packed_files(name)[1].read_bytes()).hexdigest()
    return meta["sha256"][:16]


def _cache_folder(name: str, meta: "dict[str, Any] | None", cache_dir: "str | os.PathLike | None" = None) -> Path:
    from ..download import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "embedded" / f"{name}-{_digest(name, meta)}"


def materialise(name: str, cache_dir: "str | os.PathLike | None" = None) -> Path:
    """The open_clip folder of embedded model ``name``, written into the cache on first use."""
    import torch
    from safetensors.torch import load_file, save_file

    meta = _meta(name)
    folder = _cache_folder(name, meta, cache_dir)
    if (folder / "open_clip_model.safetensors").is_file():
        return folder
    if meta is None:
        return _train_into(name, folder)
    _, weights = packed_files(name)
    sd = {k: v.float() for k, v in load_file(str(weights)).items()}
    ids = torch.tensor(meta["token_ids"], dtype=torch.long)
    rows = sd.pop("token_embedding.rows")
    table = torch.zeros(meta["vocab_size"], rows.shape[1])
    table[ids] = rows
    sd[TOKEN_KEY] = table
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {"model_cfg": meta["model_cfg"], "preprocess_cfg": meta["preprocess_cfg"]}
    (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(sd, str(tmp / "open_clip_model.safetensors"), metadata={"format": "pt"})
    (tmp / "clipzoo_train.json").write_text(json.dumps(meta.get("train", {}), indent=2) + "\n")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _train_into(name: str, folder: Path) -> Path:
    import sys

    from ..train.engine import train
    from ..train.recipes import recipe_config

    recipe = EMBEDDED[name]["recipe"]
    print(f"clipzoo: the packed weights of {name} are missing from this install; training them with the "
          f"{recipe} recipe (a few minutes, once) into {folder}", file=sys.stderr)
    cfg = recipe_config(recipe).replace(output=str(folder.with_name(folder.name + ".run")), progress=False)
    result = train(cfg)
    shutil.copytree(result.model_dir, folder, dirs_exist_ok=True)
    return folder


def pack(trained_folder: "str | os.PathLike", name: str, token_ids: "Iterable[int]",
         out_dir: "str | os.PathLike | None" = None, extra: "dict[str, Any] | None" = None) -> tuple[Path, Path]:
    """Pack a trained open_clip folder as the embedded model ``name`` (see the module docstring).

    ``token_ids``: the token ids the training captions (and the zero-shot prompts) use: the rows kept.
    A row's values cannot tell whether training touched it, so the caller, who tokenised the captions,
    names them.
    """
    import torch
    from safetensors.torch import load_file, save_file

    trained_folder = Path(trained_folder)
    config = json.loads((trained_folder / "open_clip_config.json").read_text())
    sd = load_file(str(trained_folder / "open_clip_model.safetensors"))
    table = sd.pop(TOKEN_KEY)
    ids = sorted({int(i) for i in token_ids})
    sd["token_embedding.rows"] = table[torch.tensor(ids)]
    sd = {k: v.half().contiguous() for k, v in sd.items()}
    if out_dir is None:
        meta_path, weights = packed_files(name)
    else:
        meta_path, weights = Path(out_dir) / f"{name}.json", Path(out_dir) / f"{name}.safetensors"
    save_file(sd, str(weights), metadata={"format": "pt"})
    train_info = {}
    if (trained_folder / "clipzoo_train.json").is_file():
        train_info = json.loads((trained_folder / "clipzoo_train.json").read_text())
    meta = {"name": name, "model_cfg": config["model_cfg"], "preprocess_cfg": config["preprocess_cfg"],
            "vocab_size": int(table.shape[0]), "token_ids": ids,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "train": train_info, **(extra or {})}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta_path, weights
