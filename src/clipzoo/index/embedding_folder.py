"""A clip-retrieval embedding folder read for an index (``--from-embeddings``, ``build-vectors``), every shard checked
before anything is written.

- The folder (:func:`open_embeddings`): ``clipzoo.json`` must be a JSON object; two files of one shard number
  (``img_emb_0.npy`` and ``img_emb_00.npy``, left by two runs with a different ``output_partition_count``) are
  refused — clip-retrieval's reader (embedding-reader) reads both, each paired by name order with a parquet file.
- Each shard (:meth:`~clipzoo.embed.clip_retrieval.ClipRetrievalFolder.shard_pairs`): its ``.npy`` readable, its
  parquet present, readable and of as many rows.
- Rows (:func:`check_rows`, :func:`unit_rows`): finite, not all zeros (no direction: no query finds it), and
  normalised to unit length on import, so that scores are cosines whatever the writer stored.
- ``image_path`` (:func:`row_key`, :class:`PathPlan`): as clip-retrieval means it — a relative path is relative to
  the working folder (clip-retrieval's reader opens it as given), an absolute one as it is, a URL kept. The rows'
  **root** is the deepest folder holding every local path, and each row's path inside it is its ``relpath`` (its
  first folder the partition), so an index never names an image by an absolute path.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embed.clip_retrieval import (
    FEATURE_DIRS,
    METADATA_DIR,
    METADATA_PREFIX,
    SIDECAR,
    ClipRetrievalFolder,
    open_clip_retrieval,
    parquet_rows,
    read_columns,
)
from ..errors import ClipzooError

__all__ = ["open_embeddings", "read_columns", "parquet_rows", "check_rows", "unit_rows", "row_key",
           "PathPlan", "NORM_ROWS"]

NORM_ROWS = 4096
"""Rows normalised (and checked) at a time, in float64: 32 MB for 1,024-dim rows."""


def open_embeddings(path: "str | os.PathLike") -> ClipRetrievalFolder:
    """:func:`~clipzoo.embed.clip_retrieval.open_clip_retrieval`, with its sidecar's shape and its shard names
    checked (a one-line :class:`ClipzooError` each)."""
    folder = open_clip_retrieval(path)
    if not isinstance(folder.record, dict):
        raise ClipzooError(f"{str(folder.root / SIDECAR)!r} holds a JSON {type(folder.record).__name__}, not the "
                           "object clipzoo writes; delete it (the model then comes from --model)")
    layout = [(d, p, ".npy") for d, p in FEATURE_DIRS.values()] + [(METADATA_DIR, METADATA_PREFIX, ".parquet")]
    for sub, prefix, suffix in layout:
        _check_numbers(folder.root / sub, prefix, suffix)
    return folder


def _check_numbers(folder: Path, prefix: str, suffix: str) -> None:
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    seen: dict[int, str] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        m = pattern.match(p.name)
        if not m:
            continue
        number = int(m.group(1))
        if number in seen:
            raise ClipzooError(f"{str(folder / seen[number])!r} and {str(p)!r} are both shard {number} (two runs "
                               "padded the numbers differently); clip-retrieval's reader reads both: remove the one an "
                               "earlier run left")
        seen[number] = p.name


def _norms(block: np.ndarray) -> np.ndarray:
    x = np.asarray(block, dtype=np.float64)  # float16/32 values cannot overflow or underflow it when squared
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def check_rows(feats: Any, where: "str | os.PathLike", first: int = 0) -> None:
    """A one-line error naming ``where`` and the row for the first row of ``feats`` (rows from ``first``) that holds
    NaN or infinity, or is all zeros."""
    for a in range(0, len(feats), NORM_ROWS):
        block = np.asarray(feats[a:a + NORM_ROWS])
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad):
            raise ClipzooError(f"vectors file {os.fspath(where)!r} holds a non-finite value (NaN or Inf) in row "
                               f"{first + a + int(bad[0])}; remove or re-embed those rows")
        zero = np.flatnonzero(~np.any(block, axis=1))
        if len(zero):
            row = first + a + int(zero[0])
            raise ClipzooError(f"vectors file {os.fspath(where)!r} holds an all-zero row (row {row}): it has no "
                               "direction, so no query could find it; remove or re-embed those rows")


def unit_rows(feats: Any) -> np.ndarray:
    """``feats`` as float32 rows of unit length (rows checked by :func:`check_rows`)."""
    out = np.empty(feats.shape, np.float32)
    for a in range(0, len(feats), NORM_ROWS):
        block = np.asarray(feats[a:a + NORM_ROWS], dtype=np.float64)
        out[a:a + NORM_ROWS] = block / _norms(block)[:, None]
    return out


def row_key(value: Any, row: int, cwd: str) -> str:
    """A row's ``image_path`` as clip-retrieval means it: a URL as given, a local path made absolute against
    ``cwd`` (the working folder) and normalised (``a/../b.png`` → ``b.png``)."""
    if value is None or (isinstance(value, float) and value != value) or str(value) == "":
        raise ClipzooError(f"row {row} has no image_path ({value!r}); every image row needs one")
    path = str(value)
    if "\0" in path:
        raise ClipzooError(f"row {row}'s image_path holds a NUL byte: {path!r}")
    if "://" in path:
        return path
    return os.path.normpath(os.path.join(cwd, path))


@dataclass
class PathPlan:
    """What the first pass over the rows found: the folder every local ``image_path`` lies under (``root``; None
    when there are none) and how many rows there are."""

    origin: str = ""  # the embedding folder, as the user named it
    cwd: str = field(default_factory=os.getcwd)
    root: str | None = None
    count: int = 0
    dim: int | None = None
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, values: list, start: int) -> None:
        """Take in the ``image_path`` values of rows ``start …``; refuses a missing one and a second row of a path."""
        folders = set()
        for j, value in enumerate(values):
            key = row_key(value, start + j, self.cwd)
            if key in self._seen:
                raise ClipzooError(f"{str(value)!r} appears twice in {self.origin!r}; each row's image_path must "
                                   "be unique")
            self._seen.add(key)
            if "://" not in key:
                folders.add(os.path.dirname(key))
        if folders:
            self.root = os.path.commonpath([*folders, *([self.root] if self.root else [])])

    def relpath(self, key: str) -> str:
        """A row's path inside :attr:`root` (a URL: itself)."""
        if "://" in key or self.root is None:
            return key
        return key[len(self.root.rstrip("/")) + 1:]
