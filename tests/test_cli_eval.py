"""``clipzoo eval``: tasks from the command line, JSON + plots, ``eval all`` and ``eval report``, and
one-line errors with exit status 2."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from clipzoo.cli import app
from clipzoo.datasets import write_shapes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    root = tmp_path_factory.mktemp("cli_eval")
    model = write_open_clip_safetensors(root / "tiny.safetensors", 0, embed_config=True)
    write_shapes(root / "shapes", 35, seed=2, image_size=32, shard_size=10)
    return root, str(model), str(root / "shapes")


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_zeroshot_prints_and_writes_the_result_and_its_plots(setup):
    from PIL import Image

    import clipzoo
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.eval.runner import Evaluator

    root, model, shapes = setup
    out = root / "out" / "zeroshot.json"
    code, stdout, stderr = run("eval", "zeroshot", "-m", model, "-d", shapes, "-o", out, "--workers", 0,
                               "--no-progress")
    assert code == 0, stderr
    printed = json.loads(stdout)
    assert json.loads(out.read_text()) == printed
    assert set(printed) >= {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert printed["task"] == "zeroshot_classification" and printed["dataset"] == "shapes"
    want = Evaluator(clipzoo.load(model), workers=0).zeroshot(open_dataset(shapes)).metrics
    assert printed["metrics"] == pytest.approx(want, abs=1e-12)
    for name in ("confusion", "per_class"):
        png = out.with_name(f"zeroshot.{name}.png")
        assert Image.open(png).size[0] > 100
    (root / "three.txt").write_text("circle\ncross\ndiamond\n")
    code, stdout, stderr = run("eval", "zeroshot", "-m", model, "-d", shapes, "--workers", 0, "--no-progress",
                               "--classnames", root / "three.txt")
    assert code == 2
    assert stderr.startswith(f"error: {shapes}/shapes.csv:")
    assert stderr.endswith("is not one of the 3 class names (circle, cross, diamond); the class names do not "
                           "match the data\n")


def test_eval_all_embeds_once_and_writes_a_report(setup):
    root, model, shapes = setup
    out = root / "all"
    code, stdout, stderr = run("eval", "all", "-m", model, "-d", shapes, "--output-dir", out, "--workers", 0,
                               "--no-progress", "--no-plots")
    assert code == 0, stderr
    records = json.loads(stdout)
    assert [r["task"] for r in records] == ["zeroshot_classification", "zeroshot_retrieval", "linear_probe", "knn",
                                            "cluster"]
    files = sorted(p.name for p in out.glob("*.json"))
    assert len(files) == 5 and all(f.startswith("shapes_") for f in files)
    assert (out / "report.csv").exists()
    md = (out / "report.md").read_text()
    assert "tiny" in md
    code, stdout, stderr = run("eval", "report", str(out), "--out", root / "merged")
    assert code == 0, stderr
    assert (root / "merged.csv").read_text() == (out / "report.csv").read_text()
    assert stdout == md


def test_knn_and_linear_probe_from_the_cli(setup):
    root, model, shapes = setup
    code, stdout, stderr = run("eval", "knn", "-m", model, "-d", shapes, "-k", 3, "--workers", 0, "--no-progress")
    assert code == 0, stderr
    assert set(json.loads(stdout)["metrics"]) == {"knn_acc1", "knn_acc5", "knn_mean_per_class_recall"}
    code, stdout, stderr = run("eval", "linear-probe", "-m", model, "-d", shapes, "--workers", 0, "--no-progress")
    assert code == 0, stderr
    metrics = json.loads(stdout)["metrics"]
    assert {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "regularization"} <= set(metrics)


@pytest.mark.parametrize("args, message", [
    (["eval", "zeroshot", "-m", "MODEL", "-d", "nowhere/"], "error: data set 'nowhere/' does not exist"),
    (["eval", "zeroshot", "-m", "MODEL", "-d", "SHAPES/shapes.csv", "--label-key", "kind"],
     "error: CSV file '{shapes}/shapes.csv' has no column 'kind' (columns: filepath, caption, shape, color, size, "
     "position, shape_color; separator ','); name the right column with --label-key"),
    (["eval", "zeroshot", "-m", "MODEL", "-d", "SHAPES", "--classnames", "a.txt"],
     "error: cannot read class names file 'a.txt'"),
    (["eval", "zeroshot", "-m", "no-such-model-xyz", "-d", "SHAPES"], "error: "),
    (["eval", "all", "-m", "MODEL", "-d", "SHAPES", "--task", "segmentation"],
     "error: unknown task 'segmentation': choose from zeroshot, retrieval, linear-probe, knn, cluster"),
    (["eval", "report", "nothing-here/*.json"], "error: "),
])
def test_bad_input_is_one_line_and_exit_2(setup, args, message):
    root, model, shapes = setup
    args = [a.replace("MODEL", model).replace("SHAPES", shapes) for a in args]
    code, stdout, stderr = run(*args)
    assert code == 2
    assert stderr.startswith(message.format(shapes=shapes)), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


def test_output_never_destroys_an_input_and_never_writes_through_a_link(setup, tmp_path):
    """-o onto the class names file, the data set's CSV or a link to a user's file replaced them with the result
    (exit 0); -o onto a folder failed with a raw [Errno 21] after the whole evaluation."""
    import shutil

    root, model, shapes = setup
    data = tmp_path / "s"
    shutil.copytree(shapes, data)
    names = tmp_path / "names.txt"
    names.write_text("circle\ncross\ndiamond\nheart\nsquare\nstar\ntriangle\n")
    before = {p: p.read_bytes() for p in (names, data / "shapes.csv")}
    base = ["eval", "zeroshot", "-m", model, "-d", data, "--classnames", names, "--workers", 0, "--no-progress"]
    for out, what, given in [(names, "is the input", names), (data, None, None),
                             (data / "shapes.csv", "is a file in the input folder", data)]:
        code, stdout, stderr = run(*base, "-o", out)
        assert code == 2 and stdout == "", stderr  # refused before evaluating: nothing printed
        assert stderr == (f"error: --output {str(out)!r} is a folder; pass a file name\n" if what is None else
                          f"error: --output {str(out)!r} {what} {str(given)!r}: writing there would destroy it; "
                          "choose another file\n")
    assert {p: p.read_bytes() for p in before} == before
    (tmp_path / "precious.txt").write_text("precious")
    (tmp_path / "lk.json").symlink_to(tmp_path / "precious.txt")
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    for link in ("lk.json", "dangling.json"):
        code, stdout, stderr = run(*base, "-o", tmp_path / link, "--no-plots")
        assert code == 0, stderr
        assert not (tmp_path / link).is_symlink() and json.loads((tmp_path / link).read_text()) == json.loads(stdout)
    assert (tmp_path / "precious.txt").read_text() == "precious" and not (tmp_path / "nowhere.json").exists()
    for t in ("0", "-1"):  # votes exp(sim / T): accuracy 0.1 and 0.0, silently
        code, _, stderr = run("eval", "knn", "-m", model, "-d", shapes, "--temperature", t, "--no-progress")
        assert (code, stderr) == (2, f"error: --temperature must be above 0, got {t}\n")


def test_strict_fails_on_the_first_bad_image(setup, tmp_path):
    import shutil

    root, model, shapes = setup
    copy = tmp_path / "s"
    shutil.copytree(shapes, copy)
    bad = sorted((copy / "images").rglob("*.png"))[3]
    bad.write_bytes(b"oops")
    code, stdout, stderr = run("eval", "zeroshot", "-m", model, "-d", copy, "--workers", 0, "--no-progress")
    assert code == 0 and f"skipped 1 unreadable image(s) (listed in the result), first: {bad}" in stderr
    assert json.loads(stdout)["skipped_images"] == 1
    code, stdout, stderr = run("eval", "zeroshot", "-m", model, "-d", copy, "--workers", 0, "--no-progress",
                               "--strict")
    assert code == 2 and stderr.startswith(f"error: image '{bad}' cannot be decoded")


def test_text_tasks_from_the_cli_equal_the_library(setup, tmp_path):
    import clipzoo
    from clipzoo.eval import load_text_retrieval, read_pairs, similarity_evaluate, text_retrieval_evaluate

    root, model, _ = setup
    m = clipzoo.load(model)
    folder = tmp_path / "marco"
    folder.mkdir()
    (folder / "queries.tsv").write_text("q1\tred circle\nq2\tblue square\nq3\tgreen star\n")
    (folder / "collection.tsv").write_text("p1\ta red circle on the left\np2\ta blue square\np3\ta green star\n"
                                           "p4\ta yellow heart\n")
    (folder / "qrels.tsv").write_text("q1 0 p1 1\nq2 0 p2 1\nq3 0 p3 1\nq3 0 p4 0\n")
    code, stdout, stderr = run("eval", "text-retrieval", "-m", model, "-d", folder)
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["task"] == "text_retrieval" and record["dataset"] == "marco"
    assert record["metrics"] == pytest.approx(text_retrieval_evaluate(m, *load_text_retrieval(folder)), abs=1e-12)
    assert record["metrics"]["n_queries"] == 3

    sts = tmp_path / "pairs.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na red circle\ta red ring\t4.5\na dog\ta car\t0.5\n"
                   "a blue square\ta blue box\t4.0\na star\ta heart\t1.5\n")
    code, stdout, stderr = run("eval", "similarity", "-m", model, "-d", sts, "-o", tmp_path / "sim.json")
    assert code == 0, stderr
    record = json.loads(stdout)
    assert record["metrics"] == pytest.approx(similarity_evaluate(m, read_pairs(sts)), abs=1e-12)
    assert record["metrics"]["n_pairs"] == 4
    assert json.loads((tmp_path / "sim.json").read_text()) == record
