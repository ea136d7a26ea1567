"""A live index: the service follows the published generation and takes writes.

- :class:`LiveIndex` watches ``INDEX/vectors/vectors.json`` (the switch of a new generation, see
  :mod:`clipzoo.index.generations`) and swaps ``service.index`` for the new generation, opened beside the
  old one; a request reads the index object it started with, so every response comes from one generation
  (it carries ``generation``). The old generation stays open — and its files on disk, by its readers'
  lock — until its last request is done. ``POST /admin/reload`` forces the check.
- Writes (``POST /items``, ``DELETE /items/{id}``) take the index's writer lock, commit the row and its
  vector (fsynced), publish a new generation, and switch to it before answering: a write is durable
  before its 200 and visible to the next search.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClipzooError, NotFoundError
from ..image_bytes import ImageTooLargeError
from ..index import open_index
from ..index.build import default_vector_options
from ..index.embedding_store import EmbeddingStore, ItemRow
from ..index.folder import INDEX_SUFFIXES, MAX_CAPTION_BYTES, file_problem, inside, partition_of
from ..index.generations import POINTER, VECTORS_DIR, publish, read_pointer
from ..index.lock import IndexLock
from ..index.manifest import durable_write
from .uploads import UPLOAD_DIR, forget_upload, record_upload, upload_suffix, write_caption

__all__ = ["LiveIndex", "UPLOAD_DIR", "upload_suffix"]

log = logging.getLogger("clipzoo.serve")

WRITE_LOCK_TIMEOUT_S = 30.0


class LiveIndex:
    """Follows the published generation of the service's index (a thread polling the switch every
    ``poll_s`` seconds) and applies the service's writes."""

    def __init__(self, service: Any, poll_s: float = 0.25):
        self.service = service
        self.path: Path | None = getattr(service.index, "path", None)
        self.poll_s = poll_s
        self._swap = threading.Lock()
        self._write = threading.Lock()
        self._stop = threading.Event()
        self._last_error: str | None = None
        self._seen: tuple[int, int, int] | None = None  # the pointer's (inode, mtime, size) last switched to
        self._thread = None
        if self.path is not None and hasattr(service.index, "tag"):
            # the thread holds the service weakly: a service nobody uses any more stops its watcher
            self._thread = threading.Thread(target=_watch, args=(weakref.ref(self), self._stop, poll_s),
                                            name="clipzoo-index-watch", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ following the switch
    def poll(self) -> None:
        """One check of the switch (the watcher's step: a ``stat`` of the pointer, read only when it changed);
        a problem is logged once and the old generation kept."""
        try:
            st = os.stat(self.path / VECTORS_DIR / POINTER)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return
        if seen == self._seen:
            return
        try:
            self.reload()
            self._seen, self._last_error = seen, None
        except Exception as exc:  # noqa: BLE001 - keep serving the generation we have
            message = " ".join(str(exc).split())
            if message != self._last_error:  # one line per new problem, not one per poll
                log.warning("not switching to the index's new generation: %s", message)
                self._last_error = message

    def reload(self) -> dict[str, Any]:
        """Switch to the published generation if it is not the one served; ``{"generation", "changed"}``."""
        with self._swap:
            current = self.service.index
            record = read_pointer(self.path) if self.path is not None else None
            if record is None or "files" not in record or record.get("tag") == getattr(current, "tag", None):
                return {"generation": int(getattr(current, "generation", 0)), "changed": False}
            self._switch(open_index(self.path, model=self.service.model))
            return {"generation": int(self.service.index.generation), "changed": True}

    def _switch(self, new: Any) -> None:
        old = self.service.index
        self.service.index = new  # requests already running keep `old`; it closes with its last reference
        log.info("serving generation %s of %s (%d items)", new.generation, Path(new.path).name, new.count)
        del old

    def close(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ writes
    def _require_index(self) -> Path:
        if self.path is None or not hasattr(self.service.index, "tag"):
            raise ClipzooError("this server's index cannot take writes (it was given as an object, not a folder)")
        return self.path

    def resolve_path(self, given: str) -> tuple[str, bytes]:
        """A path under the index's folder (relative to it, or absolute) -> (relpath, its bytes)."""
        root = Path(self.service.index.root)
        real_root = os.path.realpath(root)
        if "\x00" in given:
            raise ClipzooError(f"path {given[:200]!r} holds a NUL character; send the file's path")
        path = Path(given) if os.path.isabs(given) else root / given
        if not inside(os.path.realpath(path), real_root):  # said alike whether such a file exists or not
            raise NotFoundError(f"path {given[:200]!r} is not a file inside the indexed folder")
        problem = file_problem(path, real_root)  # None only for a regular file
        if problem is not None:  # os.path.exists: False for a name too long, where Path.exists raises
            raise NotFoundError(f"path {given[:200]!r} is not a file inside the indexed folder"
                                + (f" ({problem})" if os.path.exists(path) else ""))
        if path.suffix.lower() not in INDEX_SUFFIXES:
            raise ClipzooError(f"path {given!r} is not an image the index takes ({', '.join(INDEX_SUFFIXES)})")
        rel = os.path.relpath(os.path.realpath(path), real_root).replace(os.sep, "/")
        limit = self.service.max_body_bytes
        with open(Path(real_root, rel), "rb") as f:  # never more than an upload may carry (it was read whole)
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageTooLargeError(f"path {given[:200]!r} is over {limit / (1 << 20):g} MB, the largest image the "
                                     "service takes (--max-body-mb)")
        return rel, data

    def add(self, rel: str | None, data: bytes, vector: np.ndarray, caption: str | None) -> dict[str, Any]:
        """Commit one item (an upload when ``rel`` is None: saved under ``uploads/``, with its caption file or
        none, and recorded as the service's: :mod:`.uploads`), publish, switch. Runs in a worker thread; returns
        ``{"id", "relpath", "generation"}``."""
        index = self._require_index()
        if not np.all(np.isfinite(vector)):
            raise ClipzooError("the model gave non-finite values for this image; it was not added")
        if caption is not None and len(caption.encode("utf-8", "surrogatepass")) > MAX_CAPTION_BYTES:
            raise ClipzooError(f"the caption is over {MAX_CAPTION_BYTES // 1024} KB; send a shorter one")
        root = Path(self.service.index.root)
        sha = hashlib.sha256(data).hexdigest()
        with self._write, IndexLock(index, wait=True, timeout=WRITE_LOCK_TIMEOUT_S), \
                EmbeddingStore(index, create=True) as store:
            if rel is None:
                rel = f"{UPLOAD_DIR}/{sha[:24]}{upload_suffix(data)}"
                record_upload(store, rel, sha, caption is not None)  # before its row: a row's file is known
                durable_write(root / rel, lambda f: f.write(data))
                write_caption(root / rel, caption)
            st = (root / rel).stat()
            row = ItemRow(rel, st.st_size, st.st_mtime_ns, sha, caption, partition_of(rel))
            (item_id,) = store.add([row], np.asarray(vector, np.float32)[None])
            self._publish(store)
            return {"id": int(item_id), "relpath": rel, "generation": int(self.service.index.generation)}

    def delete(self, item_id: int) -> dict[str, Any]:
        """Remove one item (and its file when the service wrote it: an upload recorded in :mod:`.uploads`, never a
        file of the user's, whatever its folder), publish, switch."""
        index = self._require_index()
        with self._write, IndexLock(index, wait=True, timeout=WRITE_LOCK_TIMEOUT_S), \
                EmbeddingStore(index, create=True) as store:
            item = store.item(item_id)
            store.remove_ids([item_id])
            self._publish(store)
            forget_upload(store, Path(self.service.index.root), item["relpath"])
            return {"id": int(item_id), "deleted": True, "generation": int(self.service.index.generation)}

    def _publish(self, store: EmbeddingStore) -> None:
        old = read_pointer(store.path) or {}
        publish(store, **default_vector_options(store, {"vector_store": old.get("vector_store", "faiss")}))
        self.reload()  # served before the write answers (the watcher may have switched already)


def _watch(ref: "weakref.ref[LiveIndex]", stop: threading.Event, poll_s: float) -> None:
    while not stop.wait(poll_s):
        live = ref()
        if live is None:
            return
        live.poll()
        del live
