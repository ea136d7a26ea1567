"""The Milvus vector store on Milvus Lite (embedded, no server): recall against exact search, deletes, a
reopened store, an unreachable URI, and an index built and served through the VectorStore protocol."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from clipzoo.cli import app  # noqa: E402
from clipzoo.embed.clip_retrieval import write_clip_retrieval  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index import open_index  # noqa: E402
from clipzoo.index.stores import VectorStore, get_store, recall_at_k  # noqa: E402
from clipzoo.index.stores.faiss import FaissStore  # noqa: E402
from clipzoo.index.stores.milvus import connect  # noqa: E402

MilvusStore = get_store("milvus")


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, d)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_top10_matches_exact_search_on_20000_vectors(tmp_path):
    x = clustered(20_200, 64, 0)
    base, queries = x[:20_000], x[20_000:]
    ids = np.arange(20_000, dtype=np.int64) * 3 + 7  # item ids, not row numbers
    t0 = time.perf_counter()
    store = MilvusStore.build(ids, base, uri=str(tmp_path / "m.db"))
    build_s = time.perf_counter() - t0
    assert (store.kind, len(store)) == ("hnsw", 20_000)
    assert store.client.describe_index(store.collection, "vector")["index_type"] == "HNSW"
    _, exact = FaissStore.build(ids, base, kind="flat", tune=False).search(queries, 10)
    scores, found = store.search(queries, 10)
    recall = recall_at_k(found, exact, 10)
    print(f"milvus lite hnsw: 20000x64 built in {build_s:.1f} s, recall@10 vs exact {recall:.4f} on 200 queries, "
          f"recorded {store.recall_at_10}")
    assert recall >= 0.99 and store.recall_at_10 >= 0.99
    np.testing.assert_allclose(scores[:, 0], np.sum(base[(found[:, 0] - 7) // 3] * queries, axis=1), atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_ivf_flat_when_asked(tmp_path):
    x = clustered(5_100, 32, 2)
    store = MilvusStore.build(np.arange(5_000), x[:5_000], uri=str(tmp_path / "m.db"), kind="ivf_flat")
    info = store.client.describe_index(store.collection, "vector")
    assert (info["index_type"], info["metric_type"]) == ("IVF_FLAT", "COSINE")
    _, exact = FaissStore.build(np.arange(5_000), x[:5_000], kind="flat", tune=False).search(x[5_000:], 10)
    assert recall_at_k(store.search(x[5_000:], 10)[1], exact, 10) >= 0.99
    with pytest.raises(ClipzooError, match="unknown Milvus index kind 'pq'; pass one of flat, hnsw, ivf_flat"):
        MilvusStore.build(np.arange(3), x[:3], uri=str(tmp_path / "m.db"), kind="pq")


def test_deletes_adds_and_a_reopened_store(tmp_path):
    x = clustered(600, 16, 1)
    ids = np.arange(1000, 1500, dtype=np.int64)
    store = MilvusStore.build(ids, x[:500], uri=str(tmp_path / "m.db"))
    assert isinstance(store, VectorStore)
    assert store.kind == "flat" and store.recall_at_10 == 1.0
    gone = ids[:20]
    assert store.remove(gone) == 20 and len(store) == 480
    _, found = store.search(x[:20], 10)
    assert not set(found.ravel().tolist()) & set(gone.tolist())
    store.add(np.arange(5000, 5100), x[500:])
    assert len(store) == 580
    _, top = store.search(x[500:], 1)
    assert top[:, 0].tolist() == list(range(5000, 5100))  # visible to the next search
    pointer = store.save(tmp_path / "vectors" / "all.milvus.json")
    assert json.loads(pointer.read_text())["uri"] == "../m.db"  # relative: the index folder may move
    again = MilvusStore.open(pointer)
    assert len(again) == 580 and again.kind == "flat"
    every = np.concatenate([ids[20:], np.arange(5000, 5100)])
    _, top = again.search(np.concatenate([x[20:500], x[500:]]), 1)
    assert top[:, 0].tolist() == every.tolist()


def test_without_pymilvus_the_store_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pymilvus", None)
    monkeypatch.delitem(sys.modules, "clipzoo.index.stores.milvus")
    with pytest.raises(ClipzooError, match=r"^vector store 'milvus' needs pymilvus, which is not installed; "
                                           r"pip install 'clipzoo\[milvus\]'$"):
        get_store("milvus")


def test_an_unreachable_uri_is_one_line_naming_it(tmp_path):
    with pytest.raises(ClipzooError) as info:
        MilvusStore.build(np.arange(3), np.eye(3, 4, dtype=np.float32), uri="http://127.0.0.1:9")
    msg = str(info.value)
    assert msg.startswith("cannot reach Milvus at 'http://127.0.0.1:9' (") and "\n" not in msg
    assert msg.endswith("start the server, or pass --uri FILE.db for embedded Milvus Lite")
    write_clip_retrieval(tmp_path / "emb", image_features=np.eye(3, 4, dtype=np.float32), image_paths=["a", "b", "c"])
    r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--model", "m",
                                 "--out", str(tmp_path / "ix"), "--store", "milvus", "--uri", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "cannot reach Milvus at 'http://127.0.0.1:9'" in r.output
    r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--model", "m",
                                 "--out", str(tmp_path / "ix2"), "--uri", "x.db"])
    assert r.exit_code == 2 and "--uri is for --store milvus" in r.output


def test_index_built_with_milvus_is_searched_and_served(tmp_path, image_files):
    import clipzoo
    from clipzoo.testing.tiny import write_open_clip_safetensors

    tiny = write_open_clip_safetensors(tmp_path / "tiny.safetensors", embed_config=True)
    model = clipzoo.load(str(tiny), device="cpu")
    img = np.stack([model.encode_image(p, normalize=True).float().numpy().reshape(-1) for p in image_files])
    write_clip_retrieval(tmp_path / "emb", image_features=img, image_paths=image_files, model=str(tiny))
    r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--out",
                                 str(tmp_path / "ix"), "--store", "milvus", "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["total"] == 3
    assert (tmp_path / "ix" / "index.milvus.db").exists()  # Milvus Lite, inside the index folder
    record = json.loads((tmp_path / "ix" / "vectors" / "vectors.json").read_text())
    assert record["vector_store"] == "milvus" and record["all"]["file"].endswith(".milvus.json")
    with open_index(tmp_path / "ix") as idx:
        assert [idx.search_embedding(v, k=1)[0].relpath for v in img] == list(image_files)
    for _ in range(2):  # rebuilds: the collections of older generations are dropped
        r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--out",
                                     str(tmp_path / "ix"), "--store", "milvus", "--no-progress"])
        assert r.exit_code == 0, r.output
    now = json.loads((tmp_path / "ix" / "vectors" / "vectors.json").read_text())
    assert now["generation"] > record["generation"]
    collections = connect(str(tmp_path / "ix" / "index.milvus.db")).list_collections()
    assert now["all"]["collection"] in collections and record["all"]["collection"] not in collections
    assert len(collections) == 2  # this generation's and the one before (its pointer went after the swap)

    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(tmp_path / "ix", model=model)) as client:
        resp = client.post("/search", json={"embedding": img[2].tolist(), "k": 3})
        assert resp.status_code == 200, resp.text
        hits = resp.json()["hits"]
        assert [h["relpath"] for h in hits][0] == image_files[2] and len(hits) == 3
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    pointer = tmp_path / "ix" / "vectors" / now["all"]["file"]
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "uri": "http://127.0.0.1:9"}))
    from clipzoo.index.generations import POINTER
    from clipzoo.index.manifest import file_entry

    published = tmp_path / "ix" / "vectors" / POINTER  # a consistent index (manifest updated) on a server that is gone
    record = json.loads(published.read_text())
    record["files"][pointer.name] = file_entry(pointer)
    published.write_text(json.dumps(record))
    with pytest.raises(ClipzooError) as info:  # the service does not start on a store it cannot reach
        create_app(tmp_path / "ix", model=model)
    assert "cannot reach Milvus at 'http://127.0.0.1:9'" in str(info.value) and "\n" not in str(info.value)
