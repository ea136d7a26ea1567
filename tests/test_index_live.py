"""Issue 17 §4 (a live index), library side: one writer at a time (a lock naming its holder's pid, or
--wait), generations switched atomically and kept while a reader uses them, and an index written before
generations opening as generation 0 until `clipzoo index repair` upgrades it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from typer.testing import CliRunner  # noqa: E402

from clipzoo.cli import app  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index import build_index, open_index  # noqa: E402
from clipzoo.index.generations import collect, read_pointer  # noqa: E402
from clipzoo.index.lock import IndexBusyError, IndexLock  # noqa: E402

HOLD = """
import sys, time
from clipzoo.index.lock import IndexLock
lock = IndexLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def write_image(path: Path, seed: int, size: int = 24) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def make_photos(root: Path, n: int, start: int = 0) -> Path:
    for i in range(start, start + n):
        write_image(root / ("ab"[i % 2]) / f"{i:04d}.png", seed=i)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    return write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True)


@pytest.fixture(scope="module")
def model(tiny):
    import clipzoo

    return clipzoo.load(str(tiny))


def hold_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}


def hold_lock(index: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(index), str(seconds)], env=hold_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_one_writer_at_a_time_a_second_build_fails_naming_the_holder_pid_or_waits(tmp_path, model, tiny):
    root = make_photos(tmp_path / "photos", 6)
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    holder = hold_lock(out, 30)
    try:
        with pytest.raises(IndexBusyError, match=rf"^index '{out}' is being written by pid {holder.pid} \(lock "
                                                 rf"'{out}/.lock'\); wait for it to finish, or pass --wait$"):
            build_index(root, out, workers=0)
        r = CliRunner().invoke(app, ["index", "build", str(root), "--out", str(out), "--no-progress"])
        assert r.exit_code == 2 and f"is being written by pid {holder.pid}" in r.output
        r = CliRunner().invoke(app, ["index", "repair", str(out), "--no-progress"])
        assert r.exit_code == 2 and f"is being written by pid {holder.pid}" in r.output
        make_photos(root, 2, start=10)
        cli = subprocess.Popen([sys.executable, "-m", "clipzoo", "index", "build", str(root), "--out", str(out),
                                "--wait", "--workers", "0"], env=hold_env(), stderr=subprocess.PIPE, text=True)
        assert cli.stderr.readline().strip() == f"waiting for pid {holder.pid} to finish writing {out} …"
        cli.kill()
        cli.wait()
        done: list = []
        waiter = threading.Thread(target=lambda: done.append(build_index(root, out, workers=0, wait=True)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not done  # waiting for the holder
        holder.kill()  # even a SIGKILLed holder releases the lock
        holder.wait()
        waiter.join(60)
        assert done and done[0].added == 2 and done[0].total == 8
    finally:
        holder.kill()
    after = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert ".lock" not in after and not [p for p in after if p.endswith(".part")]  # no orphaned files
    assert {p for p in after if not p.startswith(("vectors", "shards"))} == \
        {p for p in before if not p.startswith(("vectors", "shards"))}


def test_lock_is_exclusive_between_threads_and_removed_on_release(tmp_path):
    first = IndexLock(tmp_path / "ix").acquire()
    assert (tmp_path / "ix" / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(IndexBusyError, match=f"being written by pid {os.getpid()}"):
        IndexLock(tmp_path / "ix").acquire()
    with pytest.raises(IndexBusyError):
        IndexLock(tmp_path / "ix", wait=True, timeout=0.2).acquire()
    first.release()
    assert not (tmp_path / "ix" / ".lock").exists()
    with IndexLock(tmp_path / "ix"):
        pass
    assert os.listdir(tmp_path / "ix") == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClipzooError, match=r"^index path '.*file' is a file; pass a folder for --out$"):
        IndexLock(tmp_path / "file").acquire()


def test_builds_switch_generations_atomically_and_keep_an_old_one_until_its_last_reader_is_done(tmp_path, model):
    root = make_photos(tmp_path / "photos", 6)
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    reader = open_index(out, model=model)
    old = read_pointer(out)
    old_files = {out / "vectors" / name for name in old["files"]}
    make_photos(root, 4, start=20)
    build_index(root, out, workers=0)
    new = read_pointer(out)
    assert new["generation"] > old["generation"] and new["tag"] != old["tag"] and new["count"] == 10
    assert all(p.exists() for p in old_files)  # a reader holds the old generation: kept
    q = reader.embedding(reader.store.all_vectors()[0][0])
    assert reader.generation == old["generation"] and len(reader.search_embedding(q, k=20)) == 6  # its own view
    fresh = open_index(out, model=model)
    assert fresh.generation == new["generation"] and len(fresh.search_embedding(q, k=20)) == 10
    assert collect(out) == 0  # still read
    reader.close()
    del reader
    assert collect(out) == len(old_files)  # its last reader is done: deleted
    assert not any(p.exists() for p in old_files)
    names = {p.name for p in (out / "vectors").iterdir()}
    assert names == set(new["files"]) | {"vectors.json"}  # only the current generation remains
    assert len(fresh.search_embedding(q, k=20)) == 10
    fresh.close()


def test_an_index_without_generations_opens_as_generation_0_and_repair_upgrades_it(tmp_path, model):
    from clipzoo.index.embedding_store import EmbeddingStore
    from clipzoo.index.vector_files import refresh_vectors

    root = make_photos(tmp_path / "photos", 6)
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    with EmbeddingStore(out) as store:  # rewrite it as the previous release wrote indexes
        refresh_vectors(store, force=True)
    assert "files" not in json.loads((out / "vectors" / "vectors.json").read_text())
    with open_index(out, model=model) as idx:
        assert idx.generation == 0 and idx.count == 6 and idx.tag is None
        hits = [h.id for h in idx.search_text("a photo", k=6)]
    r = CliRunner().invoke(app, ["index", "verify", str(out)])
    assert r.exit_code == 2 and r.stdout.strip() == (
        f"{out}/vectors/vectors.json: no manifest (an index written before manifests); run `clipzoo index "
        f"repair {out}` to add one")
    r = CliRunner().invoke(app, ["index", "repair", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(app, ["index", "verify", str(out)]).exit_code == 0
    with open_index(out, model=model) as idx:
        assert idx.generation > 0 and idx.tag and [h.id for h in idx.search_text("a photo", k=6)] == hits


def test_milvus_store_goes_through_the_same_generations_manifest_and_repair(tmp_path, model):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    root = make_photos(tmp_path / "photos", 6)
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0, vector_options={"vector_store": "milvus"})
    record = read_pointer(out)
    assert record["vector_store"] == "milvus" and record["all"]["file"] in record["files"]
    reader = open_index(out, model=model)
    q = reader.embedding(reader.store.all_vectors()[0][0])
    assert reader.search_embedding(q, k=1)[0].score == pytest.approx(1.0, abs=1e-4)
    make_photos(root, 2, start=30)
    build_index(root, out, workers=0, vector_options={"vector_store": "milvus"})
    assert len(reader.search_embedding(q, k=20)) == 6  # the old generation, still read
    with open_index(out, model=model) as fresh:
        assert fresh.generation == read_pointer(out)["generation"] and len(fresh.search_embedding(q, k=20)) == 8
    reader.close()
    assert CliRunner().invoke(app, ["index", "verify", str(out)]).exit_code == 0
    r = CliRunner().invoke(app, ["index", "repair", str(out), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    assert read_pointer(out)["vector_store"] == "milvus"
    with open_index(out, model=model) as idx:
        assert len(idx.search_embedding(q, k=20)) == 8
