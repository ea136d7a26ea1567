"""Embeddings in memory and on disk: the :class:`Embeddings` record, its ``.npy`` file and the JSON sidecar.

The ``.npy`` file holds a float32 matrix (one row per input, in order); a JSON sidecar beside it
(``emb.npy`` -> ``emb.json``) lists the inputs and says which model made the rows.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cards import TEXT
from ..errors import ClipzooError
from ..files import atomic_write, atomic_write_text, check_output_file
from ..inputs import sidecar_text
from ..json_text import json_text

__all__ = ["Embeddings", "sidecar_path", "npy_path", "save_embeddings", "check_outputs", "write_sidecar",
           "load_embeddings"]


@dataclass
class Embeddings:
    """Rows of features and what they are: ``features[i]`` embeds ``inputs[i]``."""

    features: Any  # numpy.ndarray (N, D), float32
    inputs: list[str]
    modality: str
    model: str = ""
    normalized: bool = True
    skipped: list[dict[str, str]] = field(default_factory=list)  # inputs left out: {"input", "error"}

    def metadata(self) -> dict[str, Any]:
        return {"model": self.model, "modality": self.modality, "count": int(self.features.shape[0]),
                "dim": int(self.features.shape[1]) if self.features.ndim == 2 else None,
                "dtype": str(self.features.dtype), "normalized": self.normalized,
                "inputs": list(self.inputs), "skipped": list(self.skipped)}


def sidecar_path(npy_path: "str | os.PathLike") -> Path:
    """``emb.npy`` -> ``emb.json``: the inputs and model behind the rows."""
    return Path(npy_path).with_suffix(".json")


def npy_path(out: "str | os.PathLike") -> Path:
    """The ``.npy`` file an output name means: ``~`` expanded, ``.npy`` added if missing."""
    out = Path(os.path.expanduser(os.fspath(out)))
    return out if out.suffix == ".npy" else out.with_name(out.name + ".npy")


def save_embeddings(embeddings: Embeddings, out: "str | os.PathLike") -> tuple[Path, Path]:
    """Write ``out`` (``.npy`` added if missing) and its JSON sidecar; each file appears whole or not at all, and
    neither is written when either place is taken by a folder or by one of the files embedded
    (:func:`check_outputs`)."""
    import numpy as np

    npy = check_outputs(out, embeddings.inputs if embeddings.modality != TEXT else ())
    if npy.parent and not npy.parent.exists():
        npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(npy, lambda f: np.save(f, embeddings.features))
    return npy, write_sidecar(npy, embeddings.metadata())


def check_outputs(out: "str | os.PathLike", inputs=()) -> Path:
    """Before any work: the ``.npy`` that ``out`` names (returned) and its sidecar may be neither a folder nor one
    of ``inputs`` (the paths the run reads: a texts file, a table, a tar shard, the image files) — writing there
    would destroy it; a one-line :class:`~clipzoo.errors.ClipzooError` names both. Any other file there, such as a
    previous run's output, is replaced."""
    npy = npy_path(out)
    side = sidecar_path(npy)
    names = {npy.name, side.name}
    # only an input of either name, or a link, can be either place (one pass, a lookup only for the links)
    given = (os.path.expanduser(os.fspath(q)) for q in inputs if q is not None)
    inputs = [q for q in given if os.path.basename(q) in names or os.path.islink(q)] \
        if os.path.lexists(npy) or os.path.lexists(side) else []
    check_output_file(npy, inputs, "output", ClipzooError, read_whole_folders=False)
    check_output_file(side, inputs, "sidecar", ClipzooError, read_whole_folders=False,
                      fix=f"choose another output name than {os.fspath(npy)!r} (its sidecar takes the name with .json)")
    return npy


def write_sidecar(npy_path: "str | os.PathLike", metadata: dict[str, Any]) -> Path:
    """Write the JSON sidecar of ``npy_path`` (whole or not at all); a text longer than
    :data:`~clipzoo.constants.SIDECAR_TEXT_CHARS` is listed by its beginning (:func:`~clipzoo.inputs.sidecar_text`)."""
    side = sidecar_path(npy_path)
    if metadata.get("modality") == TEXT:
        metadata = {**metadata, "inputs": [sidecar_text(t) for t in metadata.get("inputs", [])]}
    atomic_write_text(side, json_text(metadata, indent=1))
    return side


def load_embeddings(path: "str | os.PathLike") -> Embeddings:
    """Read a ``.npy`` written by :func:`save_embeddings` with its sidecar (inputs unknown if it is gone)."""
    import numpy as np

    npy = npy_path(path)
    if not npy.exists():
        raise ClipzooError(f"embeddings file {os.fspath(npy)!r} does not exist")
    features = np.load(npy)
    side = sidecar_path(npy)
    meta = json.loads(side.read_text(encoding="utf-8")) if side.exists() else {}
    return Embeddings(features, meta.get("inputs", []), meta.get("modality", ""), meta.get("model", ""),
                      meta.get("normalized", True), meta.get("skipped", []))
