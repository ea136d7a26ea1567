"""Run every benchmark and regenerate the tables of docs/benchmarks.md from their JSON (issue 22 §7).

    python benchmarks/run_all.py --quick               # every benchmark at a small size (<= 15 min, idle 2 cores)
    python benchmarks/run_all.py --full                # the sizes the docs quote
    python benchmarks/run_all.py --quick --only latency decode
    python benchmarks/run_all.py --dry-run             # print the commands, run nothing
    python benchmarks/tables.py                        # only regenerate the docs from benchmarks/results/

Each benchmark writes ``benchmarks/results/NAME.json`` (NAME: the script's name): a script with ``--out``
writes it itself; the output of one without is captured into ``{"output": ...}``. Into each file this
adds ``size`` (quick / full), the command, its wall time, and the machine (:func:`tables.machine_info`:
CPU flags, cores, load average, commit) beside the script's own record. A benchmark that fails or runs
out of time leaves its previous file alone; ``results/run_all.json`` records every benchmark's status, which
ones this invocation ran (``ran``) and its wall time end to end (``wall_s``: the figure the ≤ 15 min goal is about).
Then every ``<!-- bench:NAME -->`` block of docs/benchmarks.md is regenerated (:func:`tables.update_doc`).

Every script in benchmarks/ is listed in :data:`BENCHMARKS` (a CI test checks it), so a new benchmark
cannot be left out: add its line with a quick and a full argument list.

Each benchmark runs as ``__main__`` in a child forked from this process after it has imported what every
benchmark imports (:data:`PRELOAD`: torch, torchvision, open_clip — 5–6 s a process here, about 2 minutes of a
quick run when each benchmark started its own interpreter); nothing a benchmark times includes those imports
either way. A benchmark with its own interpreter (the MindSpore venv) and ``--fresh-processes`` start a new
process per benchmark instead.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tables import DOC, RESULTS, machine_info, update_doc, write_result

HERE = Path(__file__).resolve().parent
HELPERS = ("run_all.py", "tables.py")  # modules of this folder that are not benchmarks
MINDSPORE_PYTHON = ".venv-ms/bin/python"  # MindSpore needs NumPy 1.x: its benchmarks run in their own venv
PRELOAD = ("numpy", "PIL.Image", "torch", "torchvision", "open_clip")  # imported once, before the forks


@dataclass(frozen=True)
class Bench:
    quick: list[str]
    full: list[str] = field(default_factory=list)
    out: bool = True  # the script takes --out PATH and writes its JSON there
    quick_timeout: int = 300
    python: "str | None" = None  # another interpreter, relative to the repo root, when it exists (.venv-ms)


BENCHMARKS: dict[str, Bench] = {
    "latency": Bench(["--repeats", "2", "--queries", "50"], ["--repeats", "5", "--queries", "200"]),
    "decode": Bench(["--images", "64", "--repeats", "3"], ["--images", "256", "--repeats", "3"], quick_timeout=600),
    "decode_share": Bench(["--images", "32", "--runtimes", "eager"],
                          ["--images", "256", "--runtimes", "eager,onnx-int8-static", "--workers", "2"],
                          quick_timeout=420),
    "gpu_embed": Bench(["--cpu-images", "8", "--check", "4", "--images", "20000"], ["--images", "20000"],
                       quick_timeout=600),
    "embed_folder": Bench(["--images", "64", "--texts", "64", "--runtimes", "eager,onnx-int8", "--no-transformers"],
                          ["--images", "2000", "--texts", "1000"], out=False, quick_timeout=420),
    "ensemble_overhead": Bench(["--images", "16", "--texts", "8", "--repeats", "3"],
                               ["--images", "64", "--texts", "32", "--repeats", "9"], out=False),
    "family_parity": Bench([], []),
    "hf_family_parity": Bench(["--families", "owlvit", "blip", "blip2"], []),
    "video_parity": Bench(["--families", "xclip", "frame_average"], []),
    "core_parity": Bench(["--families", "openai-jit", "open_clip-hub-folder", "transformers-clip"], []),
    "eval_zeroshot": Bench(["--n", "64", "--batch-size", "32", "--repeats", "1"],
                           ["--n", "600", "--batch-size", "64", "--workers", "2", "--repeats", "2"], out=False),
    "index_build": Bench(["--n", "32"], ["--n", "256"], out=False),
    "index_vectors": Bench(["--sizes", "10000", "--queries", "100"], ["--sizes", "100000", "1000000"], out=False),
    # quick: 50k vectors, where autofaiss finishes (HNSW32) and both of its rows are complete; at 200k it spends its
    # whole time limit training OPQ (docs/benchmarks.md), which made the quick run 10 minutes longer
    "index_10m": Bench(["--n", "50000", "--max-memory", "256MB", "--autofaiss-timeout", "120"], ["--full"],
                       quick_timeout=600),
    "live_writes": Bench(["--sizes", "1000", "10000", "--writes", "5"],
                         ["--sizes", "1000", "10000", "50000", "--writes", "5"]),
    "int8_fidelity": Bench(["--n", "32", "--batch-sizes", "1", "8"], []),
    "jax_embed": Bench(["--repeats", "1"], ["--repeats", "3"]),
    "jax_train": Bench(["--steps", "3", "--warmup-steps", "1", "--batch-size", "8"], []),
    "mindspore_embed": Bench(["--quick"], ["--image-batch", "16", "--text-batch", "64", "--repeats", "3"],
                             python=MINDSPORE_PYTHON, quick_timeout=900),
    "mindspore_parity": Bench([], ["--full"], python=MINDSPORE_PYTHON),
    "bf16_speed": Bench(["--rounds", "2", "--variants", "bf16", "--heldout", "64"], ["--rounds", "5", "--profile"],
                        quick_timeout=600),
    "runtimes": Bench(["--images", "64", "--texts", "128", "--heldout", "385"],
                      ["--images", "512", "--texts", "1024", "--heldout", "385"], quick_timeout=900),
    "roofline": Bench(["--images", "32", "--repeats", "5", "--runtimes", "eager,onnx-int8"], ["--images", "128"]),
    "vit_layout": Bench(["--images", "32", "--rounds", "3"], ["--images", "128", "--rounds", "9"], quick_timeout=600),
    "serve_load": Bench(["--models", "tiny", "--duration", "3", "--rounds", "1", "--warmup", "1"],
                        ["--torch-threads", "1", "--duration", "15", "--rounds", "2", "--warmup", "2"]),
    "train_throughput": Bench(["--steps", "4", "--warmup-steps", "1", "--batch-size", "16", "--repeats", "1"], [],
                              out=False),
}


def scripts(folder: Path = HERE) -> list[str]:
    """The benchmark scripts of ``folder``: its ``*.py`` but the helpers, by name without ``.py``."""
    return sorted(p.stem for p in folder.glob("*.py") if p.name not in HELPERS and not p.name.startswith("_"))


def command(name: str, size: str, results: Path) -> list[str]:
    bench = BENCHMARKS[name]
    python = HERE.parent / bench.python if bench.python else None
    cmd = [str(python) if python is not None and python.exists() else sys.executable, str(HERE / f"{name}.py"),
           *(bench.quick if size == "quick" else bench.full)]
    return cmd + (["--out", str(results / f"{name}.json")] if bench.out else [])


def run_one(name: str, size: str, results: Path, timeout: float | None, fork: bool = False) -> dict:
    """Run one benchmark; on success its ``results/NAME.json`` gets ``size``, the command, wall time, machine.
    ``fork``: in a child of this process (:func:`run_forked`) unless the benchmark has its own interpreter."""
    machine = machine_info()
    stamp = {"size": size, "when": machine["when"]}
    cmd = command(name, size, results)
    path = results / f"{name}.json"
    before = path.stat().st_mtime if path.exists() else None
    t = time.perf_counter()
    if fork and cmd[0] == sys.executable:
        rc, stdout, stderr = run_forked(Path(cmd[1]), cmd[2:], timeout)
    else:
        rc, stdout, stderr = run_subprocess(cmd, timeout)
    seconds = round(time.perf_counter() - t, 1)
    if rc is None:
        return {"status": "timeout", "seconds": seconds, "error": f"over {timeout} s", **stamp}
    if rc != 0:
        tail = (stderr.strip() or stdout.strip()).splitlines()[-1:] or [""]
        return {"status": "failed", "seconds": seconds, "rc": rc, "error": tail[0][-300:], **stamp}
    if BENCHMARKS[name].out:
        if not path.exists() or path.stat().st_mtime == before:
            return {"status": "failed", "seconds": seconds, "error": f"{name}.py wrote no {path.name}", **stamp}
        result = json.loads(path.read_text())
    else:
        result = {"benchmark": name, "output": stdout.strip()[-6000:]}
    own = result.get("machine")
    if own is not None and not isinstance(own, dict):
        result["machine_arch"] = own
        own = None
    result["machine"] = {**machine, **(own or {})}  # the script's own record wins where both say something
    result.update(size=size, command=" ".join(["python", f"benchmarks/{name}.py", *cmd[2:]]), wall_s=seconds)
    write_result(path, result)
    return {"status": "ok", "seconds": seconds, **stamp}


def run_subprocess(cmd: list[str], timeout: float | None) -> tuple[int | None, str, str]:
    """Run ``cmd`` (a benchmark in its own interpreter: ``--fresh-processes``, the MindSpore venv) in its own
    session: ``(exit code or None on timeout, stdout, stderr)``; as for a forked one (:func:`wait_child`), a
    timeout kills it with whatever it started, and whatever it leaves running is killed when it exits."""
    proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    kill_session(proc.pid)
    if rc is None:
        stdout, stderr = proc.communicate()
    return rc, stdout, stderr


def preload() -> None:
    """Import :data:`PRELOAD` here, before any fork (no thread pool is started by an import)."""
    for module in PRELOAD:
        importlib.import_module(module)


def run_forked(script: Path, args: list[str], timeout: float | None) -> tuple[int | None, str, str]:
    """Run ``script`` with ``args`` as ``__main__`` in a forked child, in its own session (a timeout kills the
    child and whatever it started): ``(exit code or None on timeout, stdout, stderr)``."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            child_main(script, args, out.fileno(), err.fileno())
        rc = wait_child(pid, timeout)
        out.seek(0)
        err.seek(0)
        return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def child_main(script: Path, args: list[str], out: int, err: int) -> None:
    """The forked child: the script as ``__main__`` (its ``sys.exit`` code kept) and then its own exit handlers
    (a benchmark's scratch folders; the ones inherited from the parent are the parent's), then ``os._exit`` —
    never back into the parent's loop."""
    code = 1
    try:
        atexit._clear()  # CPython's own calls (interpreter exit runs _run_exitfuncs): the parent's handlers go
        os.setsid()
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115 - a caller's
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115 - replaced ones
        os.chdir(script.parent)
        sys.argv = [str(script), *args]
        sys.path[0] = str(script.parent)
        try:
            runpy.run_path(str(script), run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - reported as the script's own traceback, exit code 1
            traceback.print_exc()
        atexit._run_exitfuncs()  # the script's: what its interpreter's exit would run
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_child(pid: int, timeout: float | None) -> int | None:
    """The child's exit code (a signal as -N, as subprocess reports it), or None once ``timeout`` seconds have
    passed; either way whatever is left of its session (worker processes) is killed, so nothing of one benchmark
    runs on beside the next."""
    deadline = None if timeout is None else time.monotonic() + timeout
    code = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(0.05)
    kill_session(pid)
    if code is None:
        os.waitpid(pid, 0)
    return code


def kill_session(pid: int) -> None:
    """Kill the session that the benchmark process ``pid`` leads: it and whatever it started (already gone: fine)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def summary_table(statuses: dict) -> dict:
    return {"columns": ["benchmark", "status", "size", "when", "seconds", "note"],
            "rows": [[f"`{n}.py`", s["status"], s.get("size", ""), s.get("when", ""), s["seconds"],
                      s.get("error") or ""] for n, s in statuses.items()]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick", help="small sizes (default)")
    size.add_argument("--full", dest="size", action="store_const", const="full", help="the sizes the docs quote")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(BENCHMARKS), help="run these only")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per benchmark [default: its quick_timeout with --quick, none with --full]")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--no-doc", action="store_true", help="do not regenerate the docs")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    ap.add_argument("--fresh-processes", action="store_true",
                    help="start a new interpreter per benchmark [default: fork this one after its imports]")
    args = ap.parse_args(argv)
    size = args.size or "quick"
    names = args.only or list(BENCHMARKS)
    if args.dry_run:
        for name in names:
            print(" ".join(command(name, size, args.results)))
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    statuses = {}
    t0 = time.perf_counter()
    if not args.fresh_processes:
        preload()
    for name in names:
        timeout = args.timeout or (BENCHMARKS[name].quick_timeout if size == "quick" else None)
        print(f"{name} ({size}) …", flush=True)
        statuses[name] = run_one(name, size, args.results, timeout, fork=not args.fresh_processes)
        print(f"  {statuses[name]}", flush=True)
    previous = args.results / "run_all.json"  # --only: the other benchmarks keep their last status
    kept = json.loads(previous.read_text()).get("benchmarks", {}) if previous.exists() else {}
    statuses = {n: ({**kept, **statuses})[n] for n in BENCHMARKS if n in {**kept, **statuses}}
    summary = {"benchmark": "run_all", "size": size, "ran": names, "wall_s": round(time.perf_counter() - t0, 1),
               "benchmarks": statuses, "table": summary_table(statuses)}
    write_result(args.results / "run_all.json", summary)
    if not args.no_doc:
        done = update_doc(args.doc, args.results)
        print(f"regenerated in {args.doc}: {', '.join(done) or 'nothing'}")
    return 0 if all(s["status"] == "ok" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
