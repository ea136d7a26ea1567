"""clip-retrieval's embedding folder both ways: ``clipzoo embed --format clip-retrieval`` writes it (read back
equal to ``--format npy``; autofaiss indexes it), ``clipzoo index build --from-embeddings`` reads it (ours, and
one laid out by hand as ``clip-retrieval inference`` writes it)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss")
pq = pytest.importorskip("pyarrow.parquet")

from clipzoo.cli import app  # noqa: E402
from clipzoo.embed.clip_retrieval import open_clip_retrieval, write_clip_retrieval  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index import open_index  # noqa: E402
from clipzoo.index.from_embeddings import build_index_from_embeddings  # noqa: E402

CAPTIONS = ["a red ellipse", "a square picture", "a tall image"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    return write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny, image_files):
    """The same images and captions embedded as .npy files and as one clip-retrieval folder."""
    base = tmp_path_factory.mktemp("cr")
    texts = base / "captions.txt"
    texts.write_text("\n".join(CAPTIONS) + "\n")
    for args in (["--images", *image_files, "--out", base / "img.npy"], ["--texts", texts, "--out", base / "txt.npy"],
                 ["--images", *image_files, "--texts", texts, "--format", "clip-retrieval", "--out", base / "cr"]):
        r = run("embed", tiny, *args, "--workers", "0", "--no-progress", "--device", "cpu")
        assert r.exit_code == 0, r.output
    return base


def test_clip_retrieval_output_equals_npy_output(embedded, tiny, image_files):
    cr = embedded / "cr"
    assert sorted(p.relative_to(cr).as_posix() for p in cr.rglob("*") if p.is_file()) == [
        "clipzoo.json", "img_emb/img_emb_0.npy", "metadata/metadata_0.parquet", "text_emb/text_emb_0.npy"]
    np.testing.assert_array_equal(np.load(cr / "img_emb" / "img_emb_0.npy"), np.load(embedded / "img.npy"))
    np.testing.assert_array_equal(np.load(cr / "text_emb" / "text_emb_0.npy"), np.load(embedded / "txt.npy"))
    table = pq.read_table(cr / "metadata" / "metadata_0.parquet")
    assert table.column_names == ["image_path", "caption"]
    assert table.column("image_path").to_pylist() == json.loads((embedded / "img.json").read_text())["inputs"]
    assert table.column("caption").to_pylist() == CAPTIONS
    folder = open_clip_retrieval(cr)
    assert folder.modalities == ["image", "text"] and folder.model == str(tiny)
    back = folder.load("text")
    assert back.inputs == CAPTIONS and back.features.dtype == np.float32
    np.testing.assert_array_equal(back.features, np.load(embedded / "txt.npy"))


def test_index_from_our_folder_uses_its_recorded_model(embedded, image_files, tmp_path):
    r = run("index", "build", "--from-embeddings", embedded / "cr", "--out", tmp_path / "ix", "--json", "--no-progress")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["added"] == 3 and report["total"] == 3 and report["index_kind"] == "flat"
    r = run("search", tmp_path / "ix", "--image", image_files[1], "-k", "3", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["hits"]
    assert hits[0]["path"] == image_files[1] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["relpath"] == os.path.basename(image_files[1])  # inside the folder holding the rows' files
    assert [h["caption"] for h in hits if h["path"] == image_files[1]] == [CAPTIONS[1]]


def test_index_from_embeddings_is_published_and_locked_as_a_folder_build(embedded, tmp_path):
    """A --from-embeddings build takes the writer lock and publishes a generation with its manifest, so
    `clipzoo index verify` passes and a running server can switch to it (issue 17 §3/§4)."""
    from clipzoo.index.from_embeddings import build_index_from_embeddings
    from clipzoo.index.lock import IndexBusyError, IndexLock
    from clipzoo.index.repair import verify_index

    out = tmp_path / "ix"
    build_index_from_embeddings(embedded / "cr", out)
    check = verify_index(out)
    assert check.ok and not check.legacy and check.generation is not None and check.files > 0, check.lines()
    with IndexLock(out), pytest.raises(IndexBusyError, match=f"pid {os.getpid()}"):
        build_index_from_embeddings(embedded / "cr", out)
    again = build_index_from_embeddings(embedded / "cr", out)  # the lock is released
    assert again.unchanged == 3 and verify_index(out).generation == check.generation  # nothing changed: kept


def test_shards_are_padded_as_clip_retrieval_pads_them(tmp_path):
    x = np.random.default_rng(0).standard_normal((23, 8)).astype(np.float32)
    paths = [f"p/{i}.jpg" for i in range(23)]
    record = write_clip_retrieval(tmp_path / "a", image_features=x, image_paths=paths, shard_rows=2)
    width = int(math.log10(12)) + 1  # clip-retrieval: zfill(int(log10(output_partition_count)) + 1)
    assert record["shards"] == 12 and width == 2
    assert sorted(p.name for p in (tmp_path / "a" / "img_emb").iterdir()) == [f"img_emb_{i:02d}.npy" for i in range(12)]
    back = open_clip_retrieval(tmp_path / "a").load()
    np.testing.assert_array_equal(back.features, x)
    assert back.inputs == paths and back.modality == "image"
    write_clip_retrieval(tmp_path / "a", text_features=x[:3], captions=["a", "b", "c"])  # the same folder again
    again = open_clip_retrieval(tmp_path / "a")
    assert again.modalities == ["text"] and again.load().inputs == ["a", "b", "c"]  # no stale shard is read
    assert sorted(p.name for p in (tmp_path / "a" / "metadata").iterdir()) == ["metadata_0.parquet"]


def test_autofaiss_indexes_our_output_with_the_same_top1(tmp_path):
    autofaiss = pytest.importorskip("autofaiss")
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    x = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_clip_retrieval(tmp_path / "emb", image_features=x, image_paths=[f"img/{i}.jpg" for i in range(3000)],
                         model="tiny-model", shard_rows=1000)
    index, _ = autofaiss.build_index(embeddings=str(tmp_path / "emb" / "img_emb"), save_on_disk=False,
                                     metric_type="ip", max_index_memory_usage="200MB",
                                     current_memory_available="1G", verbose=40)
    queries = x[rng.choice(3000, 25, replace=False)] + 0.05 * rng.standard_normal((25, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, theirs = index.search(queries, 1)
    report = build_index_from_embeddings(tmp_path / "emb", tmp_path / "ix")
    assert report.total == 3000
    with open_index(tmp_path / "ix") as idx:
        ours = [int(os.path.basename(idx.search_embedding(q, k=1)[0].relpath).split(".")[0]) for q in queries]
    exact = np.argmax(queries @ x.T, axis=1)
    assert ours == exact.tolist()
    assert theirs[:, 0].tolist() == ours  # autofaiss numbers rows in file order, as our paths do here


def _write_as_clip_retrieval_inference(out, image_feats, text_feats, paths, captions, extra):
    """The layout of clip-retrieval's NumpyWriter, written by hand: per partition a float16 img_emb_{i}.npy and
    text_emb_{i}.npy, and a metadata_{i}.parquet written by pandas (image_path, caption, then the json-normalised
    metadata columns)."""
    import pandas as pd

    parts = 2
    pad = int(math.log10(parts)) + 1
    for d in ("img_emb", "text_emb", "metadata"):
        (out / d).mkdir(parents=True)
    bounds = [(0, 2), (2, len(paths))]
    for i, (lo, hi) in enumerate(bounds):
        tag = str(i).zfill(pad)
        np.save(out / "img_emb" / f"img_emb_{tag}.npy", image_feats[lo:hi].astype(np.float16))
        np.save(out / "text_emb" / f"text_emb_{tag}.npy", text_feats[lo:hi].astype(np.float16))
        columns = {"image_path": paths[lo:hi], "caption": captions[lo:hi], **{k: v[lo:hi] for k, v in extra.items()}}
        pd.DataFrame(columns).to_parquet(out / "metadata" / f"metadata_{tag}.parquet")


def test_index_build_reads_a_folder_written_as_clip_retrieval_does(tmp_path, tiny, image_files):
    import clipzoo

    model = clipzoo.load(str(tiny), device="cpu")
    img = np.stack([model.encode_image(p, normalize=True).float().numpy().reshape(-1) for p in image_files])
    txt = model.encode_text(CAPTIONS, normalize=True).float().numpy()
    cr = tmp_path / "clip_inference_output"
    _write_as_clip_retrieval_inference(cr, img, txt, image_files, CAPTIONS,
                                       {"url": ["u0", "u1", "u2"], "width": [64, 40, 33]})
    r = run("index", "build", "--from-embeddings", cr, "--out", tmp_path / "ix", "--json", "--no-progress")
    assert r.exit_code == 2
    assert "does not say which model made its embeddings; pass --model MODEL" in r.output
    r = run("index", "build", "--from-embeddings", cr, "--model", tiny, "--out", tmp_path / "ix", "--json",
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["total"] == 3
    with open_index(tmp_path / "ix") as idx:
        for i, p in enumerate(image_files):
            hit = idx.search_embedding(img[i], k=1)[0]
            assert (hit.path, hit.relpath, hit.caption) == (p, os.path.basename(p), CAPTIONS[i])
            assert hit.score == pytest.approx(1.0, abs=2e-3)  # float16 rows
    texts = open_clip_retrieval(cr).load("text")
    np.testing.assert_allclose(texts.features, txt.astype(np.float16).astype(np.float32))
    assert texts.inputs == CAPTIONS


def test_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("index", "build", "--from-embeddings", tmp_path / "empty", "--out", tmp_path / "ix")
    assert r.exit_code == 2
    assert f"{str(tmp_path / 'empty')!r} is not a clip-retrieval embedding folder" in r.output
    r = run("index", "build", tmp_path, "--from-embeddings", tmp_path / "empty", "--out", tmp_path / "ix")
    assert r.exit_code == 2 and "pass either a folder DIR of images or --from-embeddings DIR" in r.output
    x = np.ones((3, 4), np.float32)
    write_clip_retrieval(tmp_path / "bad", image_features=x, image_paths=["a", "b", "c"])
    (tmp_path / "bad" / "metadata" / "metadata_0.parquet").unlink()
    with pytest.raises(Exception, match=r"has no metadata/metadata_…0\.parquet beside it"):
        open_clip_retrieval(tmp_path / "bad").load()
    write_clip_retrieval(tmp_path / "cut", image_features=x, image_paths=["a", "b", "c"])
    meta = tmp_path / "cut" / "metadata" / "metadata_0.parquet"
    meta.write_bytes(meta.read_bytes()[:-20])  # a truncated parquet was pyarrow's traceback from the embed reader
    with pytest.raises(ClipzooError) as err:
        open_clip_retrieval(tmp_path / "cut").load()
    assert str(err.value).startswith(f"{str(meta)!r} is not a readable parquet file (") and "\n" not in str(err.value)


def test_embed_format_errors_before_loading_the_model(tmp_path, image_files):
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n")
    missing = tmp_path / "no-such-model.safetensors"  # never loaded: each error comes first
    r = run("embed", missing, "--texts", texts, "--format", "parquet", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--format must be npy or clip-retrieval, got 'parquet'" in r.output
    r = run("embed", missing, "--images", *image_files, "--texts", texts, "--format", "clip-retrieval", "--out",
            tmp_path / "o")
    assert r.exit_code == 2
    assert "--images gives 3 images but --texts 2 lines; clip-retrieval pairs them row by row" in r.output
    r = run("embed", missing, "--images", *image_files, "--texts", texts, "--format", "clip-retrieval", "--skip-bad",
            "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--skip-bad would break the image–caption pairs" in r.output
    r = run("embed", missing, "--audio", image_files[0], "--format", "clip-retrieval", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "embed --audio with --format npy" in r.output
    assert not (tmp_path / "o").exists()


def test_image_paths_of_rows_are_checked_and_normalised(tmp_path, tiny, monkeypatch):
    """A row without an image_path (pandas writes None or NaN) is one line, not an item called 'None' (two such
    rows said 'appears twice'); a relative path is relative to the working folder, as clip-retrieval means it, and
    every row is named inside the deepest folder holding them all (never by an absolute path)."""
    x = np.eye(32, dtype=np.float32)[:4]  # the tiny model's 32 dimensions
    write_clip_retrieval(tmp_path / "none", image_features=x[:2], image_paths=["a.png", "b.png"])
    import pyarrow as pa  # a null in the column, as pandas writes a missing path

    pq.write_table(pa.table({"image_path": ["a.png", None]}), tmp_path / "none" / "metadata" / "metadata_0.parquet")
    with pytest.raises(Exception, match=r"^row 1 has no image_path \(None\); every image row needs one$"):
        build_index_from_embeddings(tmp_path / "none", tmp_path / "ix0", model=str(tiny))
    write_clip_retrieval(tmp_path / "nul", image_features=x[:1], image_paths=["a\0b.png"])
    with pytest.raises(Exception, match=r"^row 0's image_path holds a NUL byte"):
        build_index_from_embeddings(tmp_path / "nul", tmp_path / "ix1", model=str(tiny))
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    paths = ["cats/../dogs/a.png", "../outside.png", str(tmp_path / "w" / "abs" / "b.png"), "top.png"]
    write_clip_retrieval(tmp_path / "ok", image_features=x, image_paths=paths)
    build_index_from_embeddings(tmp_path / "ok", tmp_path / "ix2", model=str(tiny))
    with open_index(tmp_path / "ix2") as idx:
        got = {h.relpath: (h.partition, h.path) for h in idx.search_embedding(np.ones(32, np.float32), k=4)}
    assert got == {"w/dogs/a.png": ("w", str(tmp_path / "w/dogs/a.png")),
                   "outside.png": (None, str(tmp_path / "outside.png")),
                   "w/abs/b.png": ("w", str(tmp_path / "w/abs/b.png")), "w/top.png": ("w", str(tmp_path / "w/top.png"))}
