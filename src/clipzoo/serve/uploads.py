"""The files ``POST /items`` wrote, recorded in the index's own metadata: only those are ever deleted.

An upload is saved as ``uploads/<sha256>.<ext>`` inside the indexed folder (with ``.txt`` beside it for its
caption). The folder is the user's, and a folder of theirs may be named ``uploads/`` too: whether a file is
the service's is never decided from its path. Each upload is recorded in the embedding store's ``meta`` table
(key :data:`UPLOADS_META`: ``{relpath: {"sha256", "caption"}}``) before its row is committed, and
``DELETE /items/{id}`` deletes an item's file only when it is recorded there and still holds the bytes the
service wrote (a file the user put at that path since is theirs). Writers hold the index's writer lock.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import BadImageError
from ..index.embedding_store import EmbeddingStore
from ..index.manifest import durable_write

__all__ = ["UPLOAD_DIR", "UPLOADS_META", "forget_upload", "record_upload", "upload_suffix", "write_caption"]

UPLOAD_DIR = "uploads"
"""Where ``POST /items`` puts uploaded files, inside the indexed folder (a partition of its own)."""
UPLOADS_META = "serve_uploads"
"""The meta key of the record of uploaded files (relpath -> what the service wrote)."""
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"BM", ".bmp"))


def upload_suffix(data: bytes) -> str:
    """The file suffix of an uploaded image's format (by its first bytes); BadImageError for others."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    raise BadImageError("the upload is not a PNG, JPEG, WebP, GIF or BMP image; an index takes only those")


def _records(store: EmbeddingStore) -> dict[str, Any]:
    found = store.get_meta(UPLOADS_META)
    return dict(found) if isinstance(found, dict) else {}


def record_upload(store: EmbeddingStore, rel: str, sha256: str, caption: bool) -> None:
    """Record ``rel`` as a file the service wrote (with its caption file when ``caption``)."""
    records = _records(store)
    records[rel] = {"sha256": sha256, "caption": bool(caption)}
    store.set_meta(**{UPLOADS_META: records})


def write_caption(path: Path, caption: str | None) -> None:
    """The caption file beside an uploaded image: written with the caption, removed without one (so the folder
    says what the service says, and the next build does not bring an old caption back)."""
    txt = path.with_suffix(".txt")
    if caption is None:
        txt.unlink(missing_ok=True)
    else:
        durable_write(txt, lambda f: f.write(caption.encode()))


def forget_upload(store: EmbeddingStore, root: Path, rel: str) -> list[str]:
    """Delete the files the service wrote for ``rel`` (the image while it holds the recorded bytes, its caption
    file when the service wrote one) and drop the record; the relpaths deleted. A file that is not recorded — the
    user's own, wherever it lies — is never touched."""
    records = _records(store)
    entry = records.pop(rel, None)
    if not isinstance(entry, dict):
        return []
    store.set_meta(**{UPLOADS_META: records})
    path = root / rel
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # a link, a fifo, a folder: not what the service wrote
            return []
        data = path.read_bytes()
    except OSError:  # gone already: nothing of ours to delete
        return []
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):  # replaced since: the user's now
        return []
    path.unlink(missing_ok=True)
    deleted = [rel]
    if entry.get("caption"):
        path.with_suffix(".txt").unlink(missing_ok=True)
        deleted.append(str(Path(rel).with_suffix(".txt")))
    return deleted
