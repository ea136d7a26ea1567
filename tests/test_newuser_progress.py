"""Issue 17 §7: `clipzoo train` in a non-TTY (piped to a file or a CI log) prints a line every few seconds with
the step, the loss, samples/s and the time left — not a silent run, and not a bar's control characters."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from clipzoo import progress

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
LINE = re.compile(r"^training: (\d+)/(\d+) steps \(([\d.,]+) steps/s, (\d+) s, eta (\d+) s\) · loss ([\d.]+) · "
                  r"([\d.,]+) samples/s$")


def test_plain_lines_come_every_few_seconds():
    assert progress.PLAIN_EVERY_S <= 10


def test_train_through_a_pipe_prints_step_loss_speed_and_eta(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"model_config": TINY, "log_every": 1}))
    env = {**os.environ, "CLIPZOO_PROGRESS_EVERY_S": "0.05", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "clipzoo", "train", "--config", str(tmp_path / "m.json"),
                           "--data", "shapes:32", "--steps", "4", "--batch-size", "8", "--output",
                           str(tmp_path / "run"), "--workers", "0"],
                          capture_output=True, text=True, timeout=300, env=env)  # stderr is a pipe: no TTY
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("training: ")]
    assert "\x1b" not in done.stderr and "\r" not in done.stderr  # plain lines, no bar
    parsed = [LINE.match(ln) for ln in lines]
    assert lines and all(parsed), lines
    steps = [int(m.group(1)) for m in parsed]
    assert steps == sorted(set(steps)) and steps[-1] == 4 and {int(m.group(2)) for m in parsed} == {4}
    assert int(parsed[-1].group(5)) == 0  # nothing left at the end
    assert all(float(m.group(7).replace(",", "")) > 0 for m in parsed)
    # the loss shown is the step's loss, as metrics.jsonl records it
    records = map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    logged = {r["step"]: r["loss"] for r in records if "loss" in r}
    for m in parsed:
        assert float(m.group(6)) == round(logged[int(m.group(1))], 4)
