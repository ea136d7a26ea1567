"""``clipzoo index build``, ``clipzoo search`` and ``clipzoo classify`` through the CLI."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss")

from clipzoo.cli import app  # noqa: E402
from test_index_build import make_folder, write_image  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    return write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny):
    base = tmp_path_factory.mktemp("cli")
    root = make_folder(base / "photos")
    out = base / "ix"
    r = CliRunner().invoke(app, ["index", "build", str(root), "--model", str(tiny), "--out", str(out),
                                 "--workers", "0", "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    return root, out, json.loads(r.stdout)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_build_reports_counts_and_skipped(built, tiny):
    root, out, report = built
    assert report["added"] == 10 and report["total"] == 10 and report["index_kind"] == "flat"
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in report["skipped"]) == ["broken.jpg", "empty.png"]
    r = run("index", "build", root, "--out", out, "--workers", "0", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "indexed 10 images" in r.stderr and "0 added, 0 updated, 0 removed, 10 unchanged" in r.stderr
    assert "skipped 2 unreadable file(s):" in r.stderr and "empty.png: empty file (0 bytes)" in r.stderr


def test_search_text_image_partition_json(built):
    root, out, _ = built
    r = run("search", out, "a photo of a cat", "-k", "3", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["query"] == "a photo of a cat" and len(data["hits"]) == 3
    r = run("search", out, "--image", root / "cats" / "cats1.jpg", "-k", "2", "--partition", "cats", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["hits"]
    assert hits[0]["relpath"] == "cats/cats1.jpg" and all(h["partition"] == "cats" for h in hits)
    r = run("search", out, "anything", "-k", "2", "--dedup", "0.95")
    assert r.exit_code == 0, r.output
    assert "score" in r.stdout and "path" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["search", "{out}", "x", "--partition", "birds"],
     "error: unknown partition 'birds'; partitions of this index: cats, dogs, nested"),
    (["search", "{out}"], "error: pass either a search TEXT or --image PATH (one of them)"),
    (["search", "{out}", "x", "-k", "0"], "error: -k must be at least 1, got 0"),
    (["search", "{out}", "x", "--dedup", "2"], "error: --dedup must be in (0, 1], got 2.0"),
    (["search", "{missing}", "x"], "error: index '{missing}' does not exist; build it with `clipzoo index build"),
    (["search", "{out}", "--image", "{root}/cats/broken.jpg"], "cannot be decoded"),
    (["index", "build", "{root}", "--out", "{out}", "--model", "{other}"],
     "embeddings of different models cannot be mixed: pass a new --out"),
    (["index", "build", "{root}/nope", "--model", "x", "--out", "{missing}"],
     "does not exist; pass the folder of images"),
])
def test_user_errors_are_one_line_exit_2(built, tmp_path, args, message):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    root, out, _ = built
    other = write_open_clip_safetensors(tmp_path / "other.safetensors", seed=3, embed_config=True)
    fill = {"out": out, "root": root, "missing": tmp_path / "missing", "other": other}
    r = run(*[a.format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    assert message.format(**fill) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_classify(tmp_path, tiny):
    img = write_image(tmp_path / "a.png", seed=1)
    img2 = write_image(tmp_path / "b.jpg", seed=2)
    (tmp_path / "v.json").write_text(json.dumps({"labels": ["cat", "dog", "bird", "fish"]}))
    r = run("classify", img, img2, "--model", tiny, "--labels", tmp_path / "v.json", "-k", "2",
            "--template", "a drawing of a {}", "--json", "--cache-dir", tmp_path / "cache")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["template"] == "a drawing of a {}" and len(data["results"]) == 2
    top = data["results"][0]["labels"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    assert list((tmp_path / "cache" / "vocab").glob("*.faiss"))
    r = run("classify", img, "--model", tiny, "--labels", tmp_path / "v.json")
    assert r.exit_code == 0 and "#1" in r.stdout
    r = run("classify", img, "--model", tiny, "--labels", tmp_path / "v.json", "--template", "photo")
    assert r.exit_code == 2 and "error: prompt template 'photo' has no '{}' where the label goes" in r.stderr
    r = run("classify", img, "--model", tiny, "--labels", tmp_path / "none.txt")
    assert r.exit_code == 2 and "does not exist; pass a .txt with one label a line" in r.stderr


def test_build_with_int8_runtime_and_exact_decode(tmp_path, tiny, monkeypatch):
    """`index build --runtime int8` embeds with the quantised model; vectors stay within int8's fidelity of
    eager ones (queries run eager), and a runtime typo fails before any work."""
    import numpy as np

    root = make_folder(tmp_path / "photos")
    eager, q = tmp_path / "eager", tmp_path / "int8"
    monkeypatch.setenv("CLIPZOO_CACHE", str(tmp_path / "cache"))  # where the ONNX export goes
    for out, extra in ((eager, []), (q, ["--runtime", "int8"])):
        r = run("index", "build", root, "--model", tiny, "--out", out, "--workers", "0", "--no-progress",
                "--exact-decode", *extra)
        assert r.exit_code == 0, r.output
    from clipzoo.index.embedding_store import EmbeddingStore

    def by_path(folder):
        with EmbeddingStore(folder) as store:
            ids, x = store.all_vectors()
            path_of = {i: rel for rel, (i, *_) in store.files().items()}
            return {path_of[int(i)]: v for i, v in zip(ids, x)}

    va, vb = by_path(eager), by_path(q)
    assert sorted(va) == sorted(vb) and len(va) == 10
    assert min(float(np.dot(va[p], vb[p])) for p in va) >= 0.99
    r = run("index", "build", root, "--model", tiny, "--out", tmp_path / "x", "--runtime", "int9")
    assert r.exit_code == 2 and "unknown runtime 'int9'" in r.output and not (tmp_path / "x").exists()
