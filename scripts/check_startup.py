"""Start-up budgets, checked by .ci/run: ``import clipzoo`` ≤ 0.3 s and ``clipzoo models`` ≤ 2 s.

Each is the best of several runs in fresh interpreters (the least disturbed by other load on the
machine); ``clipzoo models`` runs once first to cache open_clip's catalogue, as any first use does.
Usage: python scripts/check_startup.py   (exit 1 and a line per budget exceeded)
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

IMPORT_BUDGET_S = 0.3
MODELS_BUDGET_S = 2.0


def best_import_seconds(runs: int = 5) -> float:
    code = "import time; t = time.perf_counter(); import clipzoo; print(time.perf_counter() - t)"
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout) for _ in range(runs))


def best_command_seconds(argv: list[str], runs: int = 3) -> float:
    subprocess.run(argv, capture_output=True, check=True)  # warm: caches open_clip's catalogue
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    beside = Path(sys.executable).with_name("clipzoo")
    clipzoo_cli = str(beside) if beside.exists() else shutil.which("clipzoo")
    if clipzoo_cli is None:
        sys.exit("the clipzoo command is not installed: pip install -e . first")
    result = {"import_clipzoo_s": round(best_import_seconds(), 3),
              "clipzoo_models_s": round(best_command_seconds([clipzoo_cli, "models"]), 3)}
    print(json.dumps(result))
    failures = []
    if result["import_clipzoo_s"] > IMPORT_BUDGET_S:
        failures.append(f"import clipzoo took {result['import_clipzoo_s']} s (budget {IMPORT_BUDGET_S} s)")
    if result["clipzoo_models_s"] > MODELS_BUDGET_S:
        failures.append(f"clipzoo models took {result['clipzoo_models_s']} s (budget {MODELS_BUDGET_S} s)")
    for line in failures:
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
