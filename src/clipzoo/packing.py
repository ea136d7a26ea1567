"""Packing and unpacking the embedded model's shipped files (see :mod:`clipzoo.catalog.embedded`).

:func:`pack` turns a trained open_clip folder into the two small files shipped beside the catalogue: every
weight in fp16, and of the 49,408-row token table only the rows of the token ids the training captions
used (rows no caption touched were never updated from their random initialisation; they are stored as
zeros). That keeps the file at a few MB instead of 25.

:func:`materialise` writes them back, on first load, as an ordinary open_clip folder
(``open_clip_config.json`` + ``open_clip_model.safetensors``, float32) in the cache, which the open_clip
backend loads like any trained folder. Loading never trains: a stripped install without the packed files
gets an error that says how to rebuild them.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .cards import ModelCard, Source
from .catalog.embedded import cache_folder, packed_files, packed_meta
from .errors import CheckpointError
from .files import build_folder_once

__all__ = ["pack", "materialise", "with_files", "packed_files", "TOKEN_KEY"]

WEIGHTS_FILE = "open_clip_model.safetensors"  # open_clip's hub layout; written last, so it marks a complete folder

TOKEN_KEY = "token_embedding.weight"
ROWS_KEY = "token_embedding.rows"


def with_files(card: ModelCard, cache_dir: "str | os.PathLike | None" = None) -> ModelCard:
    """``card``, or for an embedded model its card with the folder unpacked into the cache as its source."""
    if not card.config.get("embedded"):
        return card
    return card.replace(source=Source(path=str(materialise(card.config["embedded"], cache_dir))))


def materialise(name: str, cache_dir: "str | os.PathLike | None" = None) -> Path:
    """The open_clip folder of embedded model ``name``, written into the cache on first use."""
    import torch
    from safetensors.torch import load_file, save_file

    files = packed_files(name)
    meta = packed_meta(name, files)
    if meta is None:
        raise CheckpointError(f"the packed weights of the embedded model {name!r} are missing from this install "
                              f"({files[1]}); reinstall clipzoo, or rebuild them: clipzoo train --recipe {name} "
                              f"--output runs/{name}, then python scripts/build_tiny_shapes.py --from-run runs/{name}")
    folder = cache_folder(name, meta, cache_dir)
    if (folder / WEIGHTS_FILE).is_file():
        return folder
    sd = {k: v.float() for k, v in load_file(str(files[1])).items()}
    rows = sd.pop(ROWS_KEY)
    table = torch.zeros(meta["vocab_size"], rows.shape[1])
    table[torch.tensor(meta["token_ids"], dtype=torch.long)] = rows
    sd[TOKEN_KEY] = table
    config = {"model_cfg": meta["model_cfg"], "preprocess_cfg": meta["preprocess_cfg"]}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "clipzoo_train.json").write_text(json.dumps(meta.get("train", {}), indent=2) + "\n")
        save_file(sd, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})  # last: the marker

    build_folder_once(folder, write, WEIGHTS_FILE)
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
    sd = load_file(str(trained_folder / WEIGHTS_FILE))
    table = sd.pop(TOKEN_KEY)
    ids = sorted({int(i) for i in token_ids})
    sd[ROWS_KEY] = table[torch.tensor(ids)]
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
