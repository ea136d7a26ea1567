"""Issue 21 §3: the Milvus vector store on Milvus Lite (one Lite database per module, no server): the same top-10
as FAISS exact search on 20,000 vectors, the index kind chosen by size as for FAISS, deletes, a reopened store,
our partitions as Milvus partitions, the fields (id, vector, partition, path, caption, content hash), a rebuild
synced in place, the service's live writes going to Milvus, and an unreachable URI at start-up."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from _photo_folders import photo_folder, png  # noqa: E402
from clipzoo.cli import app  # noqa: E402
from clipzoo.embed.clip_retrieval import write_clip_retrieval  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index import open_index  # noqa: E402
from clipzoo.index.stores import VectorStore, get_store, recall_at_k  # noqa: E402
from clipzoo.index.stores import milvus as milvus_store  # noqa: E402
from clipzoo.index.stores.faiss import FaissStore  # noqa: E402
from clipzoo.index.stores.milvus import choose_kind, connect  # noqa: E402
from clipzoo.index.stores.milvus_rows import milvus_partition  # noqa: E402

MilvusStore = get_store("milvus")
GONE = "http://127.0.0.1:9"  # nothing listens there


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """One Milvus Lite database shared by the module's tests (each test makes its own collections)."""
    return str(tmp_path_factory.mktemp("milvus") / "shared.db")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import clipzoo
    from clipzoo.testing.tiny import write_open_clip_safetensors

    tiny = write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True)
    return clipzoo.load(str(tiny), device="cpu")


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, d)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(partition_of, caption_of=lambda i: None, sha_of=lambda i: f"{i:064x}"):
    """A ``rows`` callable as EmbeddingStore.items gives it."""
    def rows(ids):
        return {i: {"relpath": f"{partition_of(i) or 'root'}/{i}.png", "caption": caption_of(i), "sha256": sha_of(i),
                    "partition": partition_of(i)} for i in ids}
    return rows


def test_top10_matches_exact_search_on_20000_vectors(lite):
    x = clustered(20_200, 64, 0)
    base, queries = x[:20_000], x[20_000:]
    ids = np.arange(20_000, dtype=np.int64) * 3 + 7  # item ids, not row numbers
    t0 = time.perf_counter()
    store = MilvusStore.build(ids, base, uri=lite)
    build_s = time.perf_counter() - t0
    assert (store.kind, len(store)) == ("hnsw", 20_000)
    info = store.client.describe_index(store.collection, "vector")
    assert (info["index_type"], info["metric_type"]) == ("HNSW", "COSINE")
    _, exact = FaissStore.build(ids, base, kind="flat", tune=False).search(queries, 10)
    scores, found = store.search(queries, 10)
    recall = recall_at_k(found, exact, 10)
    print(f"milvus lite hnsw: 20000x64 built in {build_s:.1f} s, recall@10 vs exact {recall:.4f} on 200 queries, "
          f"recorded {store.recall_at_10}")
    assert recall >= 0.99 and store.recall_at_10 >= 0.99
    np.testing.assert_allclose(scores[:, 0], np.sum(base[(found[:, 0] - 7) // 3] * queries, axis=1), atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_index_kind_chosen_by_size_as_for_faiss(lite):
    assert [choose_kind(n, 512) for n in (9_999, 10_000, 200_000, 200_001)] == ["flat", "hnsw", "hnsw", "ivf_flat"]
    assert choose_kind(300_000, 512, memory_budget=100 << 20) == "ivf_sq8"  # raw vectors (600 MB) over the budget
    x = clustered(10_600, 32, 2)
    store = MilvusStore.build(np.arange(10_500), x[:10_500], uri=lite, memory_budget=1 << 20)
    info = store.client.describe_index(store.collection, "vector")
    assert (store.kind, info["index_type"], info["metric_type"]) == ("ivf_sq8", "IVF_SQ8", "COSINE")
    _, exact = FaissStore.build(np.arange(10_500), x[:10_500], kind="flat", tune=False).search(x[10_500:], 10)
    assert recall_at_k(store.search(x[10_500:], 10)[1], exact, 10) >= 0.95
    store = MilvusStore.build(np.arange(5_000), x[:5_000], uri=lite, kind="ivf_flat")
    assert store.client.describe_index(store.collection, "vector")["index_type"] == "IVF_FLAT"
    _, exact = FaissStore.build(np.arange(5_000), x[:5_000], kind="flat", tune=False).search(x[10_500:], 10)
    assert recall_at_k(store.search(x[10_500:], 10)[1], exact, 10) >= 0.99
    with pytest.raises(ClipzooError, match="unknown Milvus index kind 'pq'; pass one of flat, hnsw, ivf_flat, ivf_sq8"):
        MilvusStore.build(np.arange(3), x[:3], uri=lite, kind="pq")


def test_deletes_adds_and_a_reopened_store(tmp_path):
    x = clustered(600, 16, 1)
    ids = np.arange(1000, 1500, dtype=np.int64)
    uri = str(tmp_path / "m.db")
    store = MilvusStore.build(ids, x[:500], uri=uri)
    assert isinstance(store, VectorStore)
    assert store.kind == "flat" and store.recall_at_10 == 1.0
    gone = ids[:20]
    assert store.remove(gone) == 20 and len(store) == 480
    _, found = store.search(x[:20], 10)
    assert not set(found.ravel().tolist()) & set(gone.tolist())  # deletes honoured
    store.add(np.arange(5000, 5100), x[500:])
    assert len(store) == 580
    _, top = store.search(x[500:], 1)
    assert top[:, 0].tolist() == list(range(5000, 5100))  # visible to the next search
    pointer = store.save(tmp_path / "vectors" / "all.milvus.json")
    assert json.loads(pointer.read_text())["uri"] == "../m.db"  # relative: the index folder may move
    milvus_store._CLIENTS.pop(str(tmp_path / "m.db")).close()  # a new connection, as a new process has
    again = MilvusStore.open(pointer)
    assert again.client is not store.client
    assert len(again) == 580 and again.kind == "flat"
    every = np.concatenate([ids[20:], np.arange(5000, 5100)])
    _, top = again.search(np.concatenate([x[20:500], x[500:]]), 1)
    assert top[:, 0].tolist() == every.tolist()  # every row, and no deleted one


def test_partitions_are_milvus_partitions_and_rows_keep_their_fields(lite, tmp_path):
    x = clustered(900, 16, 3)
    ids = np.arange(900, dtype=np.int64) + 1
    part = {1: "cats", 2: "dogs", 0: None}
    store = MilvusStore.build(ids, x, uri=lite, rows=records(lambda i: part[i % 3],
                                                             lambda i: f'a "quoted" caption {i}' if i % 2 else None))
    assert set(store.client.list_partitions(store.collection)) == {"_default", milvus_partition("cats"),
                                                                   milvus_partition("dogs")}
    row = store.client.query(store.collection, filter="id == 4", output_fields=["*"])[0]
    assert {k: row[k] for k in ("id", "partition", "path", "caption", "sha256")} == {
        "id": 4, "partition": "cats", "path": "cats/4.png", "caption": None, "sha256": f"{4:064x}"}
    assert store.client.query(store.collection, filter="id == 5", output_fields=["caption"])[0]["caption"] == \
        'a "quoted" caption 5'
    schema = {f["name"]: f["type"] for f in store.client.describe_collection(store.collection)["fields"]}
    assert list(schema) == ["id", "vector", "partition", "path", "caption", "sha256"]
    pointer = store.save(tmp_path / "all.milvus.json")
    dogs = store.partition_store("dogs")
    assert len(dogs) == 300 and dogs.describe()["partition"] == "dogs"
    _, found = dogs.search(x[:30], 10)  # queries from every partition: hits from dogs only
    assert set(found.ravel().tolist()) <= {int(i) for i in ids if i % 3 == 2}
    exact = FaissStore.build(ids[ids % 3 == 2], x[ids % 3 == 2], kind="flat", tune=False).search(x[:30], 10)[1]
    assert recall_at_k(found, exact, 10) == 1.0
    view = MilvusStore.open(dogs.save(tmp_path / "part1.milvus.json"))
    assert (view.partition, len(view), view.collection) == ("dogs", 300, store.collection)
    assert np.array_equal(view.search(x[:30], 10)[1], found)
    assert len(MilvusStore.open(pointer)) == 900


def test_partitions_beyond_the_milvus_cap_are_searched_by_filter(lite, monkeypatch):
    monkeypatch.setattr(milvus_store, "MAX_MILVUS_PARTITIONS", 1)
    x = clustered(300, 16, 4)
    ids = np.arange(300, dtype=np.int64)
    names = ["a", 'b "odd" / name', "c"]
    store = MilvusStore.build(ids, x, uri=lite, rows=records(lambda i: names[i % 3]))
    assert store.mode == "filter" and store.client.list_partitions(store.collection) == ["_default"]
    odd = store.partition_store(names[1])
    assert len(odd) == 100
    _, found = odd.search(x[:12], 5)
    assert set(found.ravel().tolist()) <= set(range(1, 300, 3)) and found[1, 0] == 1


def test_a_rebuild_syncs_the_collection_in_place(lite, tmp_path):
    x = clustered(1_300, 16, 5)
    ids = np.arange(1_000, dtype=np.int64)
    first = MilvusStore.build(ids, x[:1_000], uri=lite, rows=records(lambda i: "ab"[i % 2]))
    pointer = first.save(tmp_path / "all-g1.milvus.json")
    # 100 rows gone, 1 changed (new content hash and vector), 300 new
    new_ids = np.concatenate([ids[100:], np.arange(5_000, 5_300)])
    new_x = np.concatenate([x[100:1_000], x[1_000:]])
    new_x[500] = x[0]  # item 600 now looks like item 0 did
    sha = {600: "f" * 64}
    second = MilvusStore.build(new_ids, new_x, previous=pointer,
                               rows=records(lambda i: "ab"[i % 2], sha_of=lambda i: sha.get(i, f"{i:064x}")))
    assert second.collection == first.collection and second.uri == first.uri  # the URI came from the pointer
    assert second.synced == {"written": 301, "deleted": 100} and len(second) == 1_200
    _, top = second.search(np.concatenate([x[:1], x[1_000:1_010]]), 1)
    assert top[:, 0].tolist() == [600, *range(5_000, 5_010)]
    _, found = second.search(x[:100], 10)
    assert not set(found.ravel().tolist()) & set(range(100))
    assert second.partition_store("b").search(x[1_001:1_002], 1)[1][0, 0] == 5_001
    third = MilvusStore.build(new_ids, new_x, previous=pointer, kind="hnsw", rows=records(lambda i: "ab"[i % 2]))
    assert third.collection != first.collection and third.synced is None  # another kind: a new collection


def test_without_pymilvus_the_store_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pymilvus", None)
    monkeypatch.delitem(sys.modules, "clipzoo.index.stores.milvus")
    with pytest.raises(ClipzooError, match=r"^vector store 'milvus' needs pymilvus, which is not installed; "
                                           r"pip install 'clipzoo\[milvus\]'$"):
        get_store("milvus")


def test_an_unreachable_uri_is_one_line_naming_it(tmp_path, image_files):
    with pytest.raises(ClipzooError) as info:
        MilvusStore.build(np.arange(3), np.eye(3, 4, dtype=np.float32), uri=GONE)
    msg = str(info.value)
    assert msg.startswith(f"cannot reach Milvus at '{GONE}' (") and "\n" not in msg
    assert msg.endswith("start the server, or pass --uri FILE.db for embedded Milvus Lite")
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in image_files:
        (folder / Path(p).name).write_bytes(Path(p).read_bytes())
    t0 = time.perf_counter()  # at start-up: before the model loads or any image is read
    r = CliRunner().invoke(app, ["index", "build", str(folder), "--model", "no-such-model", "--out",
                                 str(tmp_path / "ix0"), "--store", "milvus", "--uri", GONE, "--no-progress"])
    assert r.exit_code == 2 and f"cannot reach Milvus at '{GONE}'" in r.output and "no-such-model" not in r.output
    assert not (tmp_path / "ix0").exists() and time.perf_counter() - t0 < 15
    write_clip_retrieval(tmp_path / "emb", image_features=np.eye(3, 4, dtype=np.float32), image_paths=["a", "b", "c"])
    r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--model", "m",
                                 "--out", str(tmp_path / "ix"), "--store", "milvus", "--uri", GONE])
    assert r.exit_code == 2 and f"cannot reach Milvus at '{GONE}'" in r.output
    r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--model", "m",
                                 "--out", str(tmp_path / "ix2"), "--uri", "x.db"])
    assert r.exit_code == 2 and "--uri is for --store milvus" in r.output
    r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--model", "m",
                                 "--out", str(tmp_path / "ix3"), "--store", "milvus", "--uri", str(tmp_path / "x")])
    assert r.exit_code == 2 and "must be a .db file; pass --uri FILE.db" in r.output


def test_index_built_with_milvus_is_searched_and_served(tmp_path, image_files, tiny_model):
    model = tiny_model
    img = np.stack([model.encode_image(p, normalize=True).float().numpy().reshape(-1) for p in image_files])
    spec = str(model.card.source.path)
    write_clip_retrieval(tmp_path / "emb", image_features=img, image_paths=image_files, model=spec)
    r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--out",
                                 str(tmp_path / "ix"), "--store", "milvus", "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["total"] == 3
    assert (tmp_path / "ix" / "index.milvus.db").exists()  # Milvus Lite, inside the index folder
    record = json.loads((tmp_path / "ix" / "vectors" / "vectors.json").read_text())
    assert record["vector_store"] == "milvus" and record["all"]["file"].endswith(".milvus.json")
    with open_index(tmp_path / "ix") as idx:
        assert [idx.search_embedding(v, k=1)[0].path for v in img] == list(image_files)
    write_clip_retrieval(tmp_path / "emb", image_features=img[[0, 2, 1]], image_paths=image_files,
                         model=spec)  # new vectors for two of the paths
    r = CliRunner().invoke(app, ["index", "build", "--from-embeddings", str(tmp_path / "emb"), "--out",
                                 str(tmp_path / "ix"), "--no-progress"])  # a rerun keeps the index's store
    assert r.exit_code == 0, r.output
    now = json.loads((tmp_path / "ix" / "vectors" / "vectors.json").read_text())
    assert now["vector_store"] == "milvus"
    assert now["generation"] > record["generation"] and now["all"]["synced"] == {"written": 2, "deleted": 0}
    assert now["all"]["collection"] == record["all"]["collection"]  # synced in place, not rebuilt
    assert connect(str(tmp_path / "ix" / "index.milvus.db")).list_collections() == [now["all"]["collection"]]
    with open_index(tmp_path / "ix") as idx:  # the vectors the rebuild read
        assert [idx.search_embedding(v, k=1)[0].path for v in img] == [image_files[i] for i in (0, 2, 1)]

    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(tmp_path / "ix", model=model)) as client:
        resp = client.post("/search", json={"embedding": img[2].tolist(), "k": 3})
        assert resp.status_code == 200, resp.text
        hits = resp.json()["hits"]
        assert hits[0]["relpath"] == Path(image_files[1]).name and len(hits) == 3  # never the server's path
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    pointer = tmp_path / "ix" / "vectors" / now["all"]["file"]
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "uri": GONE}))
    from clipzoo.index.generations import POINTER
    from clipzoo.index.manifest import file_entry

    published = tmp_path / "ix" / "vectors" / POINTER  # a consistent index (manifest updated) on a server that is gone
    record = json.loads(published.read_text())
    record["files"][pointer.name] = file_entry(pointer)
    published.write_text(json.dumps(record))
    with pytest.raises(ClipzooError) as info:  # the service does not start on a store it cannot reach
        create_app(tmp_path / "ix", model=model)
    assert f"cannot reach Milvus at '{GONE}'" in str(info.value) and "\n" not in str(info.value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = CliRunner().invoke(app, ["serve", str(tmp_path / "ix"), "--model", spec, "--port", str(port)])
    assert r.exit_code == 2 and f"cannot reach Milvus at '{GONE}'" in r.output, r.output


def test_live_writes_go_to_milvus_and_are_visible_to_the_next_search(tmp_path, lite, tiny_model):
    from fastapi.testclient import TestClient

    from clipzoo.index import build_index
    from clipzoo.index.generations import read_pointer
    from clipzoo.index.repair import repair_index
    from clipzoo.serve import create_app

    root = photo_folder(tmp_path / "photos", 12)
    out = tmp_path / "ix"
    build_index(root, out, model=tiny_model, workers=0, vector_options={"vector_store": "milvus", "uri": lite})
    first = read_pointer(out)
    assert sorted(first["partitions"]) == ["a", "b"] and first["partitions"]["a"]["partition"] == "a"
    collection = first["all"]["collection"]
    assert {p["collection"] for p in first["partitions"].values()} == {collection}  # one collection, 2 partitions
    client = connect(lite)
    assert set(client.list_partitions(collection)) >= {milvus_partition("a"), milvus_partition("b")}
    auth = {"Authorization": "Bearer t0ken"}
    data = png(999)
    with TestClient(create_app(out, model=tiny_model, token="t0ken")) as http:
        added = http.post("/items", files={"image": ("new.png", data, "image/png")}, data={"caption": "new one"},
                          headers=auth)
        assert added.status_code == 200, added.text
        new_id = added.json()["id"]
        row = client.query(collection, filter=f"id == {new_id}", output_fields=["partition", "path", "caption",
                                                                                   "sha256"])[0]
        import hashlib

        assert (row["partition"], row["caption"], row["sha256"]) == ("uploads", "new one",
                                                                      hashlib.sha256(data).hexdigest())
        hits = http.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": "3"}, headers=auth).json()
        assert hits["hits"][0]["id"] == new_id and hits["generation"] == added.json()["generation"]
        in_uploads = http.post("/search", files={"image": ("q.png", png(0), "image/png")},
                               data={"k": "5", "partition": "uploads"}, headers=auth).json()["hits"]
        assert [h["id"] for h in in_uploads] == [new_id]  # a Milvus partition of its own
        now = read_pointer(out)
        assert now["all"]["collection"] == collection and now["all"]["synced"] == {"written": 1, "deleted": 0}
        victim = http.post("/search", files={"image": ("q.png", png(3), "image/png")}, data={"k": "1"},
                           headers=auth).json()["hits"][0]
        assert victim["relpath"] == "b/003.png"
        assert http.delete(f"/items/{victim['id']}", headers=auth).status_code == 200
        hits = http.post("/search", files={"image": ("q.png", png(3), "image/png")}, data={"k": "20"},
                         headers=auth).json()["hits"]
        assert victim["id"] not in [h["id"] for h in hits] and len(hits) == 12
        assert read_pointer(out)["all"]["synced"] == {"written": 0, "deleted": 1}
        assert client.query(collection, filter=f"id == {victim['id']}", output_fields=["id"]) == []
    assert not (out / "index.milvus.db").exists()  # the writes went to the index's own Milvus (--uri)
    with open_index(out) as idx:  # reopened: every row
        assert len(idx.search_embedding(idx.embedding(new_id), k=50)) == 12 == idx.count
    lost = [int(h["id"]) for h in client.query(collection, filter="id >= 0", output_fields=["id"], limit=3)]
    client.delete(collection, ids=lost)  # rows lost in Milvus: the index no longer opens, and a repair restores them
    with pytest.raises(ClipzooError, match="holds 9 vectors, the manifest says 12; run `clipzoo index repair"):
        open_index(out)
    repair_index(out)
    assert read_pointer(out)["all"]["synced"] == {"written": 3, "deleted": 0}
    with open_index(out) as idx:
        assert idx.search_embedding(idx.embedding(lost[0]), k=1)[0].id == lost[0]
