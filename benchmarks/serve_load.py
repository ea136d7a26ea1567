"""Service load benchmark (issue 17 §5): dynamic batching vs one request at a time, same model, one run.

For each model, one index (generated shapes) and two ``clipzoo serve`` processes over it: batched
(``--max-batch 32 --max-wait-ms 5``, the defaults) and unbatched (``--max-batch 1``). Load comes from
this process: ``--clients`` threads (default 32) each sending single-text ``POST /search`` back to back
on a keep-alive connection, then ``--image-clients`` (default 8) sending one-image ``POST /embed``.
Phases alternate between the two servers for ``--rounds`` rounds of ``--duration`` seconds each, so a
machine whose load changes during the run (shared CPUs) affects both alike. Reported: requests per
second, p50 and p99 latency, errors, the batched/unbatched throughput ratio and whether the goals
(text >= 5x, image >= 2x) were met.

``--torch-threads 1`` pins the servers' intra-op threads (OMP_NUM_THREADS): on a machine whose cores
other jobs share, OpenMP's spin-waiting otherwise makes every small model call slow, whatever its batch.

Models: ``clipzoo/tiny-shapes`` (the embedded model: tiny towers, so HTTP and Python overhead dominate)
and ``ViT-B-32`` with random weights (``clipzoo.testing.tiny.write_open_clip_hub_folder`` with open_clip's
ViT-B-32 config: a real model's size and cost; random weights do not change the compute).

    python benchmarks/serve_load.py                       # both models, results/serve_load.json
    python benchmarks/serve_load.py --models tiny --duration 5
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tables import scratch_dir

RESULTS = Path(__file__).parent / "results"
QUERIES = ["a red circle", "a blue square", "a yellow star", "a green triangle", "a purple shape", "two circles",
           "a small red star", "a large blue circle", "an orange triangle", "a shape on grey", "a square",
           "a star", "a circle", "a triangle", "a bright shape", "a dark shape"]
MODELS = {"tiny": "clipzoo/tiny-shapes", "ViT-B-32": "ViT-B-32 (random weights)"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_spec(name: str, root: Path) -> str:
    if name == "tiny":
        return "clipzoo/tiny-shapes"
    import open_clip

    from clipzoo.testing.tiny import write_open_clip_hub_folder

    return str(write_open_clip_hub_folder(root / name, config=open_clip.get_model_config(name)))


THREADS: list = [None]  # --torch-threads


def server_env() -> dict:
    """The servers' environment: OMP/MKL threads pinned when --torch-threads is given."""
    env = dict(os.environ)
    if THREADS[0]:
        env.update(OMP_NUM_THREADS=str(THREADS[0]), MKL_NUM_THREADS=str(THREADS[0]))
    return env


def build(name: str, root: Path, n_images: int) -> Path:
    from clipzoo.demo import make_shapes
    from clipzoo.index import build_index

    images = make_shapes(root / "shapes", n_images, image_size=64)
    index = root / f"{name}.index"
    if not index.exists():
        build_index(images, index, model=model_spec(name, root), workers=0)
    return index


class Server:
    """``clipzoo serve INDEX`` in a subprocess on a free port."""

    def __init__(self, index: Path, max_batch: int, max_wait_ms: float, log: Path):
        self.port = free_port()
        self.log = open(log, "wb")  # noqa: SIM115 (open for the server process's life; closed in close())
        cmd = [sys.executable, "-m", "clipzoo", "serve", str(index), "--port", str(self.port), "--log-level",
               "warning", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=server_env())
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the server did not start in 600 s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def load(port: int, clients: int, duration: float, body: "callable") -> dict:
    """``clients`` threads posting ``body(i)`` back to back for ``duration`` s; latencies and errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop = [0.0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad = [], 0
        start.wait()
        while time.monotonic() < stop[0]:
            path, payload = body(rng)
            t = time.perf_counter()
            try:
                conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            if ok:
                mine.append(time.perf_counter() - t)
            else:
                bad += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    stop[0] = time.monotonic() + duration
    t0 = time.monotonic()
    start.wait()
    for t in threads:
        t.join()
    return {"seconds": time.monotonic() - t0, "latencies": latencies, "errors": errors[0]}


def summarize(parts: list[dict]) -> dict:
    import numpy as np

    lat = np.array([x for p in parts for x in p["latencies"]]) * 1e3
    seconds = sum(p["seconds"] for p in parts)
    return {"requests": int(lat.size), "errors": int(sum(p["errors"] for p in parts)), "seconds": round(seconds, 1),
            "rps": round(lat.size / seconds, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None}


def image_payloads(n: int = 8) -> list[bytes]:
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        im = Image.new("RGB", (256, 256), (240, 240, 240))
        ImageDraw.Draw(im).ellipse([40 + 4 * i, 50, 200, 210 - 3 * i], fill=(30 * i % 255, 90, 200))
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()]}).encode())
    return out


def bench_model(name: str, args: argparse.Namespace, root: Path) -> dict:
    index = build(name, root, args.images)
    servers = {"batched": Server(index, args.max_batch, args.max_wait_ms, root / f"{name}-batched.log"),
               "unbatched": Server(index, 1, args.max_wait_ms, root / f"{name}-unbatched.log")}
    images = image_payloads()

    def text(rng):
        return "/search", json.dumps({"text": rng.choice(QUERIES), "k": 10}).encode()

    def image(rng):
        return "/embed", rng.choice(images)

    try:
        out = {"model": MODELS[name]}
        for kind, clients, body in (("text_search", args.clients, text), ("image_embed", args.image_clients, image)):
            parts: dict[str, list] = {"batched": [], "unbatched": []}
            for server in servers.values():  # warm-up: first requests pay one-time costs
                load(server.port, clients, args.warmup, body)
            for r in range(args.rounds):
                order = ("batched", "unbatched") if r % 2 == 0 else ("unbatched", "batched")
                for mode in order:
                    parts[mode].append(load(servers[mode].port, clients, args.duration, body))
            row = {mode: summarize(p) for mode, p in parts.items()}
            row["clients"] = clients
            row["speedup"] = round(row["batched"]["rps"] / max(row["unbatched"]["rps"], 1e-9), 2)
            goal = 5.0 if kind == "text_search" else 2.0
            row["goal"] = f">= {goal:g}x"
            row["goal_met"] = row["speedup"] >= goal
            out[kind] = row
            print(json.dumps({name: {kind: row}}), flush=True)
        return out
    finally:
        for server in servers.values():
            server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "ViT-B-32"])
    ap.add_argument("--clients", type=int, default=32, help="concurrent single-text /search clients")
    ap.add_argument("--image-clients", type=int, default=8, help="concurrent one-image /embed clients")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of each phase")
    ap.add_argument("--rounds", type=int, default=2, help="phases per server, alternating")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--images", type=int, default=56, help="images in the index")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="intra-op threads of the servers (OMP_NUM_THREADS) [default: torch's, one per core]; "
                         "1 avoids OpenMP spin-waiting on a machine whose cores other jobs also use")
    ap.add_argument("--workdir", type=Path, default=None, help="where indices go [default: a temporary folder]")
    args = ap.parse_args()
    import torch

    THREADS[0] = args.torch_threads

    root = args.workdir or scratch_dir("clipzoo-serve-load-")
    root.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "serve_load", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
                          "server_torch_threads": args.torch_threads or torch.get_num_threads(),
                          "python": platform.python_version(), "device": "cpu"},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "models": {}}
    for name in args.models:
        result["models"][name] = bench_model(name, args, root)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'model':<10} {'load':<12} {'clients':>7} {'batched r/s':>11} {'p50/p99 ms':>13} "
          f"{'unbatched r/s':>13} {'p50/p99 ms':>13} {'speedup':>8}")
    for name, res in result["models"].items():
        for kind in ("text_search", "image_embed"):
            r = res[kind]
            b, u = r["batched"], r["unbatched"]
            print(f"{name:<10} {kind:<12} {r['clients']:>7} {b['rps']:>11} {b['p50_ms']:>6}/{b['p99_ms']:<6} "
                  f"{u['rps']:>13} {u['p50_ms']:>6}/{u['p99_ms']:<6} {r['speedup']:>7}x "
                  f"(goal {r['goal']}: {'met' if r['goal_met'] else 'NOT met'})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
