"""What an index build reads from the folder of images: the file list, captions, partitions, hashes, pixels.

- :func:`walk_images`: the image files under the folder (jpg, jpeg, png, webp, gif, bmp; hidden entries and
  the index folder itself skipped), as sorted relative POSIX paths;
- a file's partition is its first-level subfolder (:func:`partition_of`), its caption the text of a
  same-name ``.txt`` beside it (:func:`caption_of`);
- :class:`IndexFiles`: the DataLoader dataset that reads each file once, hashes and decodes the same bytes
  (in worker processes), and reports a file it cannot use instead of failing (:func:`collate_index_batch`).
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from ..constants import IMAGE_SUFFIXES
from ..embed import ImageFiles
from ..inputs import load_rgb

__all__ = ["INDEX_SUFFIXES", "walk_images", "partition_of", "caption_of", "sha256_file", "IndexFiles",
           "collate_index_batch"]

INDEX_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in (".tif", ".tiff"))
"""The image files an index build takes: :data:`clipzoo.constants.IMAGE_SUFFIXES` but TIFF."""


def walk_images(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[str]:
    """Relative POSIX paths of the image files under ``root`` (sorted; hidden entries and ``exclude`` skipped)."""
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (skip is None or (here / d).resolve() != skip))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in INDEX_SUFFIXES:
                out.append((here / name).relative_to(root).as_posix())
    out.sort()
    return out


def partition_of(relpath: str) -> str | None:
    """The first-level subfolder of ``relpath`` (None for a file directly in the folder)."""
    parts = relpath.split("/")
    return parts[0] if len(parts) > 1 else None


def caption_of(path: Path) -> str | None:
    """The stripped text of the ``.txt`` beside ``path`` (None when absent, unreadable or blank)."""
    txt = path.with_suffix(".txt")
    try:
        return txt.read_text(encoding="utf-8", errors="replace").strip() or None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None


def sha256_file(path: Path) -> str:
    """The SHA-256 (hex) of the file at ``path``, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class IndexFiles(ImageFiles):
    """Map-style dataset: file -> ``(index, pixels|None, error|None, sha256, size, mtime_ns)``.

    The bytes are read once: hashed and decoded from the same buffer, so the stored hash always
    describes the pixels that were embedded.
    """

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return index, None, f"cannot be read ({exc.strerror or exc})", "", 0, 0
        sha = hashlib.sha256(data).hexdigest()
        meta = (sha, st.st_size, st.st_mtime_ns)
        if not data:
            return (index, None, "empty file (0 bytes)", *meta)
        try:
            rgb = load_rgb(io.BytesIO(data), self.draft_size)
        except Exception as exc:  # noqa: BLE001 - any decoder failure (incl. decompression bombs) skips the file
            return (index, None, _decode_reason(exc), *meta)
        try:
            return (index, self.transform(rgb), None, *meta)
        except Exception as exc:  # noqa: BLE001
            return (index, None, f"cannot be preprocessed ({type(exc).__name__}: {exc})", *meta)


def _decode_reason(exc: Exception) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image (corrupt, or not jpg/png/webp/gif/bmp data)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused as a decompression bomb ({exc})"
    return f"cannot be decoded ({type(exc).__name__}: {exc})"


def collate_index_batch(items: list):
    """:class:`IndexFiles` items -> ``([(index, sha256, size, mtime_ns)], stacked pixels or None,
    [(index, reason)])``: the decoded files, their pixels, and the files skipped."""
    import torch

    good = [it for it in items if it[2] is None]
    bad = [it for it in items if it[2] is not None]
    pixels = torch.stack([it[1] for it in good]) if good else None
    return ([(it[0], it[3], it[4], it[5]) for it in good], pixels, [(it[0], it[2]) for it in bad])
