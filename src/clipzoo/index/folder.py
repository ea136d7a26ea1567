"""What an index build reads from the folder of images: the file list, captions, partitions, hashes, pixels.

- :func:`walk_images`: the image files under the folder (jpg, jpeg, png, webp, gif, bmp; hidden entries and
  the index folder itself skipped), as sorted relative POSIX paths;
- a file's partition is its first-level subfolder (:func:`partition_of`), its caption the text of a
  same-name ``.txt`` beside it (:func:`caption_of`);
- files stay inside the folder: a link that leaves it, a non-regular file, a caption over 64 KB or not
  UTF-8 is not read, and is listed in the build report's ``skipped`` (:func:`file_problem`);
- :class:`IndexFiles`: the DataLoader dataset that reads each file once, hashes and decodes the same bytes
  (in worker processes), and reports a file it cannot use instead of failing (:func:`collate_index_batch`).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..constants import IMAGE_SUFFIXES
from ..embed import ImageFiles
from ..embed.decode import decode_bytes
from ..embed.handover import stack_shared
from ..files import file_problem, inside, walk_folder

__all__ = ["INDEX_SUFFIXES", "MAX_CAPTION_BYTES", "walk_images", "walk_files", "file_problem", "caption_problem",
           "inside", "partition_of", "caption_of", "sha256_file", "IndexFiles",
           "collate_index_batch"]

INDEX_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in (".tif", ".tiff"))
"""The image files an index build takes: :data:`clipzoo.constants.IMAGE_SUFFIXES` but TIFF."""


MAX_CAPTION_BYTES = 64 * 1024
"""Largest caption file (``.txt`` beside an image) an index takes; larger ones are skipped."""

Skipped = list  # of (absolute path, reason): the build report's ``skipped``


def walk_files(root: str | os.PathLike, suffixes: "frozenset[str] | set[str] | tuple[str, ...]",
               exclude: str | os.PathLike | None = None, skipped: "Skipped | None" = None) -> Iterator[Path]:
    """The files under ``root`` whose suffix is in ``suffixes`` (hidden entries and ``exclude`` skipped), in
    walk order (:func:`clipzoo.files.walk_folder`). Only files that stay inside ``root`` are yielded: a link
    whose target leaves the folder, anything that is not a regular file, and a name that is not UTF-8 are left
    out and, with ``skipped`` given, listed there as ``(path, reason)``."""
    for path, problem in walk_folder(root, suffixes, exclude):
        problem = problem or _name_problem(path)
        if problem is None:
            yield Path(path)
        elif skipped is not None:
            skipped.append((printable_path(path), problem))


NOT_UTF8 = "its name is not UTF-8, which the index stores names in; rename it"


def _name_problem(path: Path) -> "str | None":
    """Why the index cannot keep ``path``'s name: one that is not UTF-8 (a byte such as 0xff, which Python holds as
    a lone surrogate) failed the store's INSERT, and with it every build of the folder."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return NOT_UTF8
    return None


def printable_path(path: "str | os.PathLike") -> str:
    """``path`` as UTF-8 text: bytes that are not UTF-8 shown as ``\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def walk_images(root: str | os.PathLike, exclude: str | os.PathLike | None = None,
                skipped: "Skipped | None" = None) -> list[str]:
    """Relative POSIX paths of the image files under ``root`` (sorted; :func:`walk_files`'s rules), captions
    that cannot be used (:func:`caption_problem`) listed in ``skipped`` too."""
    real_root = os.path.realpath(root)
    out: list[str] = []
    for path in walk_files(root, INDEX_SUFFIXES, exclude, skipped):
        out.append(path.relative_to(root).as_posix())
        problem = caption_problem(path, real_root)
        if problem is not None and skipped is not None:
            skipped.append((str(path.parent / path.name.rsplit(".", 1)[0]) + ".txt", problem))
    out.sort()
    return out


def caption_problem(image: Path, real_root: str | None = None) -> str | None:
    """Why the caption beside ``image`` cannot be used (None when it can, or when there is none)."""
    return _read_caption(image, real_root)[1]


def partition_of(relpath: str) -> str | None:
    """The first-level subfolder of ``relpath`` (None for a file directly in the folder)."""
    parts = relpath.split("/")
    return parts[0] if len(parts) > 1 else None


def caption_of(path: Path, root: "str | os.PathLike | None" = None) -> str | None:
    """The stripped text of the ``.txt`` beside ``path`` (None when absent, blank, or not usable: with
    ``root`` given, a caption that leaves it or is not a regular file; over :data:`MAX_CAPTION_BYTES`;
    not UTF-8)."""
    return _read_caption(Path(path), os.path.realpath(root) if root is not None else None)[0]


def _read_caption(image: Path, real_root: str | None) -> tuple[str | None, str | None]:
    """``(caption or None, why it was skipped or None)`` for the ``.txt`` beside ``image``."""
    txt = image.with_suffix(".txt")
    if not os.path.lexists(txt):
        return None, None
    if real_root is not None:
        problem = file_problem(txt, real_root)
        if problem is not None:
            return None, f"caption {problem}"
    try:
        with open(txt, "rb") as f:
            data = f.read(MAX_CAPTION_BYTES + 1)
    except (IsADirectoryError, PermissionError, FileNotFoundError, OSError):
        return None, None
    if len(data) > MAX_CAPTION_BYTES:
        return None, f"caption over {MAX_CAPTION_BYTES // 1024} KB; not read"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"caption not UTF-8 (byte {exc.start}); not read"
    return text.strip() or None, None


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
            rgb = decode_bytes(data, self.draft_size)  # embed.decode: as `clipzoo embed` and the service decode
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
    good = [it for it in items if it[2] is None]
    bad = [it for it in items if it[2] is not None]
    pixels = stack_shared([it[1] for it in good]) if good else None  # in shared memory, from the worker's thread
    return ([(it[0], it[3], it[4], it[5]) for it in good], pixels, [(it[0], it[2]) for it in bad])
