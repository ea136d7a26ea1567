"""Issue 17 §3 (integrity) and the §7 item on failed builds: the manifest, `clipzoo index verify`,
`clipzoo serve` refusing a mismatched index, `clipzoo index repair`, ids_sha256, non-finite vectors,
cosine scores in [-1, 1], a full disk during a build, and a failed build leaving no debris."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from typer.testing import CliRunner  # noqa: E402

from clipzoo.cli import app  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index import build_index, open_index  # noqa: E402
from clipzoo.index.embedding_store import EmbeddingStore, ItemRow  # noqa: E402
from clipzoo.index.manifest import DiskFullError  # noqa: E402


def write_image(path: Path, seed: int, size: int = 24) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def make_photos(root: Path, n: int = 12, start: int = 0) -> Path:
    for i in range(start, start + n):
        write_image(root / ("ab"[i % 2]) / f"{i:04d}.png", seed=i)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import clipzoo
    from clipzoo.testing.tiny import write_open_clip_safetensors

    path = write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True)
    return clipzoo.load(str(path))


@pytest.fixture
def built(tmp_path, model):
    root = make_photos(tmp_path / "photos")
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    return root, out


def record_of(out: Path) -> dict:
    return json.loads((out / "vectors" / "vectors.json").read_text())


def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_manifest_with_size_and_sha256_of_every_index_file(built):
    _, out = built
    record = record_of(out)
    on_disk = {p.name for p in (out / "vectors").iterdir()} - {"vectors.json"}
    assert set(record["files"]) == on_disk  # every file of the generation, nothing else
    assert {n.split("-")[0] for n in on_disk} >= {"all", "part0", "part1", "items", "vectors"}
    for name, entry in record["files"].items():
        data = (out / "vectors" / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with EmbeddingStore(out) as store:  # the embedding shards: size and SHA-256 kept in the store
        shards = store.shard_entries()
        assert set(shards) == set(store.referenced_shards()) and shards
        for name, (size, sha) in shards.items():
            data = (out / "shards" / name).read_bytes()
            assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
        ids = store.all_vectors()[0]
    assert record["ids_sha256"] == hashlib.sha256(ids.tobytes()).hexdigest() and record["count"] == 12


def test_index_verify_exit_0_or_one_line_per_bad_file_exit_2(built):
    _, out = built
    r = CliRunner().invoke(app, ["index", "verify", str(out)])
    assert r.exit_code == 0, r.output
    n_files = 2 + len(record_of(out)["files"])  # index.sqlite, one shard, the generation's files
    assert r.output.strip() == f"index {out}: {n_files} files match (generation 1)"
    faiss_file = next((out / "vectors").glob("all-*.faiss"))
    vectors_file = next((out / "vectors").glob("vectors-*.npy"))
    shard = next((out / "shards").glob("*.npy"))
    flip_byte(faiss_file)                                        # same size: only the hash sees it
    vectors_file.write_bytes(vectors_file.read_bytes()[:-8])     # truncated
    flip_byte(shard)
    r = CliRunner().invoke(app, ["index", "verify", str(out)])
    assert r.exit_code == 2
    assert r.stdout.splitlines() == [
        f"{shard}: its SHA-256 differs from the store's (the file is corrupt)",
        f"{faiss_file}: its SHA-256 differs from the manifest's (the file is corrupt)",
        f"{vectors_file}: {vectors_file.stat().st_size} bytes, the manifest says {vectors_file.stat().st_size + 8}"]
    r = CliRunner().invoke(app, ["index", "verify", str(out.parent / "nope")])
    assert r.exit_code == 2 and r.output.strip() == (f"error: index '{out.parent / 'nope'}' does not exist; pass an "
                                                     "index folder built by `clipzoo index build`")
    r = CliRunner().invoke(app, ["index", "verify", str(out), "--sizes"])  # sizes only: the truncated file
    assert r.exit_code == 2 and r.stdout.splitlines() == [
        f"{vectors_file}: {vectors_file.stat().st_size} bytes, the manifest says {vectors_file.stat().st_size + 8}"]


def test_serve_refuses_a_mismatched_index_naming_the_file_and_repair(built, model):
    _, out = built
    from clipzoo.serve import create_app

    items = next((out / "vectors").glob("items-*.sqlite"))
    items.write_bytes(items.read_bytes() + b"\0" * 10)  # another size: found at start, by the sizes
    runner = CliRunner()
    r = runner.invoke(app, ["serve", str(out), "--port", "5931"])
    assert r.exit_code == 2
    assert r.output.strip() == (f"error: index file '{items}' is corrupt: {items.stat().st_size} bytes, the manifest "
                                f"says {items.stat().st_size - 10}; run `clipzoo index repair {out}`")
    with pytest.raises(ClipzooError, match=r"is corrupt: .*; run `clipzoo index repair"):
        create_app(out, model=model)
    items.write_bytes(items.read_bytes()[:-10])
    flip_byte(next((out / "vectors").glob("part1-*.faiss")))  # same size: `--verify full` hashes
    r = runner.invoke(app, ["serve", str(out), "--port", "5931", "--verify", "full"])
    part1 = next((out / "vectors").glob("part1-*.faiss"))
    assert r.exit_code == 2 and r.output.strip() == (
        f"error: index file '{part1}' is corrupt: its SHA-256 differs from the manifest's (the file is corrupt); "
        f"run `clipzoo index repair {out}`")


def test_repair_rebuilds_derived_files_and_reembeds_lost_rows(built, model):
    root, out = built
    with open_index(out, model=model) as idx:
        before = {i: idx.embedding(i) for i in sorted(idx.store.all_vectors()[0].tolist())}
        query = idx.embedding(next(iter(before)))
        hits_before = [(h.id, round(h.score, 5)) for h in idx.search_embedding(query, k=6)]
    (next((out / "shards").glob("*.npy"))).unlink()          # every stored vector lost
    flip_byte(next((out / "vectors").glob("all-*.faiss")))   # a derived file corrupt
    (root / "a" / "0000.png").unlink()                       # … and one image file gone
    (root / "a" / "0002.png").write_bytes(b"not a png any more")  # … and one that no longer decodes
    r = CliRunner().invoke(app, ["index", "repair", str(out), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (report["reembedded"], report["removed"], report["count"]) == (10, 2, 10)
    said = r.stderr.splitlines()  # which rows went, not only how many
    assert said[0] == "removed a/0000.png: the file is gone" and said[1].startswith("removed a/0002.png: ")
    assert CliRunner().invoke(app, ["index", "verify", str(out)]).exit_code == 0
    with open_index(out, model=model) as idx:
        assert idx.generation == report["generation"]
        after = {i: idx.embedding(i) for i in sorted(idx.store.all_vectors()[0].tolist())}
        gone = set(sorted(before)[:2])
        assert set(after) == set(before) - gone  # same ids; the rows of the deleted and the broken file removed
        for i, vec in after.items():
            np.testing.assert_allclose(vec, before[i], atol=1e-5)
        assert [(h.id, round(h.score, 5)) for h in idx.search_embedding(query, k=4)] == \
            [h for h in hits_before if h[0] not in gone][:4]


def test_a_rebuild_repairs_corrupt_files_too(built, model):
    root, out = built
    with open_index(out, model=model) as idx:
        ids, before = idx.store.all_vectors()
    flip_byte(next((out / "vectors").glob("all-*.faiss")))  # same sizes: only the hashes see them
    flip_byte(next((out / "shards").glob("*.npy")), offset=-64)
    assert CliRunner().invoke(app, ["index", "verify", str(out)]).exit_code == 2
    report = build_index(root, out, workers=0)
    assert (report.repaired, report.updated, report.unchanged, report.total) == (12, 12, 0, 12)
    assert CliRunner().invoke(app, ["index", "verify", str(out)]).exit_code == 0
    with open_index(out, model=model) as idx:
        after_ids, after = idx.store.all_vectors()
        np.testing.assert_array_equal(after_ids, ids)
        np.testing.assert_allclose(after, before, atol=1e-5)
        assert [h.id for h in idx.search_embedding(before[3], k=1)] == [int(ids[3])]


def test_a_missing_vectors_record_names_the_repair_and_a_command_that_pastes(built, model):
    """The hint named only a rebuild, with the model spec unquoted: '--model [clip - clipzoo - tiny-shapes]' broke
    when pasted into a shell; the repair mends it."""
    import shlex

    root, out = built
    (out / "vectors" / "vectors.json").unlink()
    with pytest.raises(ClipzooError) as err:
        open_index(out, model=model)
    hint = str(err.value).split("; ", 1)[1]
    assert hint.startswith(f"run `clipzoo index repair {shlex.quote(str(out))}` (or rebuild it: `clipzoo index build")
    rebuild = hint.split("rebuild it: `", 1)[1].rstrip("`)")
    assert shlex.split(rebuild)[:3] == ["clipzoo", "index", "build"] and "--model" in shlex.split(rebuild)
    assert CliRunner().invoke(app, ["index", "repair", str(out), "--no-progress"]).exit_code == 0
    open_index(out, model=model).close()


def test_ids_sha256_is_checked(built):
    _, out = built
    path = out / "vectors" / "vectors.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "ids_sha256": hashlib.sha256(b"other ids").hexdigest()}))
    items = out / "vectors" / record["items"]
    with pytest.raises(ClipzooError, match=rf"^index file '{items}' does not hold the ids of the manifest "
                                           rf"\(ids_sha256 differs\); run `clipzoo index repair {out}`$"):
        open_index(out)
    r = CliRunner().invoke(app, ["index", "verify", str(out)])
    assert r.exit_code == 2 and r.stdout.strip() == f"{items}: its ids differ from the manifest's ids_sha256"


def test_corruption_is_found_at_start_never_a_500_at_query_time(built, model):
    _, out = built
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    part = next((out / "vectors").glob("part1-*.faiss"))  # a partition's store: opened at start, not lazily
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(ClipzooError, match=rf"index file '{part}' is corrupt: 100 bytes"):
        create_app(out, model=model)
    build_index(built[0], out, workers=0)  # a rebuild repairs derived files that do not match the manifest
    with TestClient(create_app(out, model=model)) as client:
        for partition in ("a", "b", None):
            r = client.post("/search", json={"text": "a photo", "k": 3, "partition": partition})
            assert r.status_code == 200 and len(r.json()["hits"]) == 3


def test_non_finite_vectors_never_enter_an_index(tmp_path, model, monkeypatch):
    store = EmbeddingStore(tmp_path / "s", create=True)
    with pytest.raises(ClipzooError, match="refusing to add non-finite embeddings"):
        store.add([ItemRow("x.png", 1, 1, "0" * 64, None, None)], np.array([[np.nan, 1, 0, 0]], np.float32))
    assert store.count() == 0 and not list((tmp_path / "s" / "shards").iterdir())
    store.close()
    root = make_photos(tmp_path / "photos", n=6)
    real = model.encode_image

    def some_nan(pixels, **kw):
        out = real(pixels, **kw).clone()
        out[::3] = float("nan")  # the model breaks on every third image of a batch
        return out

    monkeypatch.setattr(model, "encode_image", some_nan)
    report = build_index(root, tmp_path / "ix", model=model, workers=0, batch_size=6)
    monkeypatch.undo()
    assert report.total == 4 and len(report.skipped) == 2
    assert all(reason == "the model gave non-finite values (NaN or infinity)" for _, reason in report.skipped)
    with open_index(tmp_path / "ix", model=model) as idx:
        assert np.all(np.isfinite(idx.store.all_vectors()[1]))


def test_cosine_scores_stay_in_minus_one_to_one(built, model):
    _, out = built
    with open_index(out, model=model) as idx:
        ids, x = idx.store.all_vectors()
    faiss_file = next((out / "vectors").glob("all-*.faiss"))
    import faiss

    data = faiss_file.read_bytes()
    outer = faiss.read_index(str(faiss_file))
    codes = faiss.vector_to_array(faiss.downcast_index(outer.index).codes).tobytes()  # the stored vectors
    del outer
    assert data.count(codes) == 1 and len(codes) == x.nbytes
    scaled = np.frombuffer(codes, np.float32) * np.float32(1e30)  # what a bit flip in an exponent does
    faiss_file.write_bytes(data.replace(codes, scaled.astype(np.float32).tobytes()))
    with open_index(out, model=model) as idx:  # same size: opens (sizes checked); the hash would see it
        for q in (x[0], -x[0], x[5]):
            scores = [h.score for h in idx.search_embedding(q, k=12)]
            assert scores and all(-1.0 <= s <= 1.0 for s in scores), scores
    assert CliRunner().invoke(app, ["index", "verify", str(out)]).exit_code == 2


@contextlib.contextmanager
def small_disk(where: Path, size: str):
    """A size-limited tmpfs at ``where`` when this process may mount one (root); else None (the test then
    simulates ENOSPC in the write path; ``CLIPZOO_TEST_NO_TMPFS=1`` forces that)."""
    where.mkdir(parents=True)
    allowed = os.geteuid() == 0 and shutil.which("mount") and not os.environ.get("CLIPZOO_TEST_NO_TMPFS")
    mounted = allowed and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                         capture_output=True).returncode == 0
    try:
        yield where if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_during_a_build_gives_one_line_and_keeps_the_previous_index(tmp_path, model, monkeypatch):
    root = make_photos(tmp_path / "photos", n=8)
    with small_disk(tmp_path / "mnt", "1m") as disk:
        out = (disk or tmp_path / "mnt") / "ix"
        build_index(root, out, model=model, workers=0)
        published = files_under(out / "vectors")
        with open_index(out, model=model) as idx:
            q = idx.embedding(idx.store.all_vectors()[0][0])
            hits = [(h.id, h.score) for h in idx.search_embedding(q, k=8)]
        make_photos(root, n=40, start=100)
        if disk is not None:  # fill the file system, leaving a few KB
            ballast = disk / "ballast"
            with contextlib.suppress(OSError), open(ballast, "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 4096)
            ballast.write_bytes(b"\0" * max(0, ballast.stat().st_size - 12 * 1024))
        else:  # no tmpfs here: the write path reports ENOSPC as the kernel would
            monkeypatch.setattr("clipzoo.index.manifest.os.fsync", _enospc)
        with pytest.raises(DiskFullError) as info:
            build_index(root, out, workers=0, shard_rows=8)
        mount = str(disk) if disk is not None else None
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"no space left on {mount or ''}")
        assert f" writing {out}" in message and message.endswith("; free some space and rerun (the previous "
                                                                  "index is unchanged)")
        monkeypatch.undo()
        assert files_under(out / "vectors") == published  # the published generation untouched, no debris
        assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
        with open_index(out, model=model) as idx:
            assert idx.count == 8 and [(h.id, h.score) for h in idx.search_embedding(q, k=8)] == hits
        if disk is not None:
            ballast.unlink()
        assert build_index(root, out, workers=0).total == 48  # the rerun completes it
        assert CliRunner().invoke(app, ["index", "verify", str(out)]).exit_code == 0


def _enospc(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_index_build_leaves_no_debris_a_rerun_reuses_or_removes_it(tmp_path, model, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipzooError, match="holds no images"):
        build_index(tmp_path / "empty", tmp_path / "ix0", model=model, workers=0)
    assert not (tmp_path / "ix0").exists()  # a first build that failed: not even the folder
    (tmp_path / "ix1").mkdir()
    with pytest.raises(ClipzooError, match="holds no images"):
        build_index(tmp_path / "empty", tmp_path / "ix1", model=model, workers=0)
    assert os.listdir(tmp_path / "ix1") == []  # a folder that was there stays, empty

    root = make_photos(tmp_path / "photos", n=8)
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    before = files_under(out)
    make_photos(root, n=6, start=50)
    from clipzoo.index.stores.faiss import FaissStore

    def broken_save(self, path):
        Path(path).write_bytes(b"half a file")
        raise RuntimeError("the process died while saving")

    monkeypatch.setattr(FaissStore, "save", broken_save)
    with pytest.raises(RuntimeError, match="died while saving"):
        build_index(root, out, workers=0)
    monkeypatch.undo()
    after = files_under(out)
    new_shards = {p for p in after - before if p.startswith("shards/")}
    assert after - before == new_shards and new_shards  # committed rows stay (for the rerun); nothing else
    assert before - after <= {p for p in before if p.startswith("index.sqlite-")}
    assert not (out / ".lock").exists()
    with open_index(out, model=model) as idx:
        assert idx.count == 8
    rerun = build_index(root, out, workers=0)
    assert (rerun.added, rerun.unchanged, rerun.total) == (0, 14, 14)  # the rerun reuses them
    assert {p.split("-")[0] for p in files_under(out / "vectors")} == {"all", "part0", "part1", "items", "vectors",
                                                                        "vectors.json"} | {
        p.split(".")[0].split("-")[0] for p in files_under(out / "vectors") if p.endswith(".readers")}
