"""Issue 17 §7: no library warnings in the quickstart's output (scikit-learn's are fixed where they arise), and
the embedded model shows as `clipzoo/tiny-shapes` in what the quickstart prints and writes — reports, plots'
titles, `info`, `compare` — never its cache folder or hash.

The quickstart's commands (scripts/quickstart.sh) run here in one child process, on fewer images."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np

# The quickstart's commands, run through the CLI in one child process; prints [[exit code, stdout, stderr], ...]
RUN = """
import json, sys
from typer.testing import CliRunner
from clipzoo.cli import app
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    out.append([r.exit_code, r.stdout, r.stderr])
print(json.dumps(out))
"""


def _red_and_blue(folder):
    from PIL import Image, ImageDraw

    red = Image.new("RGB", (96, 96), (90, 110, 100))
    ImageDraw.Draw(red).ellipse([20, 20, 76, 76], fill=(225, 25, 25))
    red.save(folder / "red-circle.png")
    blue = Image.new("RGB", (96, 96), (150, 140, 120))
    ImageDraw.Draw(blue).polygon([(48, 14), (84, 74), (12, 74)], fill=(35, 75, 230))
    blue.save(folder / "blue-triangle.png")


def test_quickstart_prints_no_warnings_and_names_the_model(tmp_path):
    _red_and_blue(tmp_path)
    shapes, results = tmp_path / "shapes", tmp_path / "results"
    commands = [
        ["demo", "--no-serve", "-n", "14", "--dir", str(tmp_path / "demo"), "--no-progress"],
        ["info", "clipzoo/tiny-shapes"],
        ["compare", "clipzoo/tiny-shapes", "--image", str(tmp_path / "red-circle.png"), "--image",
         str(tmp_path / "blue-triangle.png"), "--text", "a red circle", "--text", "a blue triangle",
         "--text", "a green star"],
        # 100 images of 77 classes: the linear probe fits ~1 image per class, where scikit-learn used to warn
        ["data", "shapes", "--out", str(shapes), "-n", "100", "--label-key", "shape_color", "--two-object-prob",
         "0", "--no-progress", "--overwrite"],
        ["eval", "all", "-m", "clipzoo/tiny-shapes", "-d", str(shapes), "--output-dir", str(results), "--no-progress"],
    ]
    done = subprocess.run([sys.executable, "-W", "default", "-c", RUN, json.dumps(commands)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout.strip().splitlines()[-1])
    for args, (code, out, err) in zip(commands, outputs):
        assert code == 0, (args, out, err)
        text = out + err
        assert "warning" not in text.lower(), (args[:2], text)
        assert "tiny-shapes-" not in text and "/.cache/" not in text, (args[:2], text)  # no cache folder or hash
    assert "Warning" not in done.stderr, done.stderr  # nothing reached the child's own stderr either

    info_out = outputs[1][1]
    assert "embedded in the clipzoo package (clipzoo/tiny-shapes;" in info_out
    assert outputs[2][1].splitlines()[0] == "clipzoo/tiny-shapes: softmax over the texts (rows sum to 1)"
    records = json.loads(outputs[4][1])
    assert {(r["model"], r["pretrained"]) for r in records} == {("clipzoo/tiny-shapes", "")}
    report = (results / "report.md").read_text()
    assert "clipzoo/tiny-shapes" in report and "tiny-shapes-" not in report
    # the plots' titles: matplotlib writes them into the PNG's text only as pixels, so check what it was given
    written = sorted(p.name for p in results.iterdir())
    assert any(n.endswith(".confusion.png") for n in written) and all("tiny-shapes-" not in n for n in written)


def test_plot_title_names_the_embedded_model(tmp_path, monkeypatch):
    from clipzoo.eval import outputs

    titles = []
    monkeypatch.setattr(outputs, "plot_confusion_matrix", lambda *a, title, **k: titles.append(title) or a[3])
    monkeypatch.setattr(outputs, "plot_per_class_accuracy", lambda *a, title=None, **k: titles.append(title) or a[1])

    class Result:
        record = {"dataset": "shapes", "model": "clipzoo/tiny-shapes", "pretrained": "",
                  "task": "zeroshot_classification", "metrics": {"acc1": 1.0}, "language": "en"}
        details = {"predictions": np.array([0, 1]), "targets": np.array([0, 1]), "classnames": ["a", "b"]}

    outputs.save_task_result(Result(), tmp_path / "r.json")
    assert titles[0] == "zeroshot_classification: clipzoo/tiny-shapes — shapes"


def test_linear_probe_and_clustering_raise_no_library_warning():
    """At the library level, with every warning an error: few-shot data (more classes than half the samples)."""
    from clipzoo.eval.clustering import cluster_metrics
    from clipzoo.eval.linear_probe import linear_probe

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 8))
    y_train = np.repeat(np.arange(30), 2)  # 60 samples, 30 classes: sklearn's "regression?" guess
    x_train = centres[y_train] + 0.05 * rng.normal(size=(60, 8))
    y_test = np.arange(30)
    x_test = centres + 0.05 * rng.normal(size=(30, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = linear_probe(x_train, y_train, x_test, y_test, regularization=1.0)
        clusters = cluster_metrics(x_test, y_test, seed=0)
    assert out["lp_acc1"] == 1.0
    assert clusters["ari"] > 0.9
