"""clip-retrieval's embedding folder, both ways: what ``clip-retrieval inference`` writes and autofaiss reads.

Layout (one shard ``i`` per ``output_partition``, numbers zero-padded to the same width)::

    DIR/img_emb/img_emb_{i}.npy            image embeddings [n_i, d]
    DIR/text_emb/text_emb_{i}.npy          text embeddings [n_i, d] (row j pairs with image row j)
    DIR/metadata/metadata_{i}.parquet      one row per embedding row: ``image_path`` (images),
                                           ``caption`` (texts), and any further metadata columns
    DIR/clipzoo.json                       ours, optional: the model that made the rows (clip-retrieval
                                           and autofaiss ignore it)

:func:`write_clip_retrieval` writes it (float32 rows, each file whole or absent); :func:`open_clip_retrieval`
reads one written by us or by clip-retrieval (float16 rows are read as float32). Parquet needs pyarrow
(``pip install 'clipzoo[search]'``).
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cards import IMAGE, TEXT
from ..errors import ClipzooError
from ..extras import require
from ..files import atomic_write, atomic_write_text
from .results import Embeddings

__all__ = ["CLIP_RETRIEVAL_SHARD_ROWS", "SIDECAR", "ClipRetrievalFolder", "write_clip_retrieval",
           "open_clip_retrieval", "is_clip_retrieval", "parquet_rows", "read_columns", "rows_file"]

CLIP_RETRIEVAL_SHARD_ROWS = 1_000_000
"""Rows per shard by default (clip-retrieval's ``write_batch_size``)."""
SIDECAR = "clipzoo.json"
FEATURE_DIRS = {IMAGE: ("img_emb", "img_emb_"), TEXT: ("text_emb", "text_emb_")}
METADATA_DIR, METADATA_PREFIX = "metadata", "metadata_"
KEY_COLUMNS = {IMAGE: "image_path", TEXT: "caption"}


def rows_file(npy: Any):
    """A memory-mapped ``.npy`` of embedding rows (N, D); a :class:`ClipzooError` naming it when it is truncated,
    not a .npy file, or not 2-d (np.load's "mmap length is greater than file size" was a traceback)."""
    import numpy as np

    try:
        feats = np.load(npy, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise ClipzooError(f"{str(npy)!r} is not a readable .npy file ({err}); is it truncated?") from None
    if feats.ndim != 2:
        raise ClipzooError(f"{str(npy)!r} holds a {feats.ndim}-d array, not rows of embeddings")
    return feats


def _parquet():
    return require("pyarrow.parquet", "clip-retrieval's metadata (parquet)")


def parquet_rows(path: Path) -> int:
    """The row count a parquet file's footer gives; a one-line error naming a truncated or foreign file."""
    try:
        return int(_parquet().ParquetFile(path).metadata.num_rows)
    except ClipzooError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, … for a bad file
        raise _unreadable(path, exc) from None


def read_columns(path: Path, wanted: "tuple[str, ...] | None" = None) -> dict[str, list]:
    """The columns of ``wanted`` (all when None) that the parquet file ``path`` has, as lists (threads off: tens of
    MB of arenas); a one-line error naming a truncated or foreign file."""
    try:
        parquet = _parquet().ParquetFile(path)
        names = parquet.schema_arrow.names if wanted is None else [c for c in wanted if c in parquet.schema_arrow.names]
        return parquet.read(columns=names, use_threads=False).to_pydict()
    except ClipzooError:
        raise
    except Exception as exc:  # noqa: BLE001 - see parquet_rows
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> ClipzooError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0].rstrip(".")
    return ClipzooError(f"{str(path)!r} is not a readable parquet file ({first}); is it truncated? Write it again "
                        "(or remove it with its .npy shard)")


def _shard_files(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    """``{shard number: path}`` of ``folder/{prefix}{number}{suffix}``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    found: dict[int, Path] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = pattern.match(p.name)
            if m:
                found[int(m.group(1))] = p
    return found


# ------------------------------------------------------------------ writing
def write_clip_retrieval(out: "str | os.PathLike", *, image_features: Any = None,
                         image_paths: Sequence[str] | None = None, text_features: Any = None,
                         captions: Sequence[str] | None = None, model: str = "",
                         normalized: bool = True, shard_rows: int = CLIP_RETRIEVAL_SHARD_ROWS) -> dict[str, Any]:
    """Write ``out`` in clip-retrieval's layout; returns the ``clipzoo.json`` record.

    Images (``image_features`` with their ``image_paths``) and/or texts (``text_features`` with their
    ``captions``); with both, row i of each is one (image, caption) pair. Features may be memory-mapped:
    they are copied one shard at a time."""
    import numpy as np

    pq = _parquet()
    import pyarrow as pa  # noqa: E402 - comes with pyarrow.parquet, checked above

    parts = {m: f for m, f in ((IMAGE, image_features), (TEXT, text_features)) if f is not None}
    if not parts:
        raise ClipzooError("nothing to write: pass image and/or text embeddings")
    columns = {IMAGE: image_paths, TEXT: captions}
    counts = {len(f) for f in parts.values()} | {len(columns[m]) for m in parts if columns[m] is not None}
    if len(counts) != 1:
        raise ClipzooError(f"clip-retrieval rows must pair up: got row counts {sorted(counts)} for "
                           f"{' and '.join(parts)}")
    n = counts.pop()
    shard_rows = max(1, int(shard_rows))
    shards = max(1, math.ceil(n / shard_rows))
    width = int(math.log10(shards)) + 1  # as clip-retrieval pads its partition numbers
    root = Path(os.path.expanduser(os.fspath(out)))
    for m in parts:
        (root / FEATURE_DIRS[m][0]).mkdir(parents=True, exist_ok=True)
    (root / METADATA_DIR).mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    for s in range(shards):
        lo, hi = s * shard_rows, min(n, (s + 1) * shard_rows)
        tag = str(s).zfill(width)
        meta: dict[str, list] = {}
        for m, feats in parts.items():
            folder, prefix = FEATURE_DIRS[m]
            block = np.ascontiguousarray(feats[lo:hi], dtype=np.float32)
            written.add(atomic_write(root / folder / f"{prefix}{tag}.npy", lambda f, b=block: np.save(f, b)))
            meta[KEY_COLUMNS[m]] = [str(v) for v in columns[m][lo:hi]] if columns[m] is not None else [""] * (hi - lo)
        table = pa.table(meta)
        written.add(atomic_write(root / METADATA_DIR / f"{METADATA_PREFIX}{tag}.parquet",
                                 lambda f, t=table: pq.write_table(t, f)))
    _remove_stale(root, written)
    dim = int(next(iter(parts.values())).shape[1]) if n else None
    record = {"format": "clip-retrieval", "model": model, "normalized": bool(normalized), "count": n, "dim": dim,
              "modalities": list(parts), "shards": shards}
    atomic_write_text(root / SIDECAR, json.dumps(record, indent=1))
    return record


def _remove_stale(root: Path, written: set[Path]) -> None:
    """Delete the shards an earlier, different run left in ``root`` (they would be read as rows)."""
    layout = [*FEATURE_DIRS.values(), (METADATA_DIR, METADATA_PREFIX)]
    for (folder, prefix), suffix in zip(layout, (".npy", ".npy", ".parquet")):
        pattern = re.compile(re.escape(prefix) + r"\d+" + re.escape(suffix) + "$")
        for p in (root / folder).iterdir() if (root / folder).is_dir() else ():
            if pattern.match(p.name) and p not in written:
                p.unlink()


# ------------------------------------------------------------------ reading
def is_clip_retrieval(path: "str | os.PathLike") -> bool:
    """Whether ``path`` is a folder with clip-retrieval embedding shards."""
    root = Path(os.path.expanduser(os.fspath(path)))
    return any(_shard_files(root / d, p, ".npy") for d, p in FEATURE_DIRS.values())


@dataclass
class ClipRetrievalFolder:
    """A clip-retrieval embedding folder: which modalities it holds, its shards, and the model if recorded."""

    root: Path
    shards: dict[str, dict[int, Path]]  # modality -> {shard number: .npy}
    metadata: dict[int, Path]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return [m for m in (IMAGE, TEXT) if self.shards.get(m)]

    @property
    def model(self) -> str | None:
        return self.record.get("model") or None

    def modality(self, requested: str | None = None) -> str:
        """``requested``, checked; by default images when there are any, else texts."""
        if requested is None:
            return self.modalities[0]
        if requested not in self.modalities:
            raise ClipzooError(f"{str(self.root)!r} holds no {requested} embeddings "
                               f"({FEATURE_DIRS[requested][0]}/ missing); it holds: {', '.join(self.modalities)}")
        return requested

    def check_shards(self, modality: str | None = None) -> None:
        """Every shard's ``.npy`` opened (its header and size checked, no rows read): before an index is written
        from them, so a truncated shard is one line, not a half-built index."""
        for npy in self.shards[self.modality(modality)].values():
            rows_file(npy)

    def shard_pairs(self, modality: str | None = None) -> Iterator[tuple[Path, Path, Any]]:
        """``(npy, parquet, rows memory-mapped)`` of each shard in number order, each pair checked (both readable,
        as many rows in both) — one line naming the file otherwise."""
        for number, npy in sorted(self.shards[self.modality(modality)].items()):
            feats = rows_file(npy)
            meta = self.metadata.get(number)
            if meta is None:
                raise ClipzooError(f"{str(npy)!r} has no {METADATA_DIR}/{METADATA_PREFIX}…{number}.parquet beside "
                                   "it; clip-retrieval writes one per shard")
            rows = parquet_rows(meta)
            if rows != len(feats):
                raise ClipzooError(f"{str(meta)!r} has {rows} rows but {str(npy)!r} has {len(feats)}; they must "
                                   "pair up")
            yield npy, meta, feats

    def iter_shards(self, modality: str | None = None) -> Iterator[tuple[Any, dict[str, list]]]:
        """``(features float32 [n_i, d], metadata columns {name: [n_i values]})`` per shard, in shard order."""
        import numpy as np

        for _, meta, feats in self.shard_pairs(modality):
            yield np.asarray(feats, dtype=np.float32), read_columns(meta)

    def load(self, modality: str | None = None) -> Embeddings:
        """Every row of one modality, with its ``image_path`` (images) or ``caption`` (texts) as the input."""
        import numpy as np

        modality = self.modality(modality)
        key = KEY_COLUMNS[modality]
        blocks, inputs = [], []
        for feats, columns in self.iter_shards(modality):
            blocks.append(feats)
            inputs.extend(str(v) for v in columns.get(key, [""] * len(feats)))
        dim = blocks[0].shape[1] if blocks else 0
        features = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
        return Embeddings(features, inputs, modality, self.model or "", self.record.get("normalized", True))


def open_clip_retrieval(path: "str | os.PathLike") -> ClipRetrievalFolder:
    """Read the layout of ``path``; a ClipzooError naming the folder when it is not clip-retrieval's."""
    root = Path(os.path.expanduser(os.fspath(path)))
    if not root.is_dir():
        raise ClipzooError(f"embedding folder {os.fspath(path)!r} does not exist; pass a folder written by "
                           "`clip-retrieval inference` or `clipzoo embed --format clip-retrieval`")
    shards = {m: _shard_files(root / d, p, ".npy") for m, (d, p) in FEATURE_DIRS.items()}
    if not any(shards.values()):
        raise ClipzooError(f"{os.fspath(path)!r} is not a clip-retrieval embedding folder (no img_emb/img_emb_*.npy "
                           "or text_emb/text_emb_*.npy); pass the --output_folder of `clip-retrieval inference`")
    record: dict[str, Any] = {}
    side = root / SIDECAR
    if side.is_file():
        try:
            record = json.loads(side.read_text("utf-8"))
        except ValueError:
            raise ClipzooError(f"{str(side)!r} is not valid JSON; delete it (the model then comes from "
                               "--model)") from None
    metadata = _shard_files(root / METADATA_DIR, METADATA_PREFIX, ".parquet")
    return ClipRetrievalFolder(root, shards, metadata, record)
