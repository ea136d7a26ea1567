"""The index against a second round of probing: a same-size corrupt header is one line (and the readers' lock is
closed once), index files follow the umask and a read-only index verifies, --from-embeddings reruns keep no stale
shards and a failed import publishes nothing, other weights at the recorded model path are refused at search, a
clip-retrieval round trip names files inside the indexed folder, truncated parquet / odd sidecars / ambiguous shard
names / zero rows are one line, a full disk at the lock leaves nothing, and a folder in vectors/ breaks nothing."""
from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pq = pytest.importorskip("pyarrow.parquet")

from typer.testing import CliRunner  # noqa: E402

from clipzoo.cli import app  # noqa: E402
from clipzoo.embed.clip_retrieval import write_clip_retrieval  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index import build_index, open_index  # noqa: E402
from clipzoo.index import generations as gens  # noqa: E402
from clipzoo.index.build_vectors import build_vectors_index  # noqa: E402
from clipzoo.index.embedding_store import EmbeddingStore  # noqa: E402
from clipzoo.index.from_embeddings import build_index_from_embeddings  # noqa: E402
from clipzoo.index.generations import IndexCorruptError, read_pointer  # noqa: E402
from clipzoo.index.repair import repair_index, verify_index  # noqa: E402
from test_index_integrity import make_photos, model, small_disk  # noqa: E402, F401 (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:.*rows name an image file that is not there")  # made-up paths
SPEC = "[clip - clipzoo - tiny-shapes]"  # recorded only: never loaded by an import


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def built(tmp_path, model):  # noqa: F811
    root = make_photos(tmp_path / "photos")
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    return root, out


def unit(n, d=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def emb_folder(path: Path, shards, model: str = SPEC) -> Path:
    """A clip-retrieval folder as `clip-retrieval inference` writes it: float16 shards, a parquet per shard."""
    import pyarrow as pa

    (path / "img_emb").mkdir(parents=True)
    (path / "metadata").mkdir()
    for i, (x, paths) in enumerate(shards):
        np.save(path / "img_emb" / f"img_emb_{i}.npy", x.astype(np.float16))
        pq.write_table(pa.table({"image_path": paths, "caption": [f"cap {p}" for p in paths]}),
                       path / "metadata" / f"metadata_{i}.parquet")
    if model:
        (path / "clipzoo.json").write_text(json.dumps({"model": model}))
    return path


def names(n, folder="s"):
    return [f"{folder}/img{j}.jpg" for j in range(n)]


# ------------------------------------------------------------------ 1. corrupt headers
@pytest.mark.parametrize("which, offset", [("vectors-*.npy", 1), ("items-*.sqlite", 0)])
def test_a_same_size_corrupt_header_is_one_line_and_the_lock_is_closed_once(built, monkeypatch, which, offset):
    """np.load's "pickled data" and SQLite's "file is not a database" were tracebacks from search and serve, and the
    readers' lock fd was closed twice (the second time, maybe, another thread's new file)."""
    _, out = built
    path = next((out / "vectors").glob(which))
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))
    closed: list[int] = []
    real_close = os.close

    def close(fd):
        closed.append(fd)
        real_close(fd)

    gc.collect()  # earlier tests' views: closed now, not counted below
    monkeypatch.setattr(gens.os, "close", close)
    with pytest.raises(IndexCorruptError) as info:
        open_index(out)
    gc.collect()
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(f"index file '{path}' is corrupt (") and "\n" not in message
    assert message.endswith(f"; run `clipzoo index repair {out}`")
    assert closed and len(closed) == len(set(closed))  # no fd twice (other tests' views may be collected here)
    r = run("search", out, "red", "-k", "1")
    assert r.exit_code == 2 and r.output.strip() == f"error: {message}"


# ------------------------------------------------------------------ 2. permissions, read-only
def test_index_files_follow_the_umask(tmp_path, model):  # noqa: F811
    """mkstemp's 0600 made vectors.json, the vectors, the readers' lock and every shard unreadable to a service
    running as another user."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "ix"
        build_index(make_photos(tmp_path / "photos", n=4), out, model=model, workers=0)
    finally:
        os.umask(old)
    files = [*(out / "vectors").iterdir(), *(out / "shards").iterdir()]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes and set(modes.values()) == {0o644}, modes


def test_an_unreadable_pointer_says_permission_denied(built, monkeypatch):
    _, out = built
    real = Path.read_text

    def read_text(self, *a, **k):
        if self.name == "vectors.json":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(ClipzooError, match=r"^cannot read index file '.*vectors\.json': permission denied; ask its "
                                           r"owner to make the index readable \(chmod -R a\+rX\), or rebuild it$"):
        open_index(out)  # was read as "missing": the live rows were opened read-write and "cannot write" said


def test_verify_passes_on_a_read_only_index(built, tmp_path):
    """verify opened index.sqlite read-write: "cannot write … (unable to open database file)" for an intact index."""
    _, out = built
    if os.geteuid() == 0:  # root writes through any mode: a read-only file system
        with small_disk(tmp_path / "ro", "4m") as disk:
            if disk is None:
                pytest.skip("cannot mount a tmpfs here")
            shutil.copytree(out, disk / "ix")
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            result = verify_index(disk / "ix")
            assert result.ok and result.files == 8, result.problems
            assert len(open_index(disk / "ix").search_embedding(np.ones(32), k=3)) == 3
        return
    for p in [out, *out.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        result = verify_index(out)
        assert result.ok, result.problems
    finally:
        for p in [out, *out.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


# ------------------------------------------------------------------ 3, 4. --from-embeddings reruns and failures
def test_a_rerun_import_keeps_no_stale_shards_and_needs_no_model(tmp_path):
    emb = emb_folder(tmp_path / "emb", [(unit(30, seed=1), names(30, "a")), (unit(30, seed=2), names(30, "b"))],
                     model="")
    out = tmp_path / "ix"
    first = build_index_from_embeddings(emb, out, model=SPEC)
    assert (first.added, first.total) == (60, 60)
    shards = sorted(p.name for p in (out / "shards").iterdir())
    again = build_index_from_embeddings(emb, out)  # the index records the model: no --model needed
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, 60, 0)
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards  # each rerun leaked the whole index
    x = unit(30, seed=3)
    np.save(emb / "img_emb" / "img_emb_1.npy", x.astype(np.float16))  # every vector of shard 1 changed
    third = build_index_from_embeddings(emb, out)
    assert (third.updated, third.unchanged) == (30, 30)
    with EmbeddingStore(out) as store:
        assert {p.name for p in (out / "shards").iterdir()} == set(store.referenced_shards())
    assert verify_index(out).ok


@pytest.mark.parametrize("bad", ["dims", "nan", "dup", "parquet"])
def test_a_failed_import_writes_nothing(tmp_path, bad):
    """Shard 0 was indexed before shard 1 was refused: a half index that `index repair` then published as healthy."""
    second = {"dims": (unit(20, d=16), names(20, "b")), "nan": (unit(20), names(20, "b")),
              "dup": (unit(20), names(20, "a")), "parquet": (unit(20), names(20, "b"))}[bad]
    if bad == "nan":
        second[0][5, 3] = np.nan
    emb = emb_folder(tmp_path / "emb", [(unit(20, seed=1), names(20, "a")), second])
    if bad == "parquet":
        meta = emb / "metadata" / "metadata_1.parquet"
        meta.write_bytes(meta.read_bytes()[:100])
    out = tmp_path / "ix"
    with pytest.raises(ClipzooError) as info:
        build_index_from_embeddings(emb, out)
    assert "\n" not in str(info.value)
    assert not out.exists()  # a first import: nothing at all
    good = emb_folder(tmp_path / "good", [(unit(20, seed=1), names(20, "a"))])
    build_index_from_embeddings(good, out)
    published = read_pointer(out)
    shutil.rmtree(good)
    shutil.copytree(emb, good)  # the same folder, now bad
    with pytest.raises(ClipzooError):
        build_index_from_embeddings(good, out)
    assert read_pointer(out) == published and verify_index(out).ok  # the previous index, untouched
    with EmbeddingStore(out) as store:
        assert store.count() == 20 and not store.get_meta("importing")


def test_an_import_that_did_not_finish_is_not_published_by_repair(tmp_path):
    emb = emb_folder(tmp_path / "emb", [(unit(20), names(20, "a"))])
    out = tmp_path / "ix"
    build_index_from_embeddings(emb, out)
    with EmbeddingStore(out) as store:  # as an import killed midway leaves it
        store.set_meta(importing=True)
    (out / "vectors" / "vectors.json").unlink()
    line = (f"the import into index '{out}' did not finish (it was killed or failed), so its rows are a mix of two "
            f"imports; rerun it: `clipzoo index build --from-embeddings {emb} --out {out}`")
    with pytest.raises(ClipzooError) as info:
        repair_index(out)
    assert str(info.value) == line
    r = run("search", out, "x")
    assert r.exit_code == 2 and r.output.strip().endswith(line) and "clipzoo index build " + str(emb.parent) not in \
        r.output
    assert build_index_from_embeddings(emb, out).total == 20 and verify_index(out).ok  # the rerun completes it


# ------------------------------------------------------------------ 5. other weights at the recorded path
def test_search_refuses_other_weights_at_the_recorded_model_path(tmp_path):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    (tmp_path / "m").mkdir()
    weights = write_open_clip_safetensors(tmp_path / "m" / "model.safetensors", embed_config=True)
    out = tmp_path / "ix"
    build_index(make_photos(tmp_path / "photos", n=4), out, model=str(weights), workers=0)
    assert run("search", out, "red", "-k", "1", "--device", "cpu").exit_code == 0
    write_open_clip_safetensors(tmp_path / "other.safetensors", embed_config=True, seed=1)
    shutil.copyfile(tmp_path / "other.safetensors", weights)
    start = f"the model at '{weights}' is not the one index '{out}' was built with: its files changed since"
    r = run("search", out, "red", "-k", "1", "--device", "cpu")
    assert r.exit_code == 2 and r.output.startswith(f"error: {start}") and len(r.output.strip().splitlines()) == 1
    with open_index(out) as idx, pytest.raises(ClipzooError, match="^" + start.replace("(", r"\(")):
        idx.model  # noqa: B018 - what create_app loads
    from clipzoo.serve import create_app

    with pytest.raises(ClipzooError, match="^" + start):
        create_app(out)


# ------------------------------------------------------------------ 6. clip-retrieval round trip
@pytest.mark.parametrize("absolute", [False, True])
def test_a_round_trip_names_files_inside_the_indexed_folder(tmp_path, model, monkeypatch, absolute):  # noqa: F811
    """image_path relative to the working folder was resolved against the embedding folder (every path missing), and
    absolute ones were returned as `relpath` by /search and /items."""
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos", n=6)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "photos").rglob("*.png"))
    given = [str(tmp_path / f) if absolute else f for f in files]  # what `clipzoo embed --images …` writes
    x = model.encode_image([str(tmp_path / f) for f in files]).float().numpy()
    write_clip_retrieval(tmp_path / "emb", image_features=x, image_paths=given, model=SPEC)
    build_index_from_embeddings(tmp_path / "emb", tmp_path / "ix")
    with open_index(tmp_path / "ix") as idx:
        hit = idx.search_embedding(x[files.index("photos/b/0001.png")], k=1)[0]
        assert (hit.relpath, hit.partition, hit.path) == ("b/0001.png", "b", str(tmp_path / "photos/b/0001.png"))
        assert sorted(idx.partitions) == ["a", "b"]
        item = idx.item(hit.id)
        assert item["size"] == (tmp_path / "photos/b/0001.png").stat().st_size
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(tmp_path / "ix", model=model)) as client:
        hits = client.post("/search", json={"embedding": x[0].tolist(), "k": 6}).json()["hits"]
        assert sorted(h["relpath"] for h in hits) == [f.removeprefix("photos/") for f in files]
        assert client.get(f"/{hits[0]['thumb']}").status_code == 200  # was 404: "its indexed file is gone"


# ------------------------------------------------------------------ 7, 10. odd folders and rows
def test_odd_embedding_folders_are_one_line_for_both_importers(tmp_path):
    cases = {}
    cases["parquet"] = emb_folder(tmp_path / "parquet", [(unit(10), names(10))])
    meta = cases["parquet"] / "metadata" / "metadata_0.parquet"
    meta.write_bytes(meta.read_bytes()[:100])
    cases["sidecar"] = emb_folder(tmp_path / "sidecar", [(unit(10), names(10))])
    (cases["sidecar"] / "clipzoo.json").write_text("[1, 2]")
    cases["padding"] = emb_folder(tmp_path / "padding", [(unit(10), names(10))])
    np.save(cases["padding"] / "img_emb" / "img_emb_00.npy", unit(10).astype(np.float16))
    zero = unit(10)
    zero[4] = 0
    cases["zero"] = emb_folder(tmp_path / "zero", [(zero, names(10))])
    expected = {
        "parquet": f"^{str(meta)!r} is not a readable parquet file \\(Parquet magic bytes not found in footer\\); is "
                   "it truncated\\? Write it again \\(or remove it with its \\.npy shard\\)$",
        "sidecar": f"^{str(cases['sidecar'] / 'clipzoo.json')!r} holds a JSON list, not the object clipzoo writes; ",
        "padding": f"^{str(cases['padding'] / 'img_emb' / 'img_emb_0.npy')!r} and "
                   f"{str(cases['padding'] / 'img_emb' / 'img_emb_00.npy')!r} are both shard 0 ",
        "zero": f"^vectors file {str(cases['zero'] / 'img_emb' / 'img_emb_0.npy')!r} holds an all-zero row \\(row 4\\)"}
    for name, folder in cases.items():
        for i, importer in enumerate((build_index_from_embeddings, build_vectors_index)):
            out = tmp_path / f"{name}-{i}"
            with pytest.raises(ClipzooError, match=expected[name]):
                importer(folder, out, model=SPEC) if i == 0 else importer(folder, out, "64MB", model=SPEC)
            assert not out.exists()


def test_imported_rows_are_normalised(tmp_path):
    x = unit(10) * 7.0
    emb = emb_folder(tmp_path / "emb", [(x, names(10))])
    with pytest.warns(UserWarning, match=r"^10 of the 10 rows name an image file that is not there \(such as "
                                         r"'s/img0\.jpg'\): a relative image_path is read against the working folder"):
        build_index_from_embeddings(emb, tmp_path / "ix")
    with open_index(tmp_path / "ix") as idx:
        norms = [float(np.linalg.norm(idx.embedding(i))) for i in range(1, 11)]
        assert norms == pytest.approx([1.0] * 10, abs=1e-6)  # were 7.0: "the stored normalised vector"
        assert idx.search_embedding(x[3], k=1)[0].score == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------ 8, 9. full disk at the lock, folders in vectors/
def test_a_full_disk_at_the_lock_leaves_no_lock_and_no_folder(tmp_path, model, monkeypatch):  # noqa: F811
    root = make_photos(tmp_path / "photos", n=4)
    real_write = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/.lock"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    for out in (tmp_path / "new", tmp_path / "old"):
        if out.name == "old":
            monkeypatch.undo()
            build_index(root, out, model=model, workers=0)
            monkeypatch.setattr(os, "write", write)
        with pytest.raises(ClipzooError) as info:
            build_index(root, out, model=model, workers=0)
        assert str(info.value).startswith("no space left on ") and "\n" not in str(info.value)
        assert str(info.value).endswith(f" writing {out / '.lock'}; free some space and rerun (the previous index "
                                        "is unchanged)")  # was "[Errno 28] No space left on device"
        assert not out.exists() if out.name == "new" else sorted(p.name for p in out.iterdir()) == [
            "index.sqlite", "shards", "vectors"]  # no .lock left


def test_a_folder_in_vectors_breaks_no_build_or_repair(built, model):  # noqa: F811
    """Jupyter's .ipynb_checkpoints: "Is a directory" from every build and repair — after publishing."""
    root, out = built
    (out / "vectors" / ".ipynb_checkpoints").mkdir()
    (root / "a" / "0000.txt").write_text("a caption")  # a change: a new generation is published
    build_index(root, out, model=model, workers=0)
    assert read_pointer(out)["generation"] == 2
    repair_index(out, model)
    assert verify_index(out).ok
    assert (out / "vectors" / ".ipynb_checkpoints").is_dir()  # not ours: left alone
