"""What a live write of ``clipzoo serve`` costs as the index grows, FAISS beside Milvus Lite (issue 21 §3).

A live write (``POST /items``, ``DELETE /items/{id}``) publishes a new generation and re-syncs the vector
store (for Milvus: reads every row's metadata back and every item record from SQLite), so its cost grows
with the index. For each store and each size N this builds an index of N random unit vectors on the
embedded model ``clipzoo/tiny-shapes`` with ``build_index_from_embeddings`` (a generated clip-retrieval
folder: no image is embedded for the N rows), serves it in-process (FastAPI's TestClient over
``create_app``), and times ``--writes`` uploads of one small PNG and ``--writes`` deletes of those items,
each followed by one ``/search`` that checks the write is visible. Records p50/max ms per operation, store
and N (with the index kind chosen for N), and per store the ratio of the p50 at the largest N to the p50 at
the smallest (the growth). On FAISS every publish rebuilds the whole index and one per partition (the rows
fall in 10 partitions), so the flat-to-HNSW switch at 10,000 rows shows in its growth.

    python benchmarks/live_writes.py --sizes 1000 10000 --writes 5 --out benchmarks/results/live_writes.json
    python benchmarks/live_writes.py --sizes 1000 10000 50000 --writes 5 --stores faiss milvus
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from tables import machine_info, write_result

warnings.filterwarnings("ignore")
MODEL = "clipzoo/tiny-shapes"
STORES = ("faiss", "milvus")
TOKEN = "bench"


def png(seed: int) -> bytes:
    """A 16x16 noise PNG, the same bytes for the same seed."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def build(tmp: Path, n: int, dim: int, store: str) -> tuple[Path, float]:
    """An index of ``n`` random unit vectors with generated paths and captions; (its folder, build seconds)."""
    from clipzoo.embed.clip_retrieval import write_clip_retrieval
    from clipzoo.index.from_embeddings import build_index_from_embeddings

    x = np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = [f"p{i % 10}/{i:07d}.png" for i in range(n)]
    write_clip_retrieval(tmp / "emb", image_features=x, image_paths=paths,
                         captions=[f"item {i}" for i in range(n)], model=MODEL)
    options = {"vector_store": store} | ({"uri": str(tmp / "lite.db")} if store == "milvus" else {})
    t0 = time.perf_counter()
    build_index_from_embeddings(tmp / "emb", tmp / "ix", model=MODEL, vector_options=options)
    return tmp / "ix", time.perf_counter() - t0


def stats(ms: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1),
            "all_ms": [round(t, 1) for t in ms]}


def timed_writes(index: Path, model, writes: int) -> dict:
    """``writes`` uploads then ``writes`` deletes, each timed and each followed by a checked ``/search``."""
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    auth = {"Authorization": f"Bearer {TOKEN}"}
    add_ms, delete_ms, search_ms, ids = [], [], [], []
    with TestClient(create_app(index, model=model, token=TOKEN)) as http:
        def search(data: bytes) -> list[int]:
            t0 = time.perf_counter()
            r = http.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": "5"}, headers=auth)
            search_ms.append((time.perf_counter() - t0) * 1e3)
            assert r.status_code == 200, r.text
            return [h["id"] for h in r.json()["hits"]]

        for i in range(writes):
            data = png(10_000 + i)
            t0 = time.perf_counter()
            r = http.post("/items", files={"image": (f"new{i}.png", data, "image/png")}, data={"caption": f"new {i}"},
                          headers=auth)
            add_ms.append((time.perf_counter() - t0) * 1e3)
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
            assert search(data)[0] == ids[-1], f"the new item {ids[-1]} is not the top hit"
        for i, item in enumerate(ids):
            t0 = time.perf_counter()
            r = http.delete(f"/items/{item}", headers=auth)
            delete_ms.append((time.perf_counter() - t0) * 1e3)
            assert r.status_code == 200, r.text
            assert item not in search(png(10_000 + i)), f"the deleted item {item} is still found"
    return {"add": stats(add_ms), "delete": stats(delete_ms), "search_after_write": stats(search_ms)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="index sizes N (rows)")
    p.add_argument("--writes", type=int, default=5, help="uploads (and as many deletes) timed per store and N")
    p.add_argument("--stores", nargs="+", default=list(STORES), choices=STORES)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = p.parse_args(argv)
    import clipzoo
    from clipzoo.index.generations import read_pointer

    model = clipzoo.load(MODEL, device="cpu")
    sizes = sorted(args.sizes)
    runs: dict[str, dict] = {s: {} for s in args.stores}
    for n in sizes:
        for store in args.stores:
            with tempfile.TemporaryDirectory() as tmp:
                index, build_s = build(Path(tmp), n, model.embed_dim, store)
                kind = read_pointer(index)["all"]["kind"]  # the index kind chosen by size (flat / hnsw / ...)
                runs[store][str(n)] = {"kind": kind, "build_s": round(build_s, 2),
                                       **timed_writes(index, model, args.writes)}
            print(f"{store:6s} N={n:>7,} ({kind}): add p50 {runs[store][str(n)]['add']['p50_ms']:8.1f} ms, "
                  f"delete p50 {runs[store][str(n)]['delete']['p50_ms']:8.1f} ms", flush=True)
    growth = {s: {op: round(r[str(sizes[-1])][op]["p50_ms"] / r[str(sizes[0])][op]["p50_ms"], 2)
                  for op in ("add", "delete")} for s, r in runs.items()}
    record = {"benchmark": "live_writes", "model": MODEL, "device": "cpu", "sizes": sizes, "writes": args.writes,
              "stores": runs, "growth_p50_largest_over_smallest": growth, "machine": machine_info()}
    print(json.dumps({"growth_p50_largest_over_smallest": growth, "load_average": record["machine"]["load_average"]}))
    if args.out:
        write_result(args.out, record)
    return record


if __name__ == "__main__":
    main()
