"""The picture of a run: training loss and zero-shot acc1 against steps, from its ``metrics.jsonl``.

    from clipzoo.train.curves import plot_run
    plot_run("runs/tiny-shapes", "curves.png")          # a run folder, or the metrics.jsonl itself

The loss is drawn as logged (every ``log_every`` steps); evaluations (``eval/acc1`` lines) on a second
axis, each marked with the time since the run began.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ClipzooError

__all__ = ["read_metrics", "plot_run"]


def read_metrics(run: "str | os.PathLike") -> tuple[list[dict], list[dict]]:
    """(step records, evaluation records) of a run folder or a ``metrics.jsonl`` file."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise ClipzooError(f"{path} does not exist; pass a run folder (OUTPUT of `clipzoo train`) or its metrics.jsonl")
    steps, evals = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ClipzooError(f"{path}, line {n}: not JSON ({line[:60]!r})") from None
        if "loss" in record:
            steps.append(record)
        elif "eval/acc1" in record:
            evals.append(record)
    if not steps:
        raise ClipzooError(f"{path} holds no logged training steps")
    return steps, evals


def plot_run(run: "str | os.PathLike", out: "str | os.PathLike", title: "str | None" = None) -> Path:
    """Write a PNG of the run's loss (left axis) and zero-shot acc1 (right axis) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, evals = read_metrics(run)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", lw=1.4, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(alpha=0.3)
    if evals:
        acc = ax.twinx()
        xs, ys = [r["step"] for r in evals], [100 * r["eval/acc1"] for r in evals]
        acc.plot(xs, ys, color="tab:red", marker="o", lw=1.4, label="zero-shot acc1")
        acc.set_ylabel("zero-shot acc1 (%)", color="tab:red")
        acc.set_ylim(0, 100)
        for r, x, y in zip(evals, xs, ys):
            label = f"{y:.1f} %" + (f"\n{r['elapsed_s']:.0f} s" if "elapsed_s" in r else "")
            acc.annotate(label, (x, y), textcoords="offset points", xytext=(0, -26 if y > 80 else 8),
                         ha="center", fontsize=7, color="tab:red")
    ax.set_title(title or Path(run).name, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
