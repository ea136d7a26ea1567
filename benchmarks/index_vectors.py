"""Vector index benchmark: build time, p50/p99 single-query latency and recall@10 vs exact FAISS search.

The index is what ``clipzoo index build`` makes for that many vectors (:func:`clipzoo.index.stores.faiss.build_vectors`:
kind chosen by size and memory, search parameter tuned to a 5 ms latency target). Vectors are random
512-d, L2-normalised; ``--data clustered`` (default) draws them around 1000 random centres, as real
image embeddings cluster; ``--data gaussian`` draws them i.i.d. (no structure at all: the worst case for
any approximate index). Queries are 1000 held-out vectors of the same distribution; ground truth is exact
inner-product search (``faiss.knn``).

    python benchmarks/index_vectors.py --sizes 100000 1000000
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def make_data(n: int, d: int, kind: str, seed: int = 0, centres: int = 1000, spread: float = 0.6) -> np.ndarray:
    from clipzoo.index.stores.faiss import normalize

    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    c = rng.standard_normal((centres, d)).astype(np.float32) if kind == "clustered" else None
    for start in range(0, n, 100_000):  # in chunks: 1M x 512 floats is 2 GB
        m = min(100_000, n - start)
        noise = rng.standard_normal((m, d), dtype=np.float32)
        out[start:start + m] = noise if c is None else c[rng.integers(0, centres, m)] + spread * noise
    return normalize(out)


def bench(n: int, d: int, data: str, queries: int, latency_target_ms: float) -> dict:
    import faiss

    from clipzoo.index.stores.faiss import build_vectors, exact_knn, recall_at_k

    both = make_data(n + queries, d, data)
    x, q = both[:n], both[n:]
    del both
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    vi = build_vectors(ids, x, latency_target_ms=latency_target_ms)
    build_s = time.perf_counter() - t0
    times = []
    found = np.empty((queries, 10), np.int64)
    for i in range(queries):
        t = time.perf_counter()
        _, f = vi.search(q[i:i + 1], 10)
        times.append((time.perf_counter() - t) * 1e3)
        found[i] = f[0]
    t = time.perf_counter()
    _, truth = exact_knn(x, q, 10)
    exact_s = time.perf_counter() - t
    flat = faiss.IndexFlatIP(d)
    flat.add(x[: min(n, 200_000)])
    flat_times = []
    for i in range(min(queries, 100)):
        t = time.perf_counter()
        flat.search(q[i:i + 1], 10)
        flat_times.append((time.perf_counter() - t) * 1e3 * n / min(n, 200_000))
    return {"n": n, "dim": d, "data": data, "kind": vi.kind, "key": vi.key, "params": vi.params,
            "build_s": round(build_s, 1), "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3),
            "recall_at_10": round(recall_at_k(found, truth, 10), 4),
            "reported_recall_at_10": vi.recall_at_10, "exact_flat_p50_ms_est": round(float(np.median(flat_times)), 2),
            "exact_batch_s": round(exact_s, 2), "faiss_threads": faiss.omp_get_max_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--data", choices=["clustered", "gaussian"], default="clustered")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--latency-target-ms", type=float, default=5.0)
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        r = bench(n, args.dim, args.data, args.queries, args.latency_target_ms)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(f"\n{'n':>9} {'index':<18} {'params':<16} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7} {'recall@10':>9} "
          f"{'exact p50 ms':>12}")
    for r in rows:
        params = ",".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['n']:>9} {r['key']:<18} {params:<16} {r['build_s']:>8} {r['p50_ms']:>7} {r['p99_ms']:>7} "
              f"{r['recall_at_10']:>9} {r['exact_flat_p50_ms_est']:>12}")
        goal = "met" if r["p50_ms"] <= 5 and r["recall_at_10"] >= 0.95 else "NOT met"
        print(f"          goal p50 <= 5 ms at recall@10 >= 0.95: {goal}; exact search would take "
              f"~{r['exact_flat_p50_ms_est'] / max(r['p50_ms'], 1e-9):.0f}x the time")


if __name__ == "__main__":
    main()
