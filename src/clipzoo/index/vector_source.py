"""The vectors ``clipzoo index build-vectors`` reads, streamed from disk: one ``.npy`` file (``clipzoo embed``'s,
with its JSON sidecar), a clip-retrieval folder (``img_emb/img_emb_{i}.npy`` + ``metadata/metadata_{i}.parquet``,
or ``text_emb/``), or a folder of ``.npy`` files (read in name order). Rows are float16 or float32.

Rows are read with ``pread`` at the offsets ``np.load(mmap_mode="r")`` gives (:func:`npy_layout`), never through
a long-lived memory map: pages of a mapped file count in the process's resident memory, so a map over 10 GB of
vectors read once would make the build look 10 GB large.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embed.clip_retrieval import SIDECAR, is_clip_retrieval
from ..embed.results import sidecar_path
from ..errors import ClipzooError
from .embedding_folder import check_rows, open_embeddings, parquet_rows, read_columns

__all__ = ["VectorSource", "open_vectors", "parse_memory", "read_block", "read_rows", "npy_layout"]

_UNITS = {unit: 1024 ** i for i, unit in enumerate("BKMGTP")}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([BKMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_memory(text: "str | int") -> int:
    """``"4GB"`` -> bytes. Units as autofaiss's ``cast_memory_to_bytes``: K, M, G, T (with or without ``B``/``iB``)
    are powers of 1024; a bare number is bytes. A ClipzooError for anything else or for zero."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _MEMORY.match(str(text))
        if not m:
            raise ClipzooError(f"--max-memory {str(text)!r} is not a memory size; write a number and a unit, "
                               "e.g. 4GB or 512MB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])
    if value <= 0:
        raise ClipzooError(f"--max-memory {str(text)!r} must be more than zero; e.g. 4GB")
    return value


def npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """``(data offset, shape, dtype)`` of a C-ordered ``.npy`` file."""
    arr = np.load(path, mmap_mode="r")
    try:
        return int(arr.offset), tuple(arr.shape), arr.dtype
    finally:
        del arr


def read_block(path: Path, a: int, b: int) -> np.ndarray:
    """Rows [a, b) of the ``.npy`` file ``path`` (one ``pread``), in its dtype."""
    offset, shape, dtype = npy_layout(path)
    row = int(np.prod(shape[1:])) * dtype.itemsize
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), (b - a) * row, offset + a * row)
    return np.frombuffer(data, dtype).reshape((b - a, *shape[1:]))


def prefetch(fd: int, starts: list[int], length: int) -> None:
    """Ask the kernel to start reading ``length`` bytes at each of ``starts`` (``POSIX_FADV_WILLNEED``), so that
    rows not in the page cache are read from disk side by side rather than one ``pread`` after another (what the
    re-scoring of a ``build-vectors`` index waits on when its float16 copy is not cached: benchmarks/index_10m.py's
    serving latency). A no-op where the hint is not available."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None or len(starts) < 2:
        return
    try:
        for start in starts:
            advise(fd, start, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass  # a hint only


def read_rows(path: "Path | int", rows: np.ndarray, layout: tuple[int, tuple[int, ...], np.dtype] | None = None
              ) -> np.ndarray:
    """The given rows of a ``.npy`` file (a path, or an open descriptor with its ``layout``), one ``pread`` each,
    all of them announced to the kernel first (:func:`prefetch`)."""
    offset, shape, dtype = layout or npy_layout(Path(path))
    row = int(np.prod(shape[1:])) * dtype.itemsize
    fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY)
    try:
        starts = [offset + int(r) * row for r in rows]
        prefetch(fd, starts, row)
        data = b"".join(os.pread(fd, row, start) for start in starts)
    finally:
        if not isinstance(path, int):
            os.close(fd)
    return np.frombuffer(data, dtype).reshape((len(rows), *shape[1:]))


@dataclass
class VectorSource:
    """Row-ranged access to vectors spread over ``.npy`` files, with each row's name and caption."""

    root: Path
    files: list[Path]
    counts: list[int]
    dim: int
    dtype: str
    model: str | None = None
    names: dict[int, Path] = field(default_factory=dict)  # file number -> parquet metadata (clip-retrieval)
    inputs: list[str] | None = None  # the sidecar's inputs (one .npy file)
    _cache: tuple[int, list[str], list[Any]] | None = None

    @property
    def count(self) -> int:
        return int(sum(self.counts))

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def _pieces(self, start: int, stop: int):
        starts = self.starts
        f = int(np.searchsorted(starts, start, side="right") - 1)
        while start < stop:
            end = min(stop, int(starts[f + 1]))
            yield f, start - int(starts[f]), end - int(starts[f])
            start = end
            f += 1

    def row_files(self, start: int, stop: int) -> list[str]:
        """The file name of each row of [start, stop)."""
        return [self.files[f].name for f, a, b in self._pieces(start, stop) for _ in range(b - a)]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32 [stop - start, dim]."""
        out = np.empty((stop - start, self.dim), np.float32)
        at = 0
        for f, a, b in self._pieces(start, stop):
            out[at:at + b - a] = read_block(self.files[f], a, b)
            self._check_finite(out[at:at + b - a], f, a)
            at += b - a
        return out

    def _check_finite(self, block: np.ndarray, f: int, first: int) -> None:
        """A one-line error naming the file and row of the first NaN / Inf or all-zero row in ``block`` (rows from
        ``first``): a zero row has no direction, so no query finds it (:func:`~.embedding_folder.check_rows`)."""
        check_rows(block, self.files[f], first)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows of ``rows`` (sorted global row numbers) as float32, each read by itself (``pread``)."""
        out = np.empty((len(rows), self.dim), np.float32)
        starts = self.starts
        which = np.searchsorted(starts, rows, side="right") - 1
        for f in np.unique(which):
            sel = np.flatnonzero(which == f)
            for a in range(0, len(sel), 1024):  # a small buffer at a time
                part = rows[sel[a:a + 1024]] - starts[f]
                block = read_rows(self.files[f], part)
                bad = np.flatnonzero(~np.isfinite(block).all(axis=1) | ~np.any(block, axis=1))
                if len(bad):
                    self._check_finite(block[bad[:1]], f, int(part[bad[0]]))
                out[sel[a:a + 1024]] = block
        return out

    def labels(self, start: int, stop: int) -> tuple[list[str], list[Any]]:
        """``(relpaths, captions)`` of rows [start, stop): the image path (or caption) clip-retrieval's metadata
        gives, the sidecar's input, else ``FILE#ROW``."""
        paths: list[str] = []
        captions: list[Any] = []
        for f, a, b in self._pieces(start, stop):
            names, caps = self._file_labels(f)
            paths.extend(names[a:b])
            captions.extend(caps[a:b])
        return paths, captions

    def _file_labels(self, f: int) -> tuple[list[str], list[Any]]:
        if self._cache is not None and self._cache[0] == f:
            return self._cache[1], self._cache[2]
        n = self.counts[f]
        own = [f"{self.files[f].name}#{i}" for i in range(n)]
        captions: list[Any] = [None] * n
        if self.inputs is not None and len(self.inputs) == n:
            own = [str(s) for s in self.inputs]
        elif f in self.names:
            table = read_columns(self.names[f], ("image_path", "caption"))
            if "image_path" in table and len(table["image_path"]) == n:
                own = [str(s) for s in table["image_path"]]
            if "caption" in table and len(table["caption"]) == n:
                captions = table["caption"]
        self._cache = (f, own, captions)
        return own, captions


def _sidecar(side: Path) -> dict[str, Any]:
    """A JSON sidecar's record; {} when there is none, or it is not JSON of an object (a list was an
    AttributeError)."""
    try:
        meta = json.loads(side.read_text("utf-8")) if side.is_file() else {}
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_npy(path: Path) -> tuple[int, int, str]:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ClipzooError(f"vectors file {str(path)!r} is not a readable .npy array ({type(exc).__name__}); "
                           "pass .npy files of float16 or float32 rows") from None
    shape, dtype = arr.shape, arr.dtype
    del arr
    if len(shape) != 2 or dtype not in (np.float16, np.float32):
        raise ClipzooError(f"vectors file {str(path)!r} holds a {dtype} array of shape {tuple(shape)}; pass rows of "
                           "float16 or float32 embeddings [n, dim]")
    return int(shape[0]), int(shape[1]), str(dtype)


def open_vectors(path: "str | os.PathLike") -> VectorSource:
    """The vectors at ``path`` (see the module doc); a ClipzooError naming it when none are there or their
    widths differ."""
    root = Path(os.path.expanduser(os.fspath(path)))
    model, names, inputs = None, {}, None
    if root.is_file():
        files = [root]
        meta = _sidecar(sidecar_path(root))
        model, inputs = meta.get("model") or None, meta.get("inputs")
    elif is_clip_retrieval(root):
        folder = open_embeddings(root)  # its sidecar's shape and its shard names checked
        modality = folder.modality()
        numbers = sorted(folder.shards[modality])
        files = [folder.shards[modality][i] for i in numbers]
        names = {j: folder.metadata[i] for j, i in enumerate(numbers) if i in folder.metadata}
        model = folder.model
    elif root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix == ".npy")
        model = _sidecar(root / SIDECAR).get("model") or None
    else:
        raise ClipzooError(f"vectors {os.fspath(path)!r} do not exist; pass a .npy file or a folder of them "
                           "(clip-retrieval's img_emb/ layout included)")
    if not files:
        raise ClipzooError(f"{os.fspath(path)!r} holds no .npy files; pass a .npy file or a folder of them")
    shapes = [_check_npy(p) for p in files]
    dims = {s[1] for s in shapes}
    if len(dims) > 1:
        raise ClipzooError(f"the .npy files of {os.fspath(path)!r} have different widths ({sorted(dims)}); "
                           "pass embeddings of one model")
    for f, meta_file in names.items():  # a truncated parquet: one line now, not a traceback halfway through
        rows = parquet_rows(meta_file)
        if rows != shapes[f][0]:
            raise ClipzooError(f"{str(meta_file)!r} has {rows} rows but {str(files[f])!r} has {shapes[f][0]}; they "
                               "must pair up")
    return VectorSource(root if root.is_dir() else root.parent, files, [s[0] for s in shapes], dims.pop(),
                        shapes[0][2], model, names, inputs)
