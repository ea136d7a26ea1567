"""The embedding store: shards + SQLite, replacement, orphans, compaction, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from clipzoo.errors import ClipzooError, NotFoundError
from clipzoo.index.embedding_store import EmbeddingStore, ItemRow


def rows(names, size=10):
    return [ItemRow(n, size, 1_000 + i, f"sha-{n}-{size}", f"caption {n}", n.split("/")[0] if "/" in n else None)
            for i, n in enumerate(names)]


def vecs(n, d=4, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_add_read_replace_remove(tmp_path):
    s = EmbeddingStore(tmp_path / "ix", create=True)
    a = vecs(3)
    ids = s.add(rows(["cat/a.png", "dog/b.png", "c.png"]), a)
    assert s.count() == 3 and s.dim == 4 and s.generation == 1
    np.testing.assert_array_equal(s.vectors(ids), a)
    assert s.partitions() == ["cat", "dog"]
    item = s.item(ids[0])
    assert item["relpath"] == "cat/a.png" and item["caption"] == "caption cat/a.png" and item["partition"] == "cat"
    # a changed file keeps its id and gets its new vector
    b = vecs(1, seed=1)
    assert s.add(rows(["dog/b.png"], size=99), b) == [ids[1]]
    np.testing.assert_array_equal(s.vectors([ids[1]])[0], b[0])
    assert s.item(ids[1])["size"] == 99 and s.count() == 3
    all_ids, x = s.all_vectors()
    assert list(all_ids) == ids and x.shape == (3, 4)
    assert list(s.all_vectors("dog")[0]) == [ids[1]]
    assert s.remove(["c.png"]) == 1 and s.count() == 2
    with pytest.raises(NotFoundError, match=f"no item with id {ids[2]} in index"):
        s.item(ids[2])
    with pytest.raises(ClipzooError, match="holds 4-dim embeddings, got 5"):
        s.add(rows(["e.png"]), vecs(1, d=5))
    # ids are never reused
    assert s.add(rows(["c.png"]), vecs(1))[0] > ids[2]
    s.close()


def test_orphan_shards_and_partial_files_are_deleted(tmp_path):
    s = EmbeddingStore(tmp_path / "ix", create=True)
    s.add(rows(["a.png", "b.png"]), vecs(2))
    live = set(p.name for p in s.shard_dir.iterdir())
    np.save(s.shard_dir / "00000000000000000001-deadbeef.npy", vecs(2))  # written, rows never committed
    (s.shard_dir / "x.npy.123.part").write_bytes(b"half")                 # killed inside atomic_write
    s.add(rows(["a.png", "b.png"], size=11), vecs(2, seed=3))              # replaces every row: old shard dead
    assert s.cleanup() == 3
    remaining = set(p.name for p in s.shard_dir.iterdir())
    assert len(remaining) == 1 and not (remaining & live)
    np.testing.assert_array_equal(s.all_vectors()[1], vecs(2, seed=3))


def test_compaction_keeps_every_vector(tmp_path):
    s = EmbeddingStore(tmp_path / "ix", create=True)
    names = [f"f{i}.png" for i in range(20)]
    for i in range(0, 20, 2):  # ten two-row shards
        s.add(rows(names[i:i + 2]), vecs(2, seed=i))
    s.add(rows(names[::2], size=5), vecs(10, seed=99))  # one row of each old shard is now dead
    before_ids, before = s.all_vectors()
    gen = s.generation
    assert s.compact(min_dead_fraction=0.5) is False  # 10 dead of 30 stored rows
    assert s.compact(min_dead_fraction=0.3) is True
    after_ids, after = s.all_vectors()
    np.testing.assert_array_equal(after_ids, before_ids)
    np.testing.assert_array_equal(after, before)
    assert len(list(s.shard_dir.iterdir())) == 1
    assert s.generation == gen  # the vectors did not change: no FAISS rebuild needed
    assert s.compact(min_dead_fraction=0.3) is False


def test_model_is_recorded_and_another_refused(tmp_path):
    s = EmbeddingStore(tmp_path / "ix", create=True)
    s.check_model("/models/a.pt", "[clip - local - /models/a.pt]", 4)
    s.check_model("/models/a.pt", "[clip - local - /models/a.pt]", 4)
    with pytest.raises(ClipzooError, match=r"was built with model '/models/a.pt', not '/models/b.pt'; embeddings "
                                           r"of different models cannot be mixed: pass a new --out"):
        s.check_model("/models/b.pt", "[clip - local - /models/b.pt]")
    with pytest.raises(ClipzooError, match="holds 4-dim embeddings but the model gives 8; pass a new --out"):
        s.check_model("/models/a.pt", "[clip - local - /models/a.pt]", 8)


def test_missing_and_corrupt_databases_name_the_file_and_fix(tmp_path):
    with pytest.raises(ClipzooError, match=r"index '.*nope' does not exist; build it with `clipzoo index build"):
        EmbeddingStore(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipzooError,
                       match=r"index file '.*index.sqlite' is missing; rebuild it with `clipzoo index build"):
        EmbeddingStore(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ClipzooError,
                       match=r"index file '.*bad/index.sqlite' is corrupt or not an index .*clipzoo index build"):
        EmbeddingStore(bad)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ClipzooError, match="is a non-empty folder that holds no index"):
        EmbeddingStore(other, create=True)
