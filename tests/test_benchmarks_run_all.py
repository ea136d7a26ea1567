"""Issue 22 §7 (benchmark tables that cannot go stale), §6 (latency.py) and §4 (decode.py), for correctness.

The table generator runs on fixture JSON files (never the benchmarks themselves); run_all lists every script of
benchmarks/ and records size, command and machine beside a result; latency.py's statistics and one real cold
start of ``clipzoo serve``; decode.py's decoders agree with PIL's full decode where they must.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))  # the benchmark scripts import their helper module `tables` by name


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


tables = _module("tables")
run_all = _module("run_all")
latency = _module("latency")
decode = _module("decode")

MACHINE = {"when": "2026-12-03T10:00:00Z", "cpu_model": "Intel(R) Xeon(R) Processor",
           "cpu_flags": ["avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"],
           "cores": 2, "load_average": [0.5, 0.75, 1.0], "python": "3.11.7", "commit": "abc123def456"}


def test_issue22_s7_every_benchmark_script_is_listed_in_run_all():
    found = run_all.scripts()
    assert {"latency", "decode", "serve_load", "embed_folder"} <= set(found)
    missing = sorted(set(found) - set(run_all.BENCHMARKS))
    assert not missing, f"benchmarks/ scripts not in run_all.BENCHMARKS (add a line with quick/full args): {missing}"
    assert sorted(run_all.BENCHMARKS) == found, "run_all lists a benchmark whose script is gone"


@pytest.mark.parametrize("name", sorted(run_all.BENCHMARKS))
def test_issue22_s7_run_all_arguments_are_flags_of_the_script(name):
    """Each quick / full argument list (and --out) names only flags the script's --help lists."""
    import re
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-300:]
    known = set(re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", done.stdout))
    bench = run_all.BENCHMARKS[name]
    used = {w for w in [*bench.quick, *bench.full, *(["--out"] if bench.out else [])] if w.startswith("--")}
    assert used <= known, f"{name}.py has no {sorted(used - known)}"


def test_issue22_s7_scripts_ignores_helpers(tmp_path):
    for name in ("run_all.py", "tables.py", "_private.py", "a.py", "b.py", "notes.txt"):
        (tmp_path / name).write_text("")
    assert run_all.scripts(tmp_path) == ["a", "b"]


def test_issue22_s7_cpu_flags_from_cpuinfo():
    info = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512bw amx_tile avx512_vnni\nprocessor\t: 1\n"
    assert tables.cpu_flags(info) == ["avx512f", "avx512_vnni", "amx_tile"]
    assert tables.cpu_flags("flags : fpu sse2\n") == []
    assert tables.cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: fpu\n") == "AMD EPYC"
    assert tables.cpu_model("flags : fpu\n") == ""
    m = tables.machine_info()
    assert m["cores"] >= 1 and len(m["load_average"]) == 3 and set(m["cpu_flags"]) <= set(tables.CPU_FLAGS)


DOC = """# Benchmarks

Hand-written prose stays.

<!-- bench:latency -->
old latency table
<!-- /bench:latency -->

More prose.

<!-- bench:missing -->
kept: no results/missing.json
<!-- /bench:missing -->

<!-- bench:int8_fidelity -->
<!-- /bench:int8_fidelity -->

<!-- bench:embed_folder -->
<!-- /bench:embed_folder -->
"""


def test_issue22_s7_table_generator_renders_fixture_json(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "latency.json").write_text(json.dumps({
        "benchmark": "latency", "machine": MACHINE, "size": "quick",
        "table": {"columns": ["figure", "value", "goal met"],
                  "rows": [["cold start", 2.5, True], ["p50 ms", 12.25, False], ["search", None, True]]}}))
    (results / "int8_fidelity.json").write_text(json.dumps({
        "batch_sizes": [1, 64], "machine": "x86_64", "runtimes": {"onnx-int8": {
            "image": {"min_cosine": {"1": 0.99901, "64": 0.99923}, "max_change_across_batch_sizes": 0.00113},
            "text": {"min_cosine": {"1": 0.99916, "64": 0.99463}, "max_change_across_batch_sizes": 0.00422}}}}))
    (results / "embed_folder.json").write_text(json.dumps({"benchmark": "embed_folder", "output": "eager 14.5 img/s",
                                                           "machine": MACHINE}))
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text(DOC)
    assert sorted(tables.update_doc(doc, results)) == ["embed_folder", "int8_fidelity", "latency"]
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written prose stays.\n\n<!-- bench:latency -->\n")
    assert "More prose." in text and "kept: no results/missing.json" in text and "old latency table" not in text
    latency_block = text.split("<!-- bench:latency -->\n")[1].split("<!-- /bench:latency -->")[0]
    assert latency_block == (
        "| figure | value | goal met |\n"
        "|---|---:|---|\n"
        "| cold start | 2.5 | yes |\n"
        "| p50 ms | 12.25 | no |\n"
        "| search |  | yes |\n"
        "\n"
        "*measured 2026-12-03T10:00:00Z; commit `abc123def456`; 2 cores; load average 0.50 / 0.75 / 1.00; "
        "CPU: Intel(R) Xeon(R) Processor; CPU flags: avx512f avx512_vnni avx512_bf16 amx_bf16; size: quick; "
        "file: `benchmarks/results/latency.json`.*\n")
    assert ("| `onnx-int8` | 0.9990 / 0.9992 | 0.9992 / 0.9946 | 1.1e-03 / 4.2e-03 |" in text)
    assert "| runtime | image min cosine (batch 1 / 64) |" in text
    assert "```\neager 14.5 img/s\n```" in text
    assert tables.update_doc(doc, results) and doc.read_text() == text  # regenerating is stable


def test_issue22_s7_run_one_records_machine_and_keeps_previous_result_on_failure(tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "good.py").write_text(
        "import argparse, json\nap = argparse.ArgumentParser()\nap.add_argument('--n', type=int)\n"
        "ap.add_argument('--out')\na = ap.parse_args()\n"
        "open(a.out, 'w').write(json.dumps({'benchmark': 'good', 'n': a.n, 'machine': {'cores': 99}}))\n")
    (bench / "bad.py").write_text("import sys\nprint('no such model', file=sys.stderr)\nsys.exit(3)\n")
    (bench / "printing.py").write_text("print('rate 12.5 images/s')\n")
    monkeypatch.setattr(run_all, "HERE", bench)
    monkeypatch.setattr(run_all, "BENCHMARKS", {"good": run_all.Bench(["--n", "2"], ["--n", "9"]),
                                                "bad": run_all.Bench([]),
                                                "printing": run_all.Bench([], out=False)})
    results = tmp_path / "results"
    results.mkdir()
    (results / "bad.json").write_text('{"previous": true}')
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- bench:good -->\n<!-- /bench:good -->\n<!-- bench:run_all -->\n<!-- /bench:run_all -->\n")
    rc = run_all.main(["--full", "--results", str(results), "--doc", str(doc)])
    assert rc == 1  # one failed
    good = json.loads((results / "good.json").read_text())
    assert good["n"] == 9 and good["size"] == "full" and good["machine"]["cores"] == 99  # the script's own wins
    assert good["command"].endswith("good.py --n 9 --out " + str(results / "good.json"))
    assert {"cpu_flags", "load_average", "commit", "when"} <= set(good["machine"])
    assert json.loads((results / "bad.json").read_text()) == {"previous": True}
    assert json.loads((results / "printing.json").read_text())["output"] == "rate 12.5 images/s"
    record = json.loads((results / "run_all.json").read_text())
    assert record["ran"] == ["good", "bad", "printing"]
    assert record["wall_s"] >= sum(s["seconds"] for s in record["benchmarks"].values()) - 0.2  # each is rounded
    summary = record["benchmarks"]
    assert summary["bad"]["status"] == "failed" and summary["bad"]["error"] == "no such model"
    assert summary["good"]["status"] == "ok" and summary["printing"]["status"] == "ok"
    text = doc.read_text()
    assert "| `bad.py` | failed | full |" in text and "| no such model |" in text
    assert '"n": 9' in text.split("<!-- bench:good -->")[1].split("<!-- /bench:good -->")[0]  # no table: the JSON


def test_issue22_s7_dry_run_lists_commands(capsys):
    assert run_all.main(["--quick", "--only", "latency", "decode", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[1:] == [str(BENCH / "latency.py"), "--repeats", "2", "--queries", "50", "--out",
                                    str(BENCH / "results" / "latency.json")]


def test_issue22_s6_latency_statistics():
    lat = [float(x) for x in range(1, 101)]
    assert latency.percentile(lat, 50) == pytest.approx(np.percentile(lat, 50))
    assert latency.percentile(lat, 99) == pytest.approx(np.percentile(lat, 99))
    starts = [{"health_s": 1.0, "first_search_s": 3.0, "latencies_ms": [10.0, 20.0]},
              {"health_s": 3.0, "first_search_s": 4.0, "latencies_ms": [30.0]}]
    s = latency.summarize([1.0, 2.0], starts, [2.0, 3.0])
    assert s["cold_start_first_search_s"]["median"] == 3.5 and s["query_ms"]["p50"] == 20.0
    assert s["import_torch_s"]["best"] == 1.0 and s["cold_start_health_s"]["median"] == 2.0
    assert s["ratio_to_import_torch"] == {"cold_start": pytest.approx(7 / 3), "search_cli": pytest.approx(5 / 3)}
    assert s["goals"]["cold_start_s"]["met"] is False and s["goals"]["search_cli_s"]["met"] is False
    assert s["goals"]["query_p50_ms"]["met"] is False
    s = latency.summarize([1.0], [{"health_s": 0.5, "first_search_s": 1.0, "latencies_ms": [5.0]}], [1.5])
    assert all(g["met"] for g in s["goals"].values())
    rows = latency.table(s)["rows"]
    assert [r[4] for r in rows if r[4]] == ["met", "met", "met"]


def test_issue22_s6_cold_start_answers_health_then_search(tmp_path):
    index = latency.build_index(tmp_path, 8)
    r = latency.cold_start(index, tmp_path / "serve.log", queries=3)
    assert 0 < r["health_s"] <= r["first_search_s"]
    assert r["first_hits"] == 8 and r["first_top"]["caption"]
    assert len(r["latencies_ms"]) == 3 and all(x > 0 for x in r["latencies_ms"])


def test_issue22_s4_decoders_agree_with_pil_full_decode(tmp_path):
    embed_folder = _module("embed_folder")
    files = embed_folder.write_photos(tmp_path, 3)
    blobs = [Path(f).read_bytes() for f in files]
    for data in blobs:
        ref = decode.pil_full(data, 224)
        assert ref.shape == (224, 224, 3) and ref.dtype == np.uint8
        for name in ("torchvision", "simplejpeg", "clipzoo_pil_resize"):  # libjpeg-turbo's full decode, PIL's
            assert np.array_equal(decode.DECODERS[name](data, 224), ref), name  # resize: the same pixels
        fast = decode.DECODERS["clipzoo"](data, 224)  # torch's antialiased resize: within one level
        assert fast.shape == ref.shape and np.abs(fast.astype(int) - ref.astype(int)).max() <= 1
        draft = decode.pil_draft(data, 224)  # DCT-scaled decode: close, not equal
        diff = np.abs(draft.astype(int) - ref.astype(int))
        assert draft.shape == ref.shape and 0 < diff.max() < 64 and diff.mean() < 2
        assert np.array_equal(decode.DECODERS["simplejpeg_scaled"](data, 224), draft)
    rate, arrays = decode.speed(decode.pil_full, blobs, 224, 1)
    assert rate > 0 and len(arrays) == 3


def test_issue22_s7_forked_benchmark_exit_codes_output_and_exit_handlers(tmp_path):
    """run_all forks this process per benchmark (its imports done once): the script runs as ``__main__`` with its
    arguments, its exit code, output and own exit handlers are kept; the parent's exit handlers do not run in it."""
    import atexit

    marker = tmp_path / "parent-handler-ran"
    atexit.register(marker.write_text, "x")  # the parent's: must not run in a child
    try:
        script = tmp_path / "script.py"
        script.write_text(
            "import atexit, pathlib, sys\n"
            "atexit.register(pathlib.Path(sys.argv[1]).write_text, 'cleaned')\n"
            "print('args', sys.argv[1:], __name__)\n"
            "if sys.argv[2] == 'raise':\n    raise ValueError('bad weights file')\n"
            "if sys.argv[2] == 'message':\n    sys.exit('no such model')\n"
            "sys.exit(int(sys.argv[2]))\n")
        rc, out, err = run_all.run_forked(script, [str(tmp_path / "done"), "0"], 60)
        assert (rc, err) == (0, "") and out == f"args ['{tmp_path / 'done'}', '0'] __main__\n"
        assert (tmp_path / "done").read_text() == "cleaned"
        assert run_all.run_forked(script, [str(tmp_path / "d3"), "3"], 60)[0] == 3
        rc, _, err = run_all.run_forked(script, [str(tmp_path / "d4"), "raise"], 60)
        assert rc == 1 and err.strip().splitlines()[-1] == "ValueError: bad weights file"
        rc, _, err = run_all.run_forked(script, [str(tmp_path / "d5"), "message"], 60)
        assert rc == 1 and err == "no such model\n"
        assert not marker.exists()
    finally:
        atexit.unregister(marker.write_text)


@pytest.mark.parametrize("how", ["forked", "subprocess"])
def test_issue22_s7_benchmark_timeout_kills_what_it_started(tmp_path, how):
    """Past its time a benchmark is killed at once, with the processes it started — forked from run_all, or in
    its own interpreter (``--fresh-processes``, the MindSpore venv)."""
    import time

    script = tmp_path / "slow.py"
    pid_file = tmp_path / "worker.pid"
    script.write_text(
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n")
    t = time.monotonic()
    if how == "forked":
        rc, _, _ = run_all.run_forked(script, [], 1.5)
    else:
        done = [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]
        assert run_all.run_subprocess(done, 30) == (3, "out\n", "err\n")
        rc, _, _ = run_all.run_subprocess([sys.executable, str(script)], 1.5)
    assert rc is None and time.monotonic() - t < 5
    worker = int(pid_file.read_text())
    for _ in range(50):  # SIGKILLed: gone, or a zombie until whoever adopted it reaps it
        if not running(worker):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker {worker} still runs")


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
