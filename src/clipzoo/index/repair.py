"""``clipzoo index verify`` and ``clipzoo index repair``.

:func:`verify_index` checks every file of an index against what was recorded when it was written: the
published generation's files against the manifest in ``vectors.json`` (size, and SHA-256 with
``full``), its ids against ``ids_sha256``, the embedding shards against the store's ``shards`` table
(size, SHA-256; finite values), and the SQLite file (``PRAGMA quick_check``). Each problem is one line.

:func:`repair_index` (under the writer lock) re-embeds the rows whose vectors are lost (their shard is
missing, corrupt or holds non-finite values) from their image files — rows whose file is gone are
removed — and publishes a fresh generation: everything derived (the vector stores, the snapshot) is
rebuilt from the stored vectors. It also upgrades an index written before manifests.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import ONDISK_STORE
from ..errors import ClipzooError, MissingExtraError
from .build import default_vector_options, folder_vector_options, reembed
from .embedding_store import DB_NAME, EmbeddingStore
from .folder import file_problem
from .generations import POINTER, VECTORS_DIR, IndexCorruptError, publish, read_pointer
from .import_record import unfinished_import
from .lock import IndexLock
from .manifest import bad_shards, check_files, repair_hint
from .stores import DEFAULT_STORE, check_store, get_store
from .videos import split_key

__all__ = ["Verification", "RepairReport", "verify_index", "repair_index", "bad_shards", "check_before_serving"]

VERIFY_MODES = ("sizes", "full")


@dataclass
class Verification:
    """What :func:`verify_index` found: ``problems`` as ``(file, what is wrong)``; ``legacy``: the index has
    no manifest yet (written before them; ``clipzoo index repair`` adds one)."""

    index: str
    generation: int | None = None
    files: int = 0
    legacy: bool = False
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return [f"{path}: {what}" for path, what in self.problems]


def _open_store(index: Path, read_only: bool = False) -> EmbeddingStore:
    if not index.is_dir():
        raise ClipzooError(f"index {str(index)!r} does not exist; pass an index folder built by "
                           "`clipzoo index build`")
    return EmbeddingStore(index, read_only=read_only)


def built_from_vectors(record: dict[str, Any] | None) -> bool:
    """Whether the pointer ``record`` is an index written by ``clipzoo index build-vectors``."""
    return bool(record) and record.get("vector_store") == ONDISK_STORE


def _check_embedding_store(v: Verification, store: EmbeddingStore, full: bool) -> None:
    if full:
        check = store.conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            v.problems.append((str(store.db_path), f"SQLite says: {check}"))
    v.problems += [(str(store.shard_dir / n), what) for n, what in bad_shards(store, full)]
    v.files += 1 + len(store.referenced_shards())


def verify_index(index: "str | os.PathLike", full: bool = True) -> Verification:
    """Check every file of ``index`` (see the module's doc); ``full=False`` checks sizes only."""
    index = Path(os.path.expanduser(os.fspath(index))).absolute()
    if not index.is_dir():
        _open_store(index)  # raises: no such index
    v = Verification(str(index))
    record = read_pointer(index)
    if not built_from_vectors(record):  # an index from `build-vectors` has no embedding store: its files only
        try:
            store = _open_store(index, read_only=True)  # verify writes nothing: a read-only or full disk is fine
        except ClipzooError as exc:
            v.problems.append((str(index / DB_NAME), str(exc)))
            return v
        with store:
            _check_embedding_store(v, store, full)
    pointer = index / VECTORS_DIR / POINTER
    if record is None:
        v.problems.append((str(pointer), "missing or unreadable"))
        return v
    v.generation = record.get("generation")
    if "files" not in record:
        v.legacy = True
        v.problems.append((str(pointer), "no manifest (an index written before manifests); "
                                         f"{repair_hint(index)} to add one"))
        return v
    vdir = index / VECTORS_DIR
    found = check_files(vdir, record["files"], full)
    v.problems += [(str(p), what) for p, what in found]
    v.files += len(record["files"])
    if not any(p.name == (record.get("all") or {}).get("file") for p, _ in found):
        v.problems += _stored_rows(index, record)
    if not any(p.name == record.get("items") for p, _ in found):
        try:
            conn = sqlite3.connect(f"file:{vdir / record['items']}?mode=ro&immutable=1", uri=True)
            try:
                ids = np.fromiter((r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")), np.int64)
            finally:
                conn.close()
            if hashlib.sha256(ids.tobytes()).hexdigest() != record.get("ids_sha256"):
                v.problems.append((str(vdir / record["items"]), "its ids differ from the manifest's ids_sha256"))
        except sqlite3.DatabaseError as exc:
            v.problems.append((str(vdir / record["items"]), f"unreadable ({exc})"))
    return v


def _stored_rows(index: Path, record: dict[str, Any]) -> list[tuple[str, str]]:
    """A store whose rows live outside the index folder (Milvus; the manifest hashes only its pointer file): its
    row count against the manifest's (``verify_rows``; a store that cannot be opened now raises its one line)."""
    try:
        path = index / VECTORS_DIR / record["all"]["file"]
        rows = getattr(get_store(record.get("vector_store", DEFAULT_STORE)), "verify_rows", None)
    except (KeyError, TypeError, MissingExtraError):  # no such record (reported), or no extra: nothing to count
        return []
    problem = rows(path, int(record["count"])) if rows is not None else None
    return [(str(path), problem)] if problem else []


@dataclass
class RepairReport:
    """What :func:`repair_index` did."""

    index: str
    bad_shards: list[tuple[str, str]] = field(default_factory=list)
    reembedded: int = 0
    removed: int = 0
    generation: int = 0
    count: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    def removed_rows(self) -> list[tuple[str, str]]:
        """(relpath, why) of every row the repair removed: its file gone, or no longer decoding."""
        return [(rel, "the file is gone") for rel in self.gone] + list(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {k: [list(x) for x in v] if isinstance(v, list) else v for k, v in asdict(self).items()}


def repair_index(index: "str | os.PathLike", model: Any = None, *, wait: bool = False, progress: bool = False,
                 workers: int | None = 0, vector_options: dict[str, Any] | None = None) -> RepairReport:
    """Repair ``index``: re-embed rows whose vectors are lost (``model``: default the recorded one), remove
    rows whose file is gone, and publish a fresh generation (vector stores rebuilt from the stored vectors,
    a new manifest). ``wait``: wait for another writer instead of failing with its pid."""
    index = Path(os.path.expanduser(os.fspath(index))).absolute()
    report = RepairReport(str(index))
    if built_from_vectors(read_pointer(index)):
        raise ClipzooError(f"index {str(index)!r} was built from vectors and keeps no embeddings to repair "
                           f"from; {repair_hint(index, ONDISK_STORE)}")
    with _open_store(index, read_only=True) as store:  # a missing or unreadable index: one line, before the lock
        unfinished = unfinished_import(store)
    if unfinished is not None:  # its rows are a mix of two imports: publishing them made a partial index "healthy"
        raise ClipzooError(unfinished)
    checked = folder_vector_options(index, vector_options)
    check_store(checked["vector_store"], checked)  # e.g. its Milvus Lite file open in another process
    with IndexLock(index, wait=wait), EmbeddingStore(index, create=True) as store:
        report.bad_shards = bad_shards(store, full=True)
        lost_shards = {name for name, _ in report.bad_shards}
        lost = [item["relpath"] for item in store.iter_items() if item["shard"] in lost_shards]
        root = Path(store.get_meta("root") or ".")
        real_root = os.path.realpath(root)
        # a video segment row's file is its video's (index/videos.py)
        gone = [rel for rel in lost if file_problem(root / split_key(rel)[0], real_root) is not None]
        report.removed, report.gone = store.remove(gone), gone
        again = reembed(store, [rel for rel in lost if rel not in set(gone)], model, progress, workers)
        report.reembedded = again.added + again.updated
        report.removed += again.removed
        report.skipped = [(os.path.relpath(p, root), r) for p, r in again.skipped]
        store.cleanup()
        options = dict(vector_options or {})
        old = read_pointer(index) or {}
        options.setdefault("vector_store", old.get("vector_store", "faiss"))
        record = publish(store, **default_vector_options(store, options))
        report.generation, report.count = int(record["generation"]), int(record["count"])
    return report


def check_before_serving(index: "str | os.PathLike", mode: str = "sizes") -> Verification:
    """What ``clipzoo serve`` checks at start (``mode``: ``sizes`` or ``full``, hashing every file): a
    :class:`~clipzoo.index.generations.IndexCorruptError` naming the first bad file and the repair command.
    An index without a manifest (written before them) passes: it is served as generation 0."""
    if mode not in VERIFY_MODES:
        raise ClipzooError(f"--verify must be one of {', '.join(VERIFY_MODES)}, not {mode!r}")
    result = verify_index(index, full=mode == "full")
    if result.problems and not result.legacy:
        path, what = result.problems[0]
        what = what if what == "missing" else f"corrupt: {what}"
        store = (read_pointer(index) or {}).get("vector_store")
        raise IndexCorruptError(f"index file {path!r} is {what}; {repair_hint(index, store)}")
    return result
