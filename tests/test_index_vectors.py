"""The FAISS factory: choice by size and memory, tuning, recall against exact search, save/load."""
from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index.stores import faiss as V  # noqa: E402


def clustered(n: int, d: int, centres: int = 50, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Normalised vectors around random centres (as real embeddings cluster)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return V.normalize(x)


def test_choice_follows_size_and_memory_budget():
    big = 1 << 40
    assert V.choose_index(9_999, 512, big) == ("flat", "Flat")
    assert V.choose_index(50_000, 512, big) == ("hnsw", "HNSW32")
    assert V.choose_index(1_000_000, 512, big) == ("ivf_flat", "IVF4000,Flat")  # nlist = 4·√n
    assert V.choose_index(100_000, 512, big)[0] == "hnsw"
    # HNSW no longer fits, raw vectors still do -> IVF-Flat; nothing raw fits -> OPQ+IVF+PQ
    hnsw_bytes = V.estimate_memory("hnsw", 100_000, 512)
    assert V.choose_index(100_000, 512, hnsw_bytes - 1) == ("ivf_flat", "IVF1265,Flat")
    assert V.choose_index(1_000_000, 512, 1 << 30) == ("opq_ivf_pq", "OPQ64_256,IVF4000,PQ64")
    assert V.nlist_for(100) == 2  # never more cells than n/39
    with pytest.raises(ClipzooError, match="unknown index kind 'lsh'"):
        V.key_for("lsh", 10, 8)


def test_flat_is_exact_cosine():
    x = clustered(3000, 32)
    ids = np.arange(100, 3100)
    vi = V.build_vectors(ids, x * 3.0)  # not normalised: the index normalises
    assert vi.kind == "flat" and vi.recall_at_10 == 1.0
    q = clustered(5, 32, seed=1)
    scores, found = vi.search(q, 10)
    exact_scores, rows = V.exact_knn(x, q, 10)
    np.testing.assert_array_equal(found, ids[rows])
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    np.testing.assert_allclose(scores[:, 0], (x[rows[:, 0]] * q).sum(1), atol=1e-5)  # cosine


@pytest.mark.parametrize("kind", ["ivf_flat", "hnsw"])
def test_tuned_index_reports_recall_that_holds_on_fresh_queries(kind):
    n, d = 20_000, 32
    both = clustered(n + 200, d)
    x, q = both[:n], both[n:]  # held-out queries from the same distribution
    ids = np.arange(n) * 7 + 1
    vi = V.build_vectors(ids, x, kind=kind, latency_target_ms=5.0)
    assert vi.kind == kind
    assert ("nprobe" if kind == "ivf_flat" else "efSearch") in vi.params
    assert vi.recall_at_10 is not None and vi.recall_at_10 >= 0.9
    # an independent check: new queries from the same distribution, recall@10 vs exact search
    _, found = vi.search(q, 10)
    _, rows = V.exact_knn(x, q, 10)
    measured = V.recall_at_k(found, ids[rows], 10)
    assert measured >= 0.9
    assert abs(measured - vi.recall_at_10) < 0.08


def test_opq_ivf_pq_builds_compressed_and_reports_recall():
    n, d = 3_000, 16
    x = clustered(n, d)
    vi = V.build_vectors(np.arange(n), x, kind="opq_ivf_pq")
    assert vi.key == "OPQ2_8,IVF76,PQ2"
    assert 0.0 < vi.recall_at_10 <= 1.0
    _, found = vi.search(x[:3], 1)
    assert found.shape == (3, 1)


def test_save_and_mmap_load_give_the_same_results(tmp_path):
    n, d = 15_000, 16
    both = clustered(n + 20, d)
    x, q = both[:n], both[n:]
    vi = V.build_vectors(np.arange(n), x, kind="ivf_flat")
    path = vi.save(tmp_path / "v.faiss")
    assert not list(tmp_path.glob("*.part"))
    loaded = V.load_vectors(path, vi.describe(), mmap=True)
    assert loaded.params == vi.params
    assert faiss.extract_index_ivf(loaded.index).nprobe == vi.params["nprobe"]
    np.testing.assert_array_equal(loaded.search(q, 5)[1], vi.search(q, 5)[1])
    with pytest.raises(ClipzooError, match="holds 15000 vectors of 16 dims, its record says 3 of 16"):
        V.load_vectors(path, {**vi.describe(), "count": 3})


def test_query_dims_and_fewer_than_k():
    vi = V.build_vectors(np.arange(3), clustered(3, 8))
    scores, ids = vi.search(clustered(1, 8, seed=2), 10)
    assert sorted(i for i in ids[0] if i >= 0) == [0, 1, 2]
    with pytest.raises(ClipzooError, match="a query of 4 dims cannot search an index of 8-dim vectors"):
        vi.search(np.ones(4), 1)
    empty = V.build_vectors(np.zeros(0, np.int64), np.zeros((0, 8), np.float32))
    assert empty.kind == "flat" and empty.search(np.ones(8), 3)[1].shape == (1, 0)


# ------------------------------------------------------------------ the VectorStore protocol
def test_faiss_store_is_the_default_vector_store():
    from clipzoo.index.stores import DEFAULT_STORE, STORES, VectorStore, get_store

    assert DEFAULT_STORE == "faiss" and "faiss" in STORES
    assert get_store() is get_store("faiss") is V.FaissStore
    vi = V.build_vectors(np.arange(3), clustered(3, 8))
    assert isinstance(vi, VectorStore) and len(vi) == 3
    with pytest.raises(ClipzooError, match="unknown vector store 'annoy'; known stores: faiss"):
        get_store("annoy")


@pytest.mark.parametrize("kind, params", [("flat", {}), ("hnsw", {"efSearch": 40}), ("ivf_flat", {"nprobe": 3}),
                                          ("opq_ivf_pq", {"nprobe": 2})])
def test_open_without_record_reads_kind_key_and_params(tmp_path, kind, params):
    x = clustered(1_000, 16)
    vi = V.build_vectors(np.arange(1_000), x, kind=kind, tune=False)
    vi.params = params
    vi.apply_params()
    loaded = V.FaissStore.open(vi.save(tmp_path / "v.faiss"), mmap=False)
    assert (loaded.kind, loaded.key, len(loaded), loaded.dim) == (kind, vi.key, 1_000, 16)
    assert loaded.params == params or (kind == "hnsw" and loaded.params["efSearch"] == 40)
    assert loaded.recall_at_10 is None
    np.testing.assert_array_equal(loaded.search(x[:4], 3)[1], vi.search(x[:4], 3)[1])


def test_add_and_remove(tmp_path):
    x = clustered(200, 8)
    vi = V.build_vectors(np.arange(100), x[:100])
    vi.add(np.arange(1000, 1100), x[100:] * 2.0)  # normalised on the way in
    assert len(vi) == 200
    assert vi.search(x[150], 1)[1][0, 0] == 1050
    assert vi.remove([1050, 1051, 5]) == 3 and len(vi) == 197
    assert 1050 not in vi.search(x[150], 5)[1][0]
    with pytest.raises(ClipzooError, match="vectors of 4 dims cannot be added to an index of 8-dim vectors"):
        vi.add([7], np.ones((1, 4)))
    mapped = V.load_vectors(vi.save(tmp_path / "v.faiss"), vi.describe(), mmap=True)
    if mapped.read_only:  # FAISS aborts the process on a change to a memory-mapped index: refused first
        with pytest.raises(ClipzooError, match="opened memory-mapped \\(read-only\\); open it with mmap=False"):
            mapped.remove([1])
    hnsw = V.build_vectors(np.arange(100), x[:100], kind="hnsw", tune=False)
    with pytest.raises(ClipzooError, match="an HNSW index cannot remove vectors"):
        hnsw.remove([1])


def test_missing_faiss_names_the_extra(monkeypatch):
    import sys

    from clipzoo.index.stores.faiss_kinds import import_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ClipzooError, match=r"the vector index needs faiss-cpu, which is not installed; "
                                           r"pip install 'clipzoo\[search\]'"):
        import_faiss()


def test_vector_files_go_through_the_store_table(tmp_path, monkeypatch):
    """The vectors/ folder is built and opened through the STORES table; only a non-default store is named
    in vectors.json (so FAISS indexes keep their format)."""
    from clipzoo.index import stores
    from clipzoo.index.embedding_store import EmbeddingStore, ItemRow
    from clipzoo.index.vector_files import open_part, read_record, refresh_vectors

    x = clustered(6, 8)
    with EmbeddingStore(tmp_path / "ix", create=True) as store:
        store.add([ItemRow(f"{p}/{i}.png", 1, 1, "sha", None, p) for i, p in enumerate("aabbcc")], x)
        record = refresh_vectors(store)
        assert "vector_store" not in record and record["all"]["kind"] == "flat"
        assert sorted(record["partitions"]) == list("abc")
        monkeypatch.setitem(stores.STORES, "other", stores.STORES["faiss"])
        record = refresh_vectors(store, force=True, vector_store="other")
        assert record["vector_store"] == "other" and read_record(store) == record
        part = open_part(store, record, record["partitions"]["b"])
        assert len(part) == 2 and {int(i) for i in part.search(x[2], 5)[1][0] if i >= 0} == {3, 4}
