"""Side-by-side leaderboard report (issue 23, §4): rows = data sets and tasks, columns = models, best in bold,
averages; markdown, HTML, bar charts; open_clip's openclip_results.csv layout as an export."""
from __future__ import annotations

import csv
import io
import json

import pytest

from clipzoo.errors import EvalInputError
from clipzoo.eval.leaderboard import leaderboard, leaderboard_html, leaderboard_markdown, openclip_csv
from clipzoo.eval.report import collect_results
from clipzoo.eval.results import make_result, write_result

A, B = ("ViT-B-32", "openai"), ("clipzoo/tiny-shapes", "")


def write_results(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(A, "cifar10", 0.90), (B, "cifar10", 0.40), (A, "wds_vtab-caltech101", 0.80),
            (B, "wds_vtab-caltech101", 0.85), (A, "shapes", 0.20)]
    for i, ((model, pre), ds, acc) in enumerate(rows):
        write_result(folder / f"zs{i}.json", make_result(ds, model, pre, "zeroshot", {"acc1": acc, "acc5": 1.0}))
    for i, ((model, pre), r) in enumerate(((A, (0.6, 0.8)), (B, (0.2, 0.4)))):
        write_result(folder / f"ret{i}.json", make_result("flickr30k", model, pre, "retrieval",
                                                          {"image_retrieval_recall@5": r[0],
                                                           "text_retrieval_recall@5": r[1]}))
    # CLIP_benchmark's own file (its schema, its task name)
    (folder / "cb.json").write_text(json.dumps({"dataset": "mnist", "model": "ViT-B-32", "pretrained": "openai",
                                                "task": "zeroshot_classification", "metrics": {"acc1": 0.5},
                                                "language": "en"}))
    (folder / "se.json").write_text(json.dumps({"benchmark": "senteval", "model": "clipzoo/tiny-shapes",
                                                "tasks": {"MR": {"devacc": 80.0, "acc": 75.5}}, "average": 75.5}))
    (folder / "el.json").write_text(json.dumps({"benchmark": "elevater", "mode": "zeroshot", "model": "ViT-B-32 openai",
                                                "datasets": {"cifar-10": {"metric": "accuracy", "score": 0.7,
                                                                          "acc1": 0.7}}, "average": 0.7}))
    return folder


def test_leaderboard_table_best_in_bold_and_averages(tmp_path):
    records = collect_results([str(write_results(tmp_path / "r"))])
    board = leaderboard(records)
    assert board["models"][:2] == ["ViT-B-32 openai", "clipzoo/tiny-shapes"]
    rows = {(t, d): v for (t, d, _), v in zip(board["rows"], board["values"])}
    assert rows[("zeroshot_retrieval", "flickr30k")] == pytest.approx({"ViT-B-32 openai": 0.7,
                                                                       "clipzoo/tiny-shapes": 0.3})
    assert rows[("senteval", "MR")] == {"clipzoo/tiny-shapes": pytest.approx(0.755)}
    assert rows[("elevater_zeroshot", "cifar-10")] == {"ViT-B-32 openai": 0.7}
    averages = dict(board["averages"])
    # an average is over every data set of the row: B has 2 of the 4 zero-shot sets, so none (not a better 0.625)
    assert averages["average (zeroshot_classification)"] == pytest.approx(
        {"ViT-B-32 openai": (0.9 + 0.8 + 0.2 + 0.5) / 4})
    md = leaderboard_markdown(board)
    assert "| zeroshot_classification | cifar10 | acc1 | **0.9000** | 0.4000 |" in md
    assert "| zeroshot_classification | wds_vtab-caltech101 | acc1 | 0.8000 | **0.8500** |" in md
    assert "| zeroshot_classification | shapes | acc1 | **0.2000** | – |" in md
    assert "| average (zeroshot_classification) |  |  | **0.6000** | – |" in md
    assert "| average |  |  | – | – |" in md  # neither has every row (A no SentEval, B no shapes, mnist, ELEVATER)
    html = leaderboard_html(board)
    assert "<td class=\"num\"><b>0.9000</b></td><td class=\"num\">0.4000</td>" in html and html.startswith("<!doctype")


def test_leaderboard_openclip_results_csv_layout(tmp_path):
    records = collect_results([str(write_results(tmp_path / "r"))])
    rows = list(csv.reader(io.StringIO(openclip_csv(records))))
    assert rows[0] == ["name", "pretrained", "Average perf. on 5 datasets", "Caltech-101", "CIFAR-10", "MNIST",
                       "Flickr", "shapes"]
    assert rows[1][:2] == ["ViT-B-32", "openai"]  # best average first
    assert float(rows[1][2]) == pytest.approx((0.8 + 0.9 + 0.5 + 0.7 + 0.2) / 5)
    assert rows[1][3:] == ["0.8000", "0.9000", "0.5000", "0.7000", "0.2000"]
    assert rows[2] == ["clipzoo/tiny-shapes", "", "", "0.8500", "0.4000", "", "0.3000", ""]  # 3 of 5: no average
    with pytest.raises(EvalInputError, match="no zero-shot classification or retrieval results"):
        openclip_csv([r for r in records if r["task"] == "senteval"])


def test_cli_eval_report_leaderboard_folder(tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    results = write_results(tmp_path / "r")
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["eval", "report", str(results), "-o", str(out) + "/"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bars_elevater_zeroshot.png", "bars_senteval.png", "bars_zeroshot_classification.png",
                     "bars_zeroshot_retrieval.png", "leaderboard.html", "leaderboard.md", "openclip_results.csv",
                     "results.csv"]
    assert (out / "bars_zeroshot_classification.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**0.9000**" in res.output and (out / "leaderboard.md").read_text() in res.output
    from clipzoo.eval.plots import plot_confusion_matrix

    plot_confusion_matrix([0, 1, 1], [0, 1, 0], ["cat", "dog"], results / "zs1.confusion.png")  # model B, cifar10
    res = CliRunner().invoke(app, ["eval", "report", str(results), "-o", str(out) + "/", "--no-plots",
                                   "--confusion-model", "clipzoo/tiny-shapes"])
    assert res.exit_code == 0, res.output
    copied = out / "confusion_cifar10_zeroshot_classification.png"
    assert copied.read_bytes() == (results / "zs1.confusion.png").read_bytes()
    res = CliRunner().invoke(app, ["eval", "report", str(results), "-o", str(out) + "/", "--confusion-model", "X"])
    assert res.exit_code == 2 and "no confusion matrix of model 'X' beside the results" in res.output
    prefix = CliRunner().invoke(app, ["eval", "report", str(results / "zs0.json"), "-o", str(tmp_path / "one")])
    assert prefix.exit_code == 0 and (tmp_path / "one.csv").is_file() and (tmp_path / "one.md").is_file()
