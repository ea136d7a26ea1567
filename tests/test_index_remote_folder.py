"""Issue 21 leftover: fsspec URLs as the folder of `clipzoo index build` (index/remote_folder.py). A ``file://`` URL is
its local folder; a ``memory://`` folder is copied into OUT/.source and indexed from there: the same relative paths,
ids, partitions, captions, hashes and vectors (≤ 1e-6) as a build of the same files in a local folder; a rerun copies
only what changed and the incremental build sees exactly that; a missing or different URL is one line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipzoo.cli import app
from clipzoo.index.embedding_store import EmbeddingStore
from clipzoo.index.remote_folder import SOURCE_DIR, SOURCE_RECORD

fsspec = pytest.importorskip("fsspec")

MODEL = "clipzoo/tiny-shapes"
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def build(*args):
    return CliRunner().invoke(app, ["index", "build", *map(str, args), "--model", MODEL, "--workers", "0",
                                    "--no-progress"], env=ENV)


def rows(index):
    """``{relpath: (id, size, sha256, caption)}``, ``{partitions}`` and the vectors by relpath of an index."""
    with EmbeddingStore(index) as store:
        files = store.files()
        vectors = store.vectors([files[k][0] for k in sorted(files)])
        return ({k: (v[0], v[1], v[3], v[4]) for k, v in files.items()}, store.partitions(),
                dict(zip(sorted(files), vectors, strict=True)), {k: v[2] for k, v in files.items()})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A local folder (two partitions, files at the top, a caption, a hidden file, a non-image) and its index."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("remote") / "photos"
    for i in range(9):
        rel = ["a/", "b/", ""][i % 3] + f"{i:02d}.{('png', 'jpg')[i % 2]}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(root / rel)
    (root / "a" / "00.txt").write_text("a caption for the first one\n")
    (root / ".hidden.png").write_bytes((root / "a" / "00.png").read_bytes())
    (root / "notes.md").write_text("not an image")
    local = build(root, "--out", root.parent / "local.index")
    assert local.exit_code == 0, local.output
    return root, root.parent / "local.index"


@pytest.fixture
def photos(tmp_path, folder):
    """The local folder and the same files in a memory:// folder of this test's own."""
    root = folder[0]
    mem = fsspec.filesystem("memory")
    base = f"/index-url-{tmp_path.name}"
    for p in sorted(root.rglob("*")):
        if p.is_file():
            mem.pipe(f"{base}{'/' + p.relative_to(root).as_posix()}", p.read_bytes())
    yield root, f"memory://{base.lstrip('/')}", mem, base
    mem.rm(base, recursive=True)


def test_index_build_from_a_memory_url_equals_the_local_build(tmp_path, photos, folder):
    root, url, mem, base = photos
    result = build(url, "--out", tmp_path / "url.index")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "indexed 9 images" in result.stderr and "9 added" in result.stderr
    ours, parts, vecs, _ = rows(tmp_path / "url.index")
    theirs, parts_ref, vecs_ref, _ = rows(folder[1])
    assert ours == theirs and len(ours) == 9 and ours["a/00.png"][3] == "a caption for the first one"
    assert parts == parts_ref and {"a", "b"} <= set(parts)
    assert max(float(np.abs(vecs[k] - vecs_ref[k]).max()) for k in vecs) <= 1e-6
    copy = tmp_path / "url.index" / SOURCE_DIR
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == sorted(
        [*ours, "a/00.txt", SOURCE_RECORD])  # images and captions; not the hidden file, not notes.md

    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*.png")}
    mem.pipe(f"{base}/b/01.jpg", (root / "b" / "04.png").read_bytes())  # changed content
    mem.rm(f"{base}/02.png")  # gone
    mem.pipe(f"{base}/c/new.png", (root / "a" / "03.jpg").read_bytes())  # new, in a new partition
    again = build(url, "--out", tmp_path / "url.index")
    assert again.exit_code == 0, again.output
    assert "1 added, 1 updated, 1 removed, 7 unchanged" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*.png") if p in stamps} == {
        p: s for p, s in stamps.items() if p.name != "02.png"}  # untouched files are not copied again
    after, parts, vecs, _ = rows(tmp_path / "url.index")
    assert sorted(after) == sorted([*(k for k in ours if k != "02.png"), "c/new.png"]) and "c" in parts
    assert after["a/00.png"] == ours["a/00.png"] and float(np.abs(vecs["b/01.jpg"] - vecs_ref["b/04.png"]).max()) \
        <= 1e-6


def test_index_build_from_a_file_url_is_the_local_folder(tmp_path, folder):
    root = folder[0]
    result = build(root.as_uri(), "--out", tmp_path / "file.index")
    assert result.exit_code == 0, result.output
    ours, parts, vecs, mtimes = rows(tmp_path / "file.index")
    theirs, parts_ref, vecs_ref, mtimes_ref = rows(folder[1])
    assert ours == theirs and mtimes == mtimes_ref and parts == parts_ref and len(ours) == 9
    assert max(float(np.abs(vecs[k] - vecs_ref[k]).max()) for k in vecs) <= 1e-6
    assert not (tmp_path / "file.index" / SOURCE_DIR).exists()  # read in place


def test_a_missing_or_different_url_is_one_line(tmp_path, photos):
    url = photos[1]
    for given, message in ((f"{url}-nothing-here", f"error: folder '{url}-nothing-here' does not exist; pass the URL "
                            "of a folder of images to index"),
                           ((tmp_path / "nope").as_uri(), f"error: folder '{(tmp_path / 'nope').as_uri()}' does not "
                            "exist; pass the URL of a folder of images to index")):
        result = build(given, "--out", tmp_path / "x.index")
        assert result.exit_code == 2 and result.stderr.strip().splitlines() == [message]
        assert not (tmp_path / "x.index").exists()
    failed = CliRunner().invoke(app, ["index", "build", url, "--model", "no/such-model", "--out",
                                      str(tmp_path / "x.index"), "--no-progress"], env=ENV)
    assert failed.exit_code == 2 and "no/such-model" in failed.stderr
    assert not (tmp_path / "x.index").exists()  # a first build that failed leaves no copy behind
    assert build(url, "--out", tmp_path / "u.index").exit_code == 0
    photos[2].pipe(f"{photos[3]}-other/one.png", (photos[0] / "a" / "00.png").read_bytes())
    result = build(f"{url}-other", "--out", tmp_path / "u.index")
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        f"error: {str(tmp_path / 'u.index')!r} indexes folder URL {url!r}, not '{url}-other'; pass that URL, or a "
        "new --out for this one"]
    photos[2].rm(f"{photos[3]}-other", recursive=True)
