"""``build_vectors_index``: a search index from precomputed vectors inside a memory budget
(``clipzoo index build-vectors VECTORS --max-memory 4GB --out INDEX``).

The index kind and its parameters come from the budget (:func:`~clipzoo.index.stores.faiss_ondisk.plan_index`,
autofaiss's rules); it is trained on a sample, then filled chunk by chunk from the vectors on disk
(:mod:`.vector_source`), so memory holds the codes, one chunk and the sample — never the vectors. The result
is published as an ordinary generation of an index folder (:mod:`.generations`)::

    INDEX/vectors/items-<tag>.sqlite   one row per vector: its name (clip-retrieval's image_path, the sidecar's
                                       input, or FILE#ROW) and caption
    INDEX/vectors/vectors-<tag>.npy    the normalised vectors, float16 (dedup and /embedding read them, mmapped)
    INDEX/vectors/all-<tag>.faiss      the IVF index; its inverted lists are memory-mapped when served
    INDEX/vectors/vectors.json         the pointer and manifest (size + SHA-256 of each file)

so ``clipzoo search`` and ``clipzoo serve`` open it as any other index (read-only: it has no rows to add to).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ClipzooError
from ..progress import progress as progress_bar
from .generations import POINTER, VECTORS_DIR, collect_quietly, read_pointer
from .lock import IndexLock
from .manifest import durable_write, file_entry, fsync_dir
from .model_record import WEIGHTS_META, model_fingerprint, model_identity
from .stores.faiss_kinds import import_faiss
from .stores.faiss_ondisk import RERANK, BudgetPlan, OnDiskFaissStore, add_chunks, plan_index, train_index, tune_nprobe
from .vector_source import VectorSource, open_vectors, parse_memory

__all__ = ["build_vectors_index", "VectorsReport", "TUNE_QUERIES"]

TUNE_QUERIES = 200  # indexed vectors that tune nprobe (leave-one-out recall@10 against exact search)
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (id INTEGER PRIMARY KEY, relpath TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                    sha256 TEXT NOT NULL, caption TEXT, partition TEXT, shard TEXT NOT NULL, row INTEGER NOT NULL);
"""


@dataclass
class VectorsReport:
    """What one ``build_vectors_index`` run made."""

    total: int = 0
    dim: int = 0
    index_kind: str = ""
    key: str = ""
    nprobe: int = 0
    recall_at_10: float | None = None
    latency_p50_ms: float | None = None
    seconds: float = 0.0
    train_seconds: float = 0.0
    add_seconds: float = 0.0
    budget_bytes: int = 0
    index_bytes: int = 0
    plan: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Truth:
    """Exact top-(k+1) inner-product neighbours of a few queries, merged chunk by chunk."""

    def __init__(self, queries: np.ndarray, k: int = 11):
        self.q, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)

    def update(self, x: np.ndarray, ids: np.ndarray) -> None:
        s = self.q @ x.T
        scores = np.concatenate([self.scores, s], axis=1)
        allids = np.concatenate([self.ids, np.broadcast_to(ids, s.shape)], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(scores, top, 1)
        self.ids = np.take_along_axis(allids, top, 1)


def _open_npy(path: Path, n: int, d: int):
    f = open(path, "wb")  # noqa: SIM115 - closed by the caller
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f2")),
                                             "fortran_order": False, "shape": (n, d)})
    return f


def _new_items(path: Path, meta: dict[str, Any]) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(_SCHEMA)
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    return conn


def _sample(src: VectorSource, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pick = np.sort(rng.choice(src.count, rows, replace=False)) if rows < src.count else np.arange(src.count)
    x = src.read_rows(pick)
    x /= np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), 1e-12)[:, None]  # in place: it is half the budget
    return pick, x


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def build_vectors_index(vectors: "str | os.PathLike", out: "str | os.PathLike", max_memory: "str | int" = "4GB", *,
                        model: Any = None, recall_target: float = 0.95, seed: int = 0,
                        progress: bool = False) -> VectorsReport:
    """Index the vectors at ``vectors`` (a ``.npy`` file or a folder, see :mod:`.vector_source`) into the index
    folder ``out`` within ``max_memory`` (``"4GB"``, ``"512MB"`` or bytes). ``model``: the spec that made the
    vectors (default: the one the folder records), kept for text and image queries."""
    t0 = time.perf_counter()
    budget = parse_memory(max_memory)
    src = open_vectors(vectors)
    plan = plan_index(src.count, src.dim, budget)
    spec = model or src.model
    spec, alias = model_identity(spec) if spec else ("", None)
    out_path = Path(os.path.expanduser(os.fspath(out))).absolute()
    check_vectors_out(out_path)
    created = not out_path.exists()
    meta = {"model_spec": spec, "model_alias": alias or "", "root": str(src.root), "source": "vectors", "dim": src.dim}
    weights = model_fingerprint(spec) if spec else None
    if weights is not None:  # a local model: search refuses other weights found at its path later
        meta[WEIGHTS_META] = weights
    try:
        with IndexLock(out_path):
            report = _build(src, plan, out_path, meta, recall_target, seed, progress)
    except BaseException:
        if created:  # no half-built folder left behind, to be taken for an index later
            shutil.rmtree(out_path, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - t0
    return report


def check_vectors_out(out: Path) -> None:
    """Refuse an ``--out`` that is an image index, or a folder holding files but no index: the build removes
    every file in its ``vectors/`` that no generation names (a user's files there were deleted). New, empty and
    a previous build-vectors index are taken."""
    if (out / "index.sqlite").exists():
        raise ClipzooError(f"{str(out)!r} is an index built from images; pass a new --out for build-vectors")
    if out.is_dir() and read_pointer(out) is None and any(_holds_something(p) for p in out.iterdir()):
        raise ClipzooError(f"{str(out)!r} is a non-empty folder that holds no index; pass a new or empty folder "
                           "for --out")


def _holds_something(entry: Path) -> bool:
    """Whether a top-level entry of an --out folder is more than a lock file or an empty ``vectors/``."""
    if entry.name.startswith("."):
        return False
    return not (entry.name == VECTORS_DIR and entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir()))


def _build(src: VectorSource, plan: BudgetPlan, out: Path, meta: dict[str, Any], recall_target: float, seed: int,
           progress: bool) -> VectorsReport:
    faiss = import_faiss()
    rng = np.random.default_rng(seed)
    report = VectorsReport(total=src.count, dim=src.dim, index_kind=plan.kind, key=plan.key, budget_bytes=plan.budget,
                           index_bytes=plan.index_bytes, plan=plan.describe())
    t = time.perf_counter()
    _, sample = _sample(src, plan.train_rows, rng)
    index = train_index(plan, sample)
    del sample
    report.train_seconds = time.perf_counter() - t
    qrows, queries = _sample(src, min(TUNE_QUERIES, src.count), rng)
    truth = _Truth(queries)
    vdir = out / VECTORS_DIR
    vdir.mkdir(parents=True, exist_ok=True)
    generation = int((read_pointer(out) or {}).get("generation", 0)) + 1
    tag = f"g{generation}-{os.getpid()}-{time.time_ns() % 10**12}"
    names = {"items": f"items-{tag}.sqlite", "vectors": f"vectors-{tag}.npy", "all": f"all-{tag}.faiss"}
    written = [vdir / names[k] for k in ("items", "vectors", "all")] + [vdir / f"{tag}.readers"]
    try:
        conn = _new_items(written[0], meta)
        npy = _open_npy(written[1], src.count, src.dim)
        ids_hash = hashlib.sha256()

        def each(start: int, stop: int, x: np.ndarray) -> None:
            ids = np.arange(start + 1, stop + 1, dtype=np.int64)
            npy.write(np.ascontiguousarray(x, dtype="<f2").tobytes())
            truth.update(x, ids)
            ids_hash.update(ids.tobytes())
            paths, captions = src.labels(start, stop)
            files = src.row_files(start, stop)
            conn.executemany("INSERT INTO items VALUES (?, ?, 0, 0, '', ?, NULL, ?, ?)",
                             zip(ids.tolist(), paths, captions, files, range(start, stop)))

        t = time.perf_counter()
        try:
            with progress_bar(src.count, "adding vectors", enabled=progress, unit="vectors") as advance:
                add_chunks(index, plan, src.read, lambda a, b: np.arange(a + 1, b + 1), each, advance)
            conn.commit()
        finally:
            conn.close()
            npy.close()
        report.add_seconds = time.perf_counter() - t
        store = OnDiskFaissStore(index, plan.kind, plan.key, src.count, src.dim, {"rerank": RERANK}, read_only=True)
        store.attach(written[1])
        report.nprobe, report.recall_at_10, report.latency_p50_ms = tune_nprobe(store, queries, truth.ids,
                                                                                qrows + 1, recall_target)
        faiss.write_index(index, str(written[2]))
        params = dict(store.params)
        del index, store
        for p in written[:3]:
            _fsync(p)
        durable_write(written[3], lambda f: None)
        info = {"file": names["all"], "kind": plan.kind, "key": plan.key, "count": src.count, "dim": src.dim,
                "params": params, "recall_at_10": report.recall_at_10,
                "latency_p50_ms": report.latency_p50_ms,
                "build_seconds": round(report.train_seconds + report.add_seconds, 3)}
        record = {"generation": generation, "tag": tag, "count": src.count, "dim": src.dim,
                  "ids_sha256": ids_hash.hexdigest(), "partitions": {}, "items": names["items"],
                  "vectors": names["vectors"], "all": info, "source": "vectors",
                  "vector_store": OnDiskFaissStore.name, "plan": plan.describe(),
                  "files": {p.name: file_entry(p) for p in written}}
        fsync_dir(vdir)
        durable_write(vdir / POINTER, lambda f: f.write(json.dumps(record, indent=1, ensure_ascii=False).encode()))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    collect_quietly(out)
    return report
