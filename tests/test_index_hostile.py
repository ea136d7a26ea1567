"""The index against a prober's damage and odd input (found by probing `clipzoo index`): an emptied store file is
refused, not rebuilt empty; edited captions reach search; a huge k, non-UTF-8 names and a vectors.json of another
shape are one line or skipped, never a crash."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

pytest.importorskip("faiss")

from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index import build_index, open_index  # noqa: E402
from clipzoo.index.generations import read_pointer  # noqa: E402
from clipzoo.index.repair import repair_index, verify_index  # noqa: E402
from test_index_integrity import make_photos, model, write_image  # noqa: E402, F401 (fixture)


@pytest.fixture
def built(tmp_path, model):  # noqa: F811
    root = make_photos(tmp_path / "photos")
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    return root, out


def test_an_emptied_store_file_is_refused_not_rebuilt_empty(built, model):  # noqa: F811
    """A 0-byte index.sqlite: the next build created fresh tables in it and repair then published an empty index,
    deleting the last snapshot and the shards."""
    root, out = built
    (out / "index.sqlite").write_bytes(b"")
    for action in (lambda: build_index(root, out, model=model, workers=0), lambda: repair_index(out, model)):
        with pytest.raises(ClipzooError, match=r"index.sqlite' is corrupt or not an index \((it holds no tables, "
                                               r"while the index has published generations in vectors/|tables "
                                               r"missing)\)"):
            action()
    with sqlite3.connect(out / "index.sqlite") as conn:  # no tables were created in it
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    with open_index(out, model=model) as idx:  # the published generation still answers
        assert len(idx.search_embedding(model.encode_text(["x"])[0], k=5)) == 5


def test_an_edited_caption_reaches_search(built, model):  # noqa: F811
    root, out = built
    (root / "a" / "0000.txt").write_text("old caption")
    build_index(root, out, model=model, workers=0)
    (root / "a" / "0000.txt").write_text("new caption")
    build_index(root, out, model=model, workers=0)
    with open_index(out, model=model) as idx:
        hits = {h.relpath: h.caption for h in idx.search_embedding(model.encode_text(["x"])[0], k=12)}
    assert hits["a/0000.png"] == "new caption"  # was "old caption": the generation was not republished


def test_a_k_beyond_the_rows_is_the_rows(built, model):  # noqa: F811
    _, out = built
    with open_index(out, model=model) as idx:
        assert len(idx.search_embedding(model.encode_text(["x"])[0], k=2 ** 31)) == 12  # aborted (bad_alloc)


def test_a_name_that_is_not_utf8_is_skipped_and_listed(built, model):  # noqa: F811
    root, out = built
    write_image(root / "a" / os.fsdecode(b"\xffbad.png"), seed=99)
    report = build_index(root, out, model=model, workers=0)  # was a UnicodeEncodeError, every build
    assert (str(root / "a") + "/\\xffbad.png", "its name is not UTF-8, which the index stores names in; rename "
            "it") in report.skipped


@pytest.mark.parametrize("text", ['"x"', "[]", '{"files": {}}', '{"generation": "x", "files": {}, "tag": "t"}'])
def test_a_vectors_record_of_another_shape_is_read_as_none(built, model, text):  # noqa: F811
    """JSON of the wrong shape was an AttributeError / KeyError in build, repair and verify."""
    root, out = built
    (out / "vectors" / "vectors.json").write_text(text)
    assert read_pointer(out) is None
    assert any("vectors.json" in path for path, _ in verify_index(out).problems)
    build_index(root, out, model=model, workers=0)  # republishes
    assert read_pointer(out)["count"] == 12 and not verify_index(out).problems
    assert json.loads((out / "vectors" / "vectors.json").read_text())["count"] == 12


def test_a_first_build_stopped_by_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    """`ulimit -f 30`: "index.sqlite is corrupt or not an index (disk I/O error); … delete …", its files left."""
    import shlex
    import subprocess
    import sys

    root = make_photos(tmp_path / "photos")
    out = tmp_path / "u.index"
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "clipzoo", "index", "build", str(root),
                                                  "--model", "clipzoo/tiny-shapes", "--out", str(out),
                                                  "--no-progress", "--workers", "0"])
    done = subprocess.run(["bash", "-c", f"ulimit -f 30 && exec {command}"], capture_output=True, text=True,
                          timeout=300)  # the shell sets the limit: no preexec_fn in a process with threads
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: cannot write {out / 'index.sqlite'} (disk I/O error): check the disk, the file "
                           "size limit (ulimit -f) and the folder's permissions, then rerun (the previous index is "
                           "unchanged)\n")
    assert not out.exists()


def test_a_worker_that_cannot_share_its_batch_fails_in_one_line(tmp_path):
    """A full /dev/shm (or a file size limit) failed in the queue's feeder thread of a decode worker: the batch was
    lost and the build waited for it for ever. The index build's loader with one forked worker, in a fresh
    interpreter (a fork of a pytest-xdist worker, with its threads and its channel on stdout, is not safe)."""
    import subprocess
    import sys
    import textwrap

    root = make_photos(tmp_path / "photos", 4)
    script = textwrap.dedent(f"""
        import torch
        from torch.utils.data import DataLoader
        from clipzoo.index.folder import IndexFiles, collate_index_batch

        def full(self):
            raise RuntimeError("unable to write to file </torch_1_2_0>: No space left on device (28)")

        torch.Tensor.share_memory_ = full  # the forked worker inherits it
        paths = sorted(str(p) for p in __import__("pathlib").Path({str(root)!r}).rglob("*.png"))
        loader = DataLoader(IndexFiles(paths, lambda im: torch.zeros(3, 8, 8)), batch_size=2, num_workers=1,
                            collate_fn=collate_index_batch, multiprocessing_context="fork", timeout=60)
        try:
            next(iter(loader))
        except Exception as exc:
            print(type(exc).__name__, "|", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    name, _, message = done.stdout.strip().partition(" | ")
    assert name == "SharedMemoryError" and "\n" not in message, done.stdout
    assert message.startswith("cannot hand a batch to the model through shared memory (unable to write to file "
                              "</torch_1_2_0>: No space left on device (28)): /dev/shm is full")


def test_vectors_named_with_another_models_name_say_so(tmp_path):
    """32-dim vectors indexed with --model clipzoo/tiny-shapes (64-dim): the search said "the query embedding must
    be a vector of 32 numbers, got shape (64,)", an image search "… use that model" — the model it used."""
    import numpy as np
    from typer.testing import CliRunner

    from clipzoo.cli import app

    np.save(tmp_path / "v32.npy", np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32))
    out = tmp_path / "bv.index"
    runner = CliRunner()
    r = runner.invoke(app, ["index", "build-vectors", str(tmp_path / "v32.npy"), "--out", str(out), "--model",
                            "clipzoo/tiny-shapes", "--no-progress"])
    assert r.exit_code == 0, r.output
    said = (f"error: index {str(out)!r} holds 32-dim vectors, but the model it records (clipzoo/tiny-shapes) gives "
            "64-dim embeddings: its vectors were not made by that model; build it again with --model naming the "
            "model that made them")
    for extra in ([], ["--device", "cpu", "--precision", "bf16"]):  # the numpy text tower, and the torch model
        r = runner.invoke(app, ["search", str(out), "red", *extra])
        assert r.exit_code == 2 and said in " ".join(r.output.split()), r.output


def test_other_weights_at_the_same_path_are_refused(tmp_path):
    """A local model folder replaced by other weights of the same size: the rebuild embedded new images with them
    and mixed them into the index without a word."""
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    root = make_photos(tmp_path / "photos", 4)
    out = tmp_path / "ix"
    model = write_open_clip_hub_folder(tmp_path / "m", seed=0)
    build_index(root, out, model=str(model), workers=0)
    build_index(tmp_path / "photos" / ".." / "photos", out, workers=0)  # the same folder, spelled another way
    write_open_clip_hub_folder(tmp_path / "m", seed=7)  # retrained in place
    make_photos(root, 2, start=10)
    with pytest.raises(ClipzooError, match=rf"^the model at {str(model)!r} is not the one index {str(out)!r} was "
                                           r"built with: its files changed since"):
        build_index(root, out, workers=0)


def test_a_missing_readers_file_and_a_huge_id_are_named(built, model):  # noqa: F811
    """A deleted `vectors/<tag>.readers` said "switched generations too often while opening; retry" for ever;
    item(2**70) was an OverflowError."""
    from clipzoo.errors import NotFoundError

    root, out = built
    with open_index(out, model=model) as idx, pytest.raises(NotFoundError, match="no item with id 118059162071741"):
        idx.item(2 ** 70)
    from clipzoo.index.embedding_store import EmbeddingStore

    store = EmbeddingStore(out)
    try:  # ids past 64 bits are no items in a batch lookup either (it was an OverflowError)
        assert set(store.items([1, 2 ** 70, -(2 ** 70)])) == {1}
    finally:
        store.close()
    for readers in (out / "vectors").glob("*.readers"):
        readers.unlink()
    with pytest.raises(ClipzooError, match=r"\.readers' is missing; run `clipzoo index repair "):
        open_index(out, model=model)
