"""Benchmark results -> the tables of docs/benchmarks.md (issue 22 §7), and the machine record beside each figure.

Each benchmark writes ``benchmarks/results/NAME.json``. :func:`machine_info` is what every result records
about where it ran: the CPU model, the CPU flags that matter for the runtimes (``avx512f``, ``avx512_vnni``,
``avx512_bf16``, ``amx_*``), core count, load average, Python and the git commit (``+dirty`` when the tree had changes).

The docs hold generated blocks between markers; everything outside them is hand-written and kept::

    <!-- bench:latency -->
    (replaced by the table rendered from benchmarks/results/latency.json)
    <!-- /bench:latency -->

A result renders through :data:`RENDERERS` when its benchmark has one, otherwise through its ``"table"``
entry (``{"columns": [...], "rows": [[...], ...]}``), otherwise as the script's printed output (what
``run_all.py`` captured as ``"output"``). A marker whose JSON file is missing is left as it is.

    python benchmarks/tables.py            # regenerate docs/benchmarks.md from benchmarks/results/
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clipzoo.runtime import bf16

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOC = HERE.parent / "docs" / "benchmarks.md"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
MARKER = re.compile(r"(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The flags of :data:`CPU_FLAGS` that this machine (or the /proc/cpuinfo text ``cpuinfo``) reports, in
    that order."""
    have = bf16.cpu_flags() if cpuinfo is None else set((bf16.parse_cpuinfo(cpuinfo, "flags") or "").split())
    return [f for f in CPU_FLAGS if f in have]


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name on this machine (or in the /proc/cpuinfo text ``cpuinfo``); "" where it has none."""
    return bf16.cpu_model() if cpuinfo is None else bf16.parse_cpuinfo(cpuinfo, "model name") or ""


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder, removed when the benchmark's process exits (its JPEGs and weights run to GBs)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def git_commit() -> str | None:
    """``HEAD``'s short hash, with ``+dirty`` when tracked files differ from it; None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict:
    """Where and when a figure was measured: CPU model and flags, cores, load average, Python, commit."""
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform(), "commit": git_commit()}


def write_result(path: Path, result: dict) -> Path:
    """Write ``result`` (with ``machine`` filled in when absent) as indented JSON to ``path``."""
    result.setdefault("machine", machine_info())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def family_parity_main(benchmark: str, description: str, families: "list[str] | tuple[str, ...]",
                       run_family: "Callable[[str, Path], dict]", argv: list[str] | None = None,
                       setup: "Callable[[], None] | None" = None) -> dict:
    """The shared ``main`` of the parity benchmarks: ``--families`` / ``--out``, ``setup()`` (seeding: torch is
    imported there, after the arguments, so ``--help`` stays instant), each family run in its own temporary
    folder, one fp32 CPU record with the machine facts, written and printed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--families", nargs="+", default=list(families), choices=families)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = p.parse_args(argv)
    if setup is not None:
        setup()
    results = {}
    for name in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = run_family(name, Path(tmp))
    record = {"benchmark": benchmark, "precision": "fp32", "device": "cpu", "families": results,
              "machine": machine_info()}
    if args.out:
        write_result(args.out, record)
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return record


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; numbers right-aligned, ``None`` as an empty cell."""
    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.6g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v).replace("|", "\\|")

    numeric = [all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows if r[i] is not None)
               and any(r[i] is not None for r in rows) for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(result: dict, source: str) -> str:
    """The one line under each generated table: when, commit, cores, load average, CPU flags, the JSON file."""
    m = result.get("machine") if isinstance(result.get("machine"), dict) else {}
    load = m.get("load_average") or m.get("load_average_at_start")
    when = m.get("when") or result.get("when") or result.get("date")
    parts = [f"measured {when}" if when else None,
             f"commit `{m['commit']}`" if m.get("commit") else None,
             f"{m.get('cores') or m.get('cpus')} cores" if (m.get("cores") or m.get("cpus")) else None,
             "load average " + " / ".join(f"{x:.2f}" for x in load) if load else None,
             f"CPU: {m['cpu_model']}" if m.get("cpu_model") else None,
             "CPU flags: " + (" ".join(m["cpu_flags"]) or "none of " + ", ".join(CPU_FLAGS))
             if "cpu_flags" in m else None,
             f"size: {result['size']}" if result.get("size") else None,
             f"file: `{source}`"]
    return "*" + "; ".join(p for p in parts if p) + ".*"


def render_int8_fidelity(result: dict) -> str:
    rows = []
    for runtime, entry in result["runtimes"].items():
        row = [f"`{runtime}`"]
        for kind in ("image", "text"):
            row.append(" / ".join(f"{v:.4f}" for v in entry[kind]["min_cosine"].values()))
        row.append(" / ".join(f"{entry[k]['max_change_across_batch_sizes']:.1e}" for k in ("image", "text")))
        rows.append(row)
    sizes = " / ".join(str(b) for b in result["batch_sizes"])
    return markdown_table(["runtime", f"image min cosine (batch {sizes})", f"text min cosine (batch {sizes})",
                           "largest row change across batch sizes (image / text)"], rows)


def render_serve_load(result: dict) -> str:
    rows = []
    for res in result["models"].values():
        for kind in ("text_search", "image_embed"):
            r = res.get(kind)
            if not r:
                continue
            b, u = r["batched"], r["unbatched"]
            rows.append([res["model"], f"{r['clients']} × {kind}", f"{b['rps']} ({b['p50_ms']} / {b['p99_ms']})",
                         f"{u['rps']} ({u['p50_ms']} / {u['p99_ms']})", f"{r['speedup']}×",
                         f"{r['goal']}: {'met' if r['goal_met'] else 'not met'}"])
    return markdown_table(["model", "load", "batched req/s (p50 / p99 ms)", "unbatched req/s (p50 / p99 ms)",
                           "ratio", "goal"], rows)


RENDERERS = {"int8_fidelity": render_int8_fidelity, "serve_load": render_serve_load}


def render(name: str, result: dict, source: str) -> str:
    """The markdown for one result: its table (or its printed output) and the machine line."""
    if name in RENDERERS and "error" not in result:
        body = RENDERERS[name](result)
    elif isinstance(result.get("table"), dict):
        body = markdown_table(result["table"]["columns"], result["table"]["rows"])
    elif "error" in result:
        body = f"Not measured: {result['error']}"
    else:
        body = "```\n" + str(result.get("output", json.dumps(result, indent=1))).strip() + "\n```"
    return f"{body}\n\n{machine_line(result, source)}\n"


def update_doc(doc: Path = DOC, results: Path = RESULTS) -> list[str]:
    """Replace every ``<!-- bench:NAME -->`` block of ``doc`` whose ``results/NAME.json`` exists; the names done."""
    text = doc.read_text()
    done: list[str] = []

    def repl(m: re.Match) -> str:
        name = m["name"]
        path = results / f"{name}.json"
        if not path.exists():
            return m.group(0)
        done.append(name)
        source = os.path.relpath(path, doc.parent.parent) if path.is_absolute() else str(path)
        return m.group(1) + render(name, json.loads(path.read_text()), source) + m.group(4)

    new = MARKER.sub(repl, text)
    if new != text:
        doc.write_text(new)
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", type=Path, default=DOC, help="the markdown file whose bench blocks to regenerate")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the folder of NAME.json files")
    args = ap.parse_args(argv)
    names = update_doc(args.doc, args.results)
    print("regenerated: " + (", ".join(names) or "nothing (no marker with a results file)"))


if __name__ == "__main__":
    main()
