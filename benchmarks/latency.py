"""Latency of the service and the CLI (issue 22 §6), on the embedded model ``clipzoo/tiny-shapes``.

Three figures, each against its goal, and each as a ratio to the floor every one of them pays — a bare
``python -c "import torch"`` measured in the same run:

- cold start of ``clipzoo serve INDEX`` (goal <= 3 s): process start -> ``GET /health`` answers 200, and
  -> the first ``POST /search`` (one text, k = 10) answers 200;
- one text query at one client, on a warm server over a keep-alive connection (goal p50 <= 15 ms), p50
  and p99;
- ``clipzoo search INDEX TEXT`` as a one-shot command (goal <= 2 s), process start -> exit. On the embedded
  model it runs the text tower in NumPy (``clipzoo.models.numpy_text``) and imports no torch at all: the run
  checks that once with ``python -X importtime`` (``search_cli_torch_modules``: 0 expected), so its ratio to
  the ``import torch`` floor falls below 1.

The peer (clip-retrieval's ``clip-retrieval back``) cannot run here: it is installed with ``--no-deps``
(its pinned dependencies conflict with ours), so its service does not start; the figures are absolute,
against the issue's goals, with the ``import torch`` floor beside them.

    python benchmarks/latency.py                       # results/latency.json
    python benchmarks/latency.py --repeats 1 --queries 20 --out /tmp/latency.json
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tables import RESULTS, machine_info, scratch_dir, write_result

GOALS = {"cold_start_s": 3.0, "query_p50_ms": 15.0, "search_cli_s": 2.0}
QUERIES = ["a red circle", "a blue square", "a yellow star", "a green triangle", "a purple heart", "a cross"]
PEER = ("clip-retrieval back: not run — clip-retrieval is installed with --no-deps (its pinned dependencies "
        "conflict with clipzoo's), so its service cannot start here")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_index(root: Path, n: int) -> Path:
    from clipzoo.demo import make_shapes
    from clipzoo.index import build_index as build

    index = root / "tiny.index"
    if not index.exists():
        build(make_shapes(root / "shapes", n, image_size=64), index, model="clipzoo/tiny-shapes", workers=0)
    return index


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``cmd`` from start to exit, and its stdout; a failure raises with its stderr."""
    c, t = cpu_children(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    dt, cpu = time.perf_counter() - t, cpu_children() - c
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return dt, cpu, proc.stdout


def search_imports(index: Path) -> dict:
    """One ``clipzoo search`` under ``python -X importtime``: how many torch modules it imported, and the
    heavy packages among its imports (open_clip, torchvision, timm, transformers)."""
    cmd = [sys.executable, "-X", "importtime", "-m", "clipzoo", "search", str(index), QUERIES[0], "-k", "5", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted({n.split(".")[0] for n in names} & {"open_clip", "torchvision", "timm", "transformers"})
    return {"torch_modules": sum(n == "torch" or n.startswith("torch.") for n in names), "heavy": heavy,
            "modules": len(names)}


def post_search(conn: http.client.HTTPConnection, text: str) -> dict:
    conn.request("POST", "/search", body=json.dumps({"text": text, "k": 10}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"/search answered {r.status}: {body[:300]!r}")
    return json.loads(body)


def cold_start(index: Path, log: Path, queries: int, threads: int | None = None) -> dict:
    """Start ``clipzoo serve``; seconds to /health and to a first /search; then ``queries`` one-client queries."""
    port = free_port()
    cmd = [sys.executable, "-m", "clipzoo", "serve", str(index), "--port", str(port), "--log-level", "warning"]
    with open(log, "ab") as out:
        t0 = time.perf_counter()
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            health = wait_health(proc, port, t0, log)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            first = post_search(conn, QUERIES[0])
            first_s = time.perf_counter() - t0
            lat = []
            for i in range(queries):
                t = time.perf_counter()
                post_search(conn, QUERIES[i % len(QUERIES)])
                lat.append((time.perf_counter() - t) * 1e3)
            conn.close()
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    hits = first["hits"]
    return {"health_s": health, "first_search_s": first_s, "first_hits": len(hits),
            "first_top": hits[0] if hits else None, "latencies_ms": lat}


def wait_health(proc: subprocess.Popen, port: int, t0: float, log: Path) -> float:
    while time.perf_counter() - t0 < 600:
        if proc.poll() is not None:
            raise RuntimeError(f"clipzoo serve exited ({proc.returncode}); see {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            if ok:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError("clipzoo serve did not answer /health in 600 s")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(floor: list[float], starts: list[dict], searches: list[float]) -> dict:
    """Medians and bests of the runs, the query p50/p99, ratios to the ``import torch`` floor, goals met."""
    f = statistics.median(floor)
    health = [s["health_s"] for s in starts]
    first = [s["first_search_s"] for s in starts]
    lat = [x for s in starts for x in s["latencies_ms"]]
    out = {
        "import_torch_s": {"median": f, "best": min(floor), "runs": floor},
        "cold_start_health_s": {"median": statistics.median(health), "best": min(health), "runs": health},
        "cold_start_first_search_s": {"median": statistics.median(first), "best": min(first), "runs": first},
        "query_ms": ({"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat)} if lat
                     else {"p50": None, "p99": None, "n": 0}),
        "search_cli_s": {"median": statistics.median(searches), "best": min(searches), "runs": searches},
    }
    cold, cli, p50 = out["cold_start_first_search_s"]["median"], out["search_cli_s"]["median"], out["query_ms"]["p50"]
    out["ratio_to_import_torch"] = {"cold_start": cold / f, "search_cli": cli / f}
    out["goals"] = {"cold_start_s": {"goal": GOALS["cold_start_s"], "value": cold,
                                     "met": cold <= GOALS["cold_start_s"]},
                    "query_p50_ms": {"goal": GOALS["query_p50_ms"], "value": p50,
                                     "met": p50 is not None and p50 <= GOALS["query_p50_ms"]},
                    "search_cli_s": {"goal": GOALS["search_cli_s"], "value": cli, "met": cli <= GOALS["search_cli_s"]}}
    return out


def table(s: dict) -> dict:
    """The generated docs table: one row per figure, its goal, whether met, and the ratio to ``import torch``."""
    g, r = s["goals"], s["ratio_to_import_torch"]

    def ok(key):
        return "met" if g[key]["met"] else "not met"

    rows = [["`python -c \"import torch\"` (floor)", round(s["import_torch_s"]["median"], 3), "s", None, None, 1.0],
            ["`clipzoo serve` start -> /health 200", round(s["cold_start_health_s"]["median"], 3), "s", None, None,
             round(s["cold_start_health_s"]["median"] / s["import_torch_s"]["median"], 2)],
            ["`clipzoo serve` start -> first /search 200", round(s["cold_start_first_search_s"]["median"], 3), "s",
             "<= 3 s", ok("cold_start_s"), round(r["cold_start"], 2)],
            ["one text /search, one client, p50", _r(s["query_ms"]["p50"]), "ms", "<= 15 ms", ok("query_p50_ms"), None],
            ["one text /search, one client, p99", _r(s["query_ms"]["p99"]), "ms", None, None, None],
            *([["same, server with OMP_NUM_THREADS=1, p50 / p99",
                f"{_r(s['query_ms_server_one_thread']['p50'])} / {_r(s['query_ms_server_one_thread']['p99'])}", "ms",
                None, None, None]] if "query_ms_server_one_thread" in s else []),
            ["`clipzoo search INDEX TEXT` (one-shot)", round(s["search_cli_s"]["median"], 3), "s", "<= 2 s",
             ok("search_cli_s"), round(r["search_cli"], 2)],
            *([["torch modules the one-shot search imports", s["search_cli_imports"]["torch_modules"], "", None,
                None, None]] if "search_cli_imports" in s else [])]
    if "cpu_s" in s:  # CPU seconds move less with the machine's load than wall seconds
        c = s["cpu_s"]
        rows += [["CPU time of `python -c \"import torch\"`", round(c["import_torch"]["median"], 3), "s", None, None,
                  1.0],
                 ["CPU time of `clipzoo search INDEX TEXT`", round(c["search_cli"]["median"], 3), "s", None, None,
                  round(c["search_cli_ratio_to_import_torch"], 2)]]
    return {"columns": ["figure (median of runs)", "value", "unit", "goal", "goal met", "× import torch"], "rows": rows}


def _r(x):
    return None if x is None else round(x, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="cold starts, one-shot searches and import-torch runs")
    ap.add_argument("--queries", type=int, default=200, help="one-client queries after each cold start")
    ap.add_argument("--images", type=int, default=64, help="images in the index")
    ap.add_argument("--server-threads", type=int, default=None,
                    help="OMP_NUM_THREADS for the server [default: unset, torch's one per core]")
    ap.add_argument("--workdir", type=Path, default=None, help="where the index goes [default: a temporary folder]")
    ap.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    args = ap.parse_args()
    root = args.workdir or scratch_dir("clipzoo-latency-")
    root.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    index = build_index(root, args.images)
    floor, starts, searches, cpus = [], [], [], {"import_torch": [], "search_cli": []}
    for i in range(args.repeats):  # interleaved, so a change in the machine's load hits each figure alike
        wall, cpu, _ = timed_run([sys.executable, "-c", "import torch"])
        floor.append(wall)
        cpus["import_torch"].append(cpu)
        starts.append(cold_start(index, root / "serve.log", args.queries, args.server_threads))
        dt, cpu, stdout = timed_run([sys.executable, "-m", "clipzoo", "search", str(index), QUERIES[i % len(QUERIES)],
                                "-k", "5", "--json"])
        searches.append(dt)
        cpus["search_cli"].append(cpu)
        hits = json.loads(stdout)["hits"]
        if not hits:
            raise RuntimeError("clipzoo search returned no hits")
    summary = summarize(floor, starts, searches)
    summary["search_cli_imports"] = search_imports(index)
    if not args.server_threads:  # the same queries on a server pinned to one intra-op thread, for comparison
        lat = cold_start(index, root / "serve.log", args.queries, threads=1)["latencies_ms"]
        summary["query_ms_server_one_thread"] = {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat)}
    summary["cpu_s"] = {k: {"median": statistics.median(v), "runs": v} for k, v in cpus.items()}
    summary["cpu_s"]["search_cli_ratio_to_import_torch"] = (summary["cpu_s"]["search_cli"]["median"]
                                                             / summary["cpu_s"]["import_torch"]["median"])
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"benchmark": "latency", "model": "clipzoo/tiny-shapes", "machine": machine,
              "settings": {"repeats": args.repeats, "queries": args.queries, "images": args.images,
                           "server_threads": args.server_threads or "torch's default (one per core)"},
              "peer": PEER, "first_search_top": starts[-1]["first_top"], **summary, "table": table(summary)}
    write_result(args.out, result)
    for row in result["table"]["rows"]:
        print(f"{row[0]:<48} {row[1]!s:>9} {row[2]:<3} {row[3] or '':<9} {row[4] or '':<8} {row[5] or ''}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
