"""Issue 21 §4: ``clipzoo index build-vectors`` — an index from precomputed vectors inside a memory budget
(IVF-Flat / IVF-PQ chosen as autofaiss does), filled chunk by chunk from disk, served memory-mapped."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

faiss = pytest.importorskip("faiss")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

from clipzoo.cli import app  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.index import open_index  # noqa: E402
from clipzoo.index.stores import get_store  # noqa: E402
from clipzoo.index.stores.faiss_ondisk import plan_index  # noqa: E402
from clipzoo.index.vector_source import parse_memory  # noqa: E402

N, D, QUERIES = 100_000, 512, 200
BUDGET = "40MB"
SRC = Path(__file__).resolve().parents[1] / "src"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def clustered(n: int, d: int, seed: int, centres: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


CHILD = """
import json, sys
import faiss, pyarrow.parquet
from clipzoo.index.build_vectors import build_vectors_index
def rss(key):  # not ru_maxrss: Linux keeps the forking parent's (pytest's) peak across exec
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = rss("VmRSS:")
r = build_vectors_index(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({"base": base, "peak": rss("VmHWM:"), **r.to_dict()}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """100k float16 vectors in clip-retrieval's layout (two shards + metadata), indexed in a child process."""
    base = tmp_path_factory.mktemp("bv")
    x = clustered(N, D, 0)
    (base / "emb" / "img_emb").mkdir(parents=True)
    (base / "emb" / "metadata").mkdir()
    half = N // 2
    for i, part in enumerate((x[:half], x[half:])):
        np.save(base / "emb" / "img_emb" / f"img_emb_{i}.npy", part.astype(np.float16))
        names = [f"photos/{i * half + j}.jpg" for j in range(len(part))]
        pq.write_table(pa.table({"image_path": names, "caption": [f"c{i * half + j}" for j in range(len(part))]}),
                       base / "emb" / "metadata" / f"metadata_{i}.parquet")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(base / "emb"), str(base / "ix"), BUDGET],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return base, x, report


def test_issue21_4_budget_picks_a_compressed_kind_and_memory_stays_bounded(built):
    _, x, report = built
    raw = N * D * 4  # the vectors as float32: 205 MB (the libraries' own memory, imported before `base`, aside)
    assert report["index_kind"] == "ivf_pq" and report["key"] == "IVF256,PQ128"
    assert report["index_bytes"] <= parse_memory(BUDGET) // 2
    grown = report["peak"] - report["base"]
    assert grown < raw // 2, f"the build grew by {grown / 2**20:.0f} MB for {raw / 2**20:.0f} MB of vectors"
    # the budget plus a fixed allowance for the libraries' working memory (pyarrow's parquet reader alone: ~28 MB);
    # the issue's own bound is the budget + 1 GB
    assert grown < parse_memory(BUDGET) + (64 << 20)


def test_issue21_4_inverted_lists_are_memory_mapped_from_disk(built):
    base, _, _ = built
    record = json.loads((base / "ix" / "vectors" / "vectors.json").read_text())
    assert record["vector_store"] == "faiss_ondisk"
    path = base / "ix" / "vectors" / record["all"]["file"]
    store = get_store("faiss_ondisk").open(path, record["all"])
    assert store.read_only
    invlists = faiss.extract_index_ivf(store.index).invlists
    assert type(faiss.downcast_InvertedLists(invlists)).__name__ == "OnDiskInvertedLists"
    assert store.layout[1:] == ((N, D), np.dtype(np.float16))  # re-scored from the float16 file, row by row


def test_issue21_4_recall_at_10_vs_exact_on_held_out_queries(built):
    base, x, report = built
    q = clustered(QUERIES, D, 1)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10] + 1  # ids are row numbers + 1
    with open_index(base / "ix") as idx:
        found = [[h.id for h in idx.search_embedding(v, k=10)] for v in q]
        hit = idx.search_embedding(x[123], k=1)[0]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth.tolist())])
    assert recall >= 0.9, recall
    assert report["recall_at_10"] >= 0.9
    assert (hit.id, hit.relpath, hit.caption) == (124, "photos/123.jpg", "c123")
    assert hit.score == pytest.approx(1.0, abs=2e-3)


def test_issue21_4_plan_follows_autofaiss(tmp_path):
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    big = plan_index(N, D, parse_memory("4GB"))
    assert big.key == get_optimal_index_keys_v2(N, D, "4G", should_be_memory_mappable=True)[0] == "IVF1024,Flat"
    ten_m = plan_index(10_000_000, D, parse_memory("4GB"))
    assert (ten_m.kind, ten_m.pq, ten_m.nlist) == ("ivf_pq", 128, 16384)  # 256-byte codes would not fit 2 GB
    roomier = plan_index(10_000_000, D, parse_memory("8GB"))
    assert ten_m.index_bytes <= 2 << 30 < roomier.index_bytes
    assert roomier.pq == 256  # the top of autofaiss's list
    odd = plan_index(3_000_000, 100, parse_memory("1GB"))  # without OPQ's rotation a code size divides d
    assert odd.pq == 4
    faiss.index_factory(100, odd.key, faiss.METRIC_INNER_PRODUCT)
    with pytest.raises(ClipzooError, match=r"^--max-memory 1,048,576 bytes is too small to train a compressed index"):
        plan_index(N, D, parse_memory("1MB"))


def test_issue21_4_rescoring_reads_rows_exactly_announcing_them_first(tmp_path, monkeypatch):
    from clipzoo.index import vector_source

    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float16)
    np.save(tmp_path / "v.npy", x)
    offset, _, _ = vector_source.npy_layout(tmp_path / "v.npy")
    calls = []
    real_pread = os.pread
    monkeypatch.setattr(vector_source.os, "posix_fadvise", lambda fd, start, n, how: calls.append((start, n, how)),
                        raising=False)
    monkeypatch.setattr(vector_source.os, "pread",
                        lambda fd, n, at: calls.append(("read", at)) or real_pread(fd, n, at))
    rows = np.array([3, 17, 18, 49])
    assert np.array_equal(vector_source.read_rows(tmp_path / "v.npy", rows), x[rows])
    starts = [offset + r * 32 for r in rows]  # 16 float16 values a row
    assert calls == [(s, 32, os.POSIX_FADV_WILLNEED) for s in starts] + [("read", s) for s in starts]
    monkeypatch.delattr(vector_source.os, "posix_fadvise")  # where the hint does not exist, the rows still come
    assert np.array_equal(vector_source.read_rows(tmp_path / "v.npy", rows), x[rows])


@pytest.mark.parametrize("bad", ["4XB", "lots", "-1GB", "0GB", "4 GB GB"])
def test_issue21_4_bad_budget_strings_fail_in_one_line(tmp_path, bad):
    np.save(tmp_path / "v.npy", np.ones((4, 8), np.float32))
    r = run("index", "build-vectors", tmp_path / "v.npy", "--out", tmp_path / "ix", "--max-memory", bad)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --max-memory '{bad}'"), r.output
    assert "e.g. 4GB" in lines[0]
    assert parse_memory("4GB") == 4 << 30 and parse_memory("512MB") == 512 << 20 and parse_memory("1.5G") == 3 << 29


def test_issue21_4_non_finite_vectors_fail_in_one_line_naming_the_row(tmp_path):
    x = clustered(3000, 16, 3)
    x[2500, 3] = np.inf
    np.save(tmp_path / "bad.npy", x.astype(np.float16))
    r = run("index", "build-vectors", tmp_path / "bad.npy", "--out", tmp_path / "ix", "--no-progress")
    assert r.exit_code == 2 and r.output.strip() == (
        f"error: vectors file {str(tmp_path / 'bad.npy')!r} holds a non-finite value (NaN or Inf) in row 2500; "
        "remove or re-embed those rows"), r.output


def test_out_holding_a_users_files_is_refused_and_a_failed_build_leaves_no_folder(tmp_path):
    """build-vectors removes the files in OUT/vectors/ that no generation names: a user's files there went."""
    np.save(tmp_path / "v.npy", clustered(3000, 16, 3).astype(np.float16))
    mine = tmp_path / "u" / "vectors" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    r = run("index", "build-vectors", tmp_path / "v.npy", "--out", tmp_path / "u", "--no-progress")
    assert r.exit_code == 2 and r.output.strip() == (
        f"error: {str(tmp_path / 'u')!r} is a non-empty folder that holds no index; pass a new or empty folder "
        "for --out"), r.output
    assert mine.read_text() == "mine"
    (tmp_path / "empty" / "vectors").mkdir(parents=True)  # empty: taken; and a previous build: built again
    for _ in range(2):
        r = run("index", "build-vectors", tmp_path / "v.npy", "--out", tmp_path / "empty", "--no-progress")
        assert r.exit_code == 0, r.output
    x = clustered(3000, 16, 3)
    x[10, 0] = np.nan
    np.save(tmp_path / "bad.npy", x.astype(np.float16))
    r = run("index", "build-vectors", tmp_path / "bad.npy", "--out", tmp_path / "new", "--no-progress")
    assert r.exit_code == 2 and "non-finite" in r.output
    assert not (tmp_path / "new").exists()  # was left behind, empty: then taken for a broken index


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_issue21_4_corrupted_lists_file_fails_in_one_line(built, tmp_path, damage):
    base, _, _ = built
    ix = tmp_path / "ix"
    shutil.copytree(base / "ix", ix)
    record = json.loads((ix / "vectors" / "vectors.json").read_text())
    path = ix / "vectors" / record["all"]["file"]
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        with open(path, "r+b") as f:
            f.write(b"\0" * 64)
    with pytest.raises(ClipzooError) as err:
        open_index(ix)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "corrupt" in msg
    assert msg.endswith(f"rebuild it with `clipzoo index build-vectors VECTORS --out {ix}`")  # not `index repair`


def test_issue21_4_servable_by_clipzoo_search(tmp_path):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    tiny = write_open_clip_safetensors(tmp_path / "tiny.safetensors", embed_config=True)
    np.save(tmp_path / "emb.npy", clustered(12_000, 32, 2).astype(np.float16))
    r = run("index", "build-vectors", tmp_path / "emb.npy", "--out", tmp_path / "ix", "--model", tiny,
            "--max-memory", "64MB", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["total"] == 12_000 and report["index_kind"] == "ivf_flat" and report["recall_at_10"] >= 0.9
    r = run("search", tmp_path / "ix", "a red ellipse", "-k", "3", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)["hits"]
    assert len(hits) == 3 and all(h["relpath"].startswith("emb.npy#") for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    # verify checks its files; repair refuses in one line (no embeddings to re-embed from); serve answers
    r = run("index", "verify", tmp_path / "ix")
    assert r.exit_code == 0 and "4 files match" in r.output, r.output
    r = run("index", "repair", tmp_path / "ix")
    assert r.exit_code == 2 and r.output.strip().endswith(
        f"was built from vectors and keeps no embeddings to repair from; rebuild it with "
        f"`clipzoo index build-vectors VECTORS --out {tmp_path / 'ix'}`"), r.output
    from fastapi.testclient import TestClient

    from clipzoo.serve.app import create_app
    with TestClient(create_app(tmp_path / "ix", model=tiny)) as client:
        served = client.post("/search", json={"text": "a red ellipse", "k": 3}).json()
    assert [h["relpath"] for h in served["hits"]] == [h["relpath"] for h in hits]


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _index_10m():
    """benchmarks/index_10m.py as a module (it imports its helper ``tables`` by name)."""
    import importlib.util

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_index_10m", BENCH / "index_10m.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_issue21_4_autofaiss_beside_ours_phases_memory_and_recall(tmp_path):
    """The benchmark's autofaiss row: clip-retrieval's call in a child, autofaiss's own phase timings read back
    from its log, the budget refused then raised as recorded, recall@10 against the exact top 10."""
    b = _index_10m()
    q = b.generate(tmp_path / "vecs", 2000, 20)
    np.save(tmp_path / "queries.npy", q)
    truth = b.exact_topk(sorted((tmp_path / "vecs" / "img_emb").glob("*.npy")), q)
    row = b.autofaiss_row(tmp_path, "flat", 64 << 20, "64MB", {"nb_cores": 1, "index_key": "Flat"}, truth, 300)
    assert "error" not in row, row
    assert row["options"] == {"nb_cores": 1, "index_key": "Flat"} and row["infos"]["index_key"] == "Flat"
    # max_index_memory_usage == current_memory_available leaves autofaiss no room: it refuses, the next is taken
    assert row["refused"] == ["64MB"] and row["current_memory_available"] == "576MB"
    assert row["recall_at_10"] >= 0.995  # exact inner product over the same float16 rows
    phases = row["phases_s"]
    assert 0 < phases["Launching the whole pipeline"] <= row["build_s"]
    assert "Computing best hyperparameters for index OUT/knn.index" in phases
    assert '>>> Finished "Launching the whole pipeline" in ' in row["log_tail"][-1]
    assert [e.split(":")[0] for e in row["autofaiss_estimate"]] == ["-> Train", "-> Add", "Total"]


def test_issue21_4_autofaiss_second_row_uses_our_key_when_its_own_differs(tmp_path, monkeypatch):
    b = _index_10m()
    calls = []

    def fake_row(work, name, budget, max_memory, extra, truth, timeout):
        calls.append((name, extra))
        return {"infos": {"index_key": "HNSW32" if name == "default" else extra["index_key"]}}

    monkeypatch.setattr(b, "autofaiss_row", fake_row)
    out = tmp_path / "r.json"
    b.main(["--n", "2000", "--max-memory", "64MB", "--queries", "5", "--no-ours", "--workdir", str(tmp_path / "w"),
            "--out", str(out)])
    key = plan_index(2000, 512, 64 << 20).key
    assert key == "IVF51,Flat"
    assert calls == [("default", {"nb_cores": os.cpu_count()}),
                     ("our_key", {"nb_cores": os.cpu_count(), "index_key": key, "metric_type": "l2"})]
    result = json.loads(out.read_text())
    assert result["autofaiss_our_key"]["infos"]["index_key"] == key
    assert result["machine"]["load_average"] and result["ours"] == {"error": "not run (--no-ours)"}
    assert not (tmp_path / "w" / "vecs").exists()  # the vectors are deleted, the workdir kept
