"""Building an index: walking, captions, partitions, skipped files, incremental reruns, search, and a
SIGKILL crash test (a subprocess killed at random points, then rerun: no duplicate, missing or
mismatched row)."""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from clipzoo.errors import BadImageError, ClipzooError, NotFoundError  # noqa: E402
from clipzoo.index import BuildReport, Hit, build_index, classify_images, load_vocabulary, open_index  # noqa: E402


def write_image(path: Path, seed: int, size: int = 40, fmt: str | None = None) -> Path:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    d = ImageDraw.Draw(im)
    x0, y0 = int(rng.integers(0, size // 2)), int(rng.integers(0, size // 2))
    d.rectangle([x0, y0, x0 + size // 2, y0 + size // 3], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def make_folder(root: Path, n_per: int = 4) -> Path:
    """cats/ and dogs/ partitions, two root-level files, captions, a corrupt and an empty file."""
    i = 0
    for part in ("cats", "dogs"):
        for j in range(n_per):
            ext = ["png", "jpg", "webp", "bmp"][j % 4]
            write_image(root / part / f"{part}{j}.{ext}", seed=i)
            i += 1
    write_image(root / "root0.png", seed=100)
    write_image(root / "nested" / "deep" / "x.gif", seed=101)
    (root / "cats" / "cats0.txt").write_text("a grey cat on a sofa\n")
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.md").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"skipped: hidden")
    return root


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    return write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True)


@pytest.fixture(scope="module")
def model(tiny_path):
    import clipzoo

    return clipzoo.load(str(tiny_path))


def fresh(model, path) -> np.ndarray:
    return model.encode_image([str(path)])[0].numpy()


def test_build_search_and_items(tmp_path, model, tiny_path):
    root = make_folder(tmp_path / "photos")
    report = build_index(root, tmp_path / "ix", model=str(tiny_path), batch_size=3, workers=0)
    assert isinstance(report, BuildReport)
    assert (report.added, report.updated, report.removed, report.unchanged, report.total) == (10, 0, 0, 0, 10)
    assert sorted(os.path.relpath(p, root) for p, _ in report.skipped) == ["cats/broken.jpg", "dogs/empty.png"]
    reasons = dict((os.path.relpath(p, root), r) for p, r in report.skipped)
    assert reasons["dogs/empty.png"] == "empty file (0 bytes)"
    assert reasons["cats/broken.jpg"].startswith("not a recognised image")
    assert report.index_kind == "flat" and report.recall_at_10 == 1.0 and report.images_per_s > 0

    idx = open_index(tmp_path / "ix", model=model)
    assert idx.count == 10 and idx.root == root.absolute() and idx.model_spec == str(tiny_path)
    assert idx.partitions == ["cats", "dogs", "nested"]
    # every stored vector is the model's embedding of the file
    for item_id in range(1, 11):
        item = idx.item(item_id)
        assert set(item) == {"id", "path", "relpath", "size", "mtime", "sha256", "caption", "partition"}
        np.testing.assert_allclose(idx.embedding(item_id), fresh(model, item["path"]), atol=1e-5)
    cat0 = next(idx.item(i) for i in range(1, 11) if idx.item(i)["relpath"] == "cats/cats0.png")
    assert cat0["caption"] == "a grey cat on a sofa" and cat0["partition"] == "cats"
    assert cat0["size"] == (root / "cats/cats0.png").stat().st_size
    import hashlib
    assert cat0["sha256"] == hashlib.sha256((root / "cats/cats0.png").read_bytes()).hexdigest()

    # image search finds the file itself first, by path, PIL image and bytes
    target = root / "dogs" / "dogs2.webp"
    for query in (str(target), target.read_bytes()):
        hits = idx.search_image(query, k=3)
        assert hits[0].relpath == "dogs/dogs2.webp" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert isinstance(hits[0], Hit) and hits[0].path == str(target.absolute())
    # the results are exact cosine top-k over the stored vectors
    q = fresh(model, target)
    all_vecs = np.stack([idx.embedding(i) for i in range(1, 11)])
    expected = (np.argsort(-(all_vecs @ q))[:5] + 1).tolist()
    assert [h.id for h in idx.search_embedding(q.tolist(), k=5)] == expected
    # partitions search alone; merged search sees all
    hits = idx.search_embedding(q, k=20, partition="cats")
    assert len(hits) == 4 and {h.partition for h in hits} == {"cats"}
    assert len(idx.search_embedding(q, k=20)) == 10
    text_hits = idx.search_text("a photo of a dog", k=4)
    assert len(text_hits) == 4 and text_hits[0].score >= text_hits[-1].score
    assert set(text_hits[0].to_dict()) == {"id", "score", "path", "relpath", "caption", "partition"}

    with pytest.raises(NotFoundError, match="unknown partition 'birds'; partitions of this index: cats, dogs, nested"):
        idx.search_text("x", partition="birds")
    with pytest.raises(NotFoundError, match="no item with id 999 in index"):
        idx.item(999)
    with pytest.raises(NotFoundError):
        idx.embedding(999)
    with pytest.raises(ClipzooError, match=r"the query embedding must be a vector of 32 numbers, got shape \(3,\)"):
        idx.search_embedding([1, 2, 3])
    with pytest.raises(BadImageError, match="uploaded image: not an image Pillow can read"):
        idx.search_image(b"GIF89a garbage")
    with pytest.raises(ClipzooError, match="k must be at least 1, got 0"):
        idx.search_text("x", k=0)
    idx.close()


def test_dedup_drops_near_duplicates(tmp_path, model):
    root = tmp_path / "d"
    for i in range(6):
        write_image(root / f"img{i}.png", seed=i)
    shutil.copy(root / "img0.png", root / "img0-copy.png")
    shutil.copy(root / "img0.png", root / "img0-copy2.png")
    build_index(root, tmp_path / "ix", model=model, workers=0)
    idx = open_index(tmp_path / "ix", model=model)
    q = fresh(model, root / "img0.png")
    plain = idx.search_embedding(q, k=4)
    assert {h.relpath for h in plain[:3]} == {"img0.png", "img0-copy.png", "img0-copy2.png"}
    deduped = idx.search_embedding(q, k=4, dedup=0.9999)
    rels = [h.relpath for h in deduped]
    assert len(rels) == 4 and sum(r.startswith("img0") for r in rels) == 1
    # no kept pair is at or above the threshold
    vecs = np.stack([idx.embedding(h.id) for h in deduped])
    sims = vecs @ vecs.T - np.eye(4) * 2
    assert sims.max() < 0.9999
    with pytest.raises(ClipzooError, match=r"dedup threshold must be in \(0, 1\], got 1.5"):
        idx.search_embedding(q, dedup=1.5)


def test_incremental_rerun(tmp_path, model, tiny_path):
    root = make_folder(tmp_path / "photos")
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    before = {open_index(out).item(i)["relpath"]: i for i in range(1, 11)}

    again = build_index(root, out, workers=0)  # the recorded model; nothing to embed
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 10)

    write_image(root / "cats" / "cats1.jpg", seed=555, fmt="JPEG")  # changed content
    os.utime(root / "dogs" / "dogs0.png", ns=(1, 10**18))             # touched only: same bytes
    (root / "dogs" / "dogs3.bmp").unlink()                            # deleted
    write_image(root / "dogs" / "new.png", seed=777)                  # new
    (root / "cats" / "cats2.txt").write_text("a new caption")         # caption only
    (root / "cats" / "broken.jpg").unlink()
    r = build_index(root, out, model=str(tiny_path), workers=0)
    assert (r.added, r.updated, r.removed, r.unchanged, r.total) == (1, 1, 1, 8, 10)
    assert [os.path.relpath(p, root) for p, _ in r.skipped] == ["dogs/empty.png"]
    idx = open_index(out, model=model)
    by_rel = {idx.item(i)["relpath"]: idx.item(i) for i in idx.store.all_vectors()[0].tolist()}
    assert by_rel["cats/cats1.jpg"]["id"] == before["cats/cats1.jpg"]  # replaced in place
    assert "dogs/dogs3.bmp" not in by_rel and "dogs/new.png" in by_rel
    assert by_rel["cats/cats2.webp"]["caption"] == "a new caption"
    assert by_rel["dogs/dogs0.png"]["mtime"] == pytest.approx(1e9)
    for rel, item in by_rel.items():
        np.testing.assert_allclose(idx.embedding(item["id"]), fresh(model, root / rel), atol=1e-5)
    assert len(idx.search_embedding(fresh(model, root / "dogs/new.png"), k=50)) == 10


def test_refuses_another_model_or_folder(tmp_path, model):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    root = make_folder(tmp_path / "photos", n_per=1)
    build_index(root, tmp_path / "ix", model=model, workers=0)
    other = write_open_clip_safetensors(tmp_path / "other.safetensors", seed=1, embed_config=True)
    with pytest.raises(ClipzooError, match=r"was built with model '.*tiny.safetensors', not '.*other.safetensors'; "
                                           r"embeddings of different models cannot be mixed: pass a new --out"):
        build_index(root, tmp_path / "ix", model=str(other), workers=0)
    with pytest.raises(ClipzooError,
                       match=r"indexes folder '.*photos', not '.*elsewhere'; pass that folder, or a new --out"):
        (tmp_path / "elsewhere").mkdir()
        build_index(tmp_path / "elsewhere", tmp_path / "ix", workers=0)
    with pytest.raises(ClipzooError, match=r"folder '.*nope' does not exist"):
        build_index(tmp_path / "nope", tmp_path / "ix2", model=model)


def test_open_index_errors_name_the_file_and_the_fix(tmp_path, model):
    root = make_folder(tmp_path / "photos", n_per=1)
    out = tmp_path / "ix"
    build_index(root, out, model=model, workers=0)
    faiss_file = next((out / "vectors").glob("all-*.faiss"))
    faiss_file.write_bytes(b"garbage" * 10)
    with pytest.raises(ClipzooError, match=rf"index file '{faiss_file}' is corrupt: 70 bytes, the manifest says "
                                           rf"\d+; run `clipzoo index repair {out}`"):
        open_index(out)
    build_index(root, out, workers=0)  # files that do not match the manifest: a rerun publishes them anew
    assert open_index(out).count == 4
    faiss_file = next((out / "vectors").glob("all-*.faiss"))
    faiss_file.unlink()
    with pytest.raises(ClipzooError, match=rf"index file '.*all-.*\.faiss' is missing; run `clipzoo index repair "
                                           rf"{out}`"):
        open_index(out)
    build_index(root, out, workers=0)  # a missing file is rebuilt
    assert open_index(out).count == 4
    (out / "vectors" / "vectors.json").write_text("{not json")
    with pytest.raises(ClipzooError, match=r"index file '.*vectors.json' is corrupt"):
        open_index(out)
    build_index(root, out, workers=0)
    assert open_index(out).count == 4


def test_classify_and_vocabulary(tmp_path, model):
    vocab = tmp_path / "v.txt"
    vocab.write_text("# animals\ncat\n\ndog\nbird\n")
    assert load_vocabulary(vocab) == ["cat", "dog", "bird"]
    (tmp_path / "v.json").write_text('{"labels": ["cat", "dog"]}')
    assert load_vocabulary(tmp_path / "v.json") == ["cat", "dog"]
    (tmp_path / "l.json").write_text('["a", "b"]')
    assert load_vocabulary(tmp_path / "l.json") == ["a", "b"]
    for name, text, msg in [("e.txt", "# nothing\n\n", "holds no labels"),
                            ("o.json", '{"names": []}', 'a JSON object without "labels"'),
                            ("n.json", '["a", 3]', "entry 1 is a int, not a string"),
                            ("b.json", "[", "is not valid JSON"),
                            ("d.txt", "a\nb\na\n", "lists 'a' more than once"),
                            ("u.txt", "caf\u00e9\nb\ncafe\u0301\n",  # one word in two Unicode forms, as /classify
                             re.escape("lists 'caf\u00e9' more than once (also as 'cafe\u0301': the same text in "
                                       "another Unicode form)")),
                            ("v.csv", "a,b", "unknown extension '.csv'")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ClipzooError, match=msg):
            load_vocabulary(tmp_path / name)
    with pytest.raises(ClipzooError, match="vocabulary '.*missing.txt' does not exist"):
        load_vocabulary(tmp_path / "missing.txt")

    img = write_image(tmp_path / "q.png", seed=3)
    labels = load_vocabulary(vocab)
    cache = tmp_path / "cache"
    out = classify_images(model, [str(img), img.read_bytes()], labels, k=2, cache_dir=cache)
    probs = model.predict([str(img)], labels, templates=["a photo of a {}."])[0]
    expected = sorted(zip(labels, probs.tolist()), key=lambda t: -t[1])[:2]
    assert len(out) == 2 and out[0] == out[1]
    assert [lab for lab, _ in out[0]] == [lab for lab, _ in expected]
    np.testing.assert_allclose([p for _, p in out[0]], [p for _, p in expected], atol=1e-5)
    cached = list(cache.glob("*.faiss"))
    assert len(cached) == 1  # the vocabulary's own index, keyed by model + vocabulary + template
    classify_images(model, str(img), labels, template="a drawing of a {}", cache_dir=cache)
    assert len(list(cache.glob("*.faiss"))) == 2
    with pytest.raises(ClipzooError, match=r"prompt template 'a photo' has no '\{\}' where the label goes"):
        classify_images(model, str(img), labels, template="a photo")


# ------------------------------------------------------------------ crash safety
def _run_build(root: Path, out: Path, tiny: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clipzoo", "index", "build", str(root), "--model", str(tiny), "--out", str(out),
           "--batch-size", "4", "--workers", "0", "--no-progress", "--shard-rows", "4"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_at_random_points_then_rerun_is_consistent(tmp_path, model, tiny_path):
    from clipzoo.index.embedding_store import EmbeddingStore

    root = tmp_path / "photos"
    for i in range(90):
        write_image(root / ("ab"[i % 2]) / f"{i:03d}.png", seed=1000 + i)
    out = tmp_path / "ix"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    rng = random.Random(1234)
    kills = 0
    for attempt in range(4):
        if attempt == 2:  # change the folder between kills: updates and deletions must survive crashes too
            for i in range(0, 20, 3):
                write_image(root / ("ab"[i % 2]) / f"{i:03d}.png", seed=5000 + i)
            for i in (1, 2):
                (root / ("ab"[i % 2]) / f"{i:03d}.png").unlink()
        proc = _run_build(root, out, tiny_path, env)
        shards = out / "shards"
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:  # wait until it is writing
            if shards.is_dir() and any(shards.iterdir()):
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the build finished before it could be killed: make the folder bigger"
    proc = _run_build(root, out, tiny_path, env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()

    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    with EmbeddingStore(out) as store:
        items = list(store.iter_items())
        assert sorted(it["relpath"] for it in items) == files                # none missing, none extra
        assert len({it["relpath"] for it in items}) == len(items)           # no duplicate
        assert len({(it["shard"], it["row"]) for it in items}) == len(items)
        referenced = {it["shard"] for it in items}
        assert {p.name for p in store.shard_dir.iterdir()} == referenced     # no orphan or partial shard
    idx = open_index(out, model=model)
    assert idx.count == len(files)
    fresh_all = model.encode_image([str(root / f) for f in files]).numpy()
    by_rel = {it["relpath"]: it for it in items}
    for f, vec in zip(files, fresh_all):                                     # no mismatched row
        np.testing.assert_allclose(idx.embedding(by_rel[f]["id"]), vec, atol=1e-5)
        assert by_rel[f]["sha256"] == __import__("hashlib").sha256((root / f).read_bytes()).hexdigest()
    hits = idx.search_embedding(fresh_all[5], k=len(files) + 5)
    assert sorted(h.relpath for h in hits) == files
