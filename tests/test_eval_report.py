"""``clipzoo.eval.report``: collecting result files (ours and CLIP_benchmark's), the CSV and the markdown."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest

from clipzoo.errors import EvalInputError
from clipzoo.eval.report import collect_results, csv_text, markdown_table, results_table, write_csv, write_report
from clipzoo.eval.results import make_result, write_result

NAN = float("nan")

# 2 models x 2 data sets x 2 tasks; RN50 on mnist lacks acc5, ViT-B-32 lp on mnist has a NaN acc5
RECORDS = [
    make_result("cifar10", "ViT-B-32", "openai", "zeroshot",
                {"acc1": 0.8983, "acc5": 0.99641, "mean_per_class_recall": 0.8982}),
    make_result("mnist", "ViT-B-32", "openai", "zeroshot",
                {"acc1": 0.4836, "acc5": 0.8, "mean_per_class_recall": 0.47}),
    make_result("cifar10", "RN50", "yfcc15m", "zeroshot", {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.51}),
    make_result("mnist", "RN50", "yfcc15m", "zeroshot", {"acc1": 0.25, "mean_per_class_recall": 0.26}),
    make_result("cifar10", "ViT-B-32", "openai", "linear-probe", {"lp_acc1": 0.95, "lp_acc5": 0.999,
                                                                  "lp_mean_per_class_recall": 0.95}),
    make_result("mnist", "ViT-B-32", "openai", "linear-probe", {"lp_acc1": 0.99, "lp_acc5": NAN,
                                                                "lp_mean_per_class_recall": 0.98}),
    make_result("cifar10", "RN50", "yfcc15m", "linear-probe", {"lp_acc1": NAN, "lp_acc5": 0.97,
                                                               "lp_mean_per_class_recall": 0.8}),
    make_result("mnist", "RN50", "yfcc15m", "linear-probe", {"lp_acc1": 0.9712345, "lp_acc5": 1.0,
                                                             "lp_mean_per_class_recall": 0.97}),
]

# exactly what ``clip_benchmark eval`` writes: json.dump(dump, f) with no indent, NaN as a bare literal
CLIP_BENCHMARK_TEXT = ('{"dataset": "cars", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", '
                       '"task": "zeroshot_classification", "metrics": {"acc1": 0.8591, "acc5": NaN, '
                       '"mean_per_class_recall": 0.8588}, "language": "en"}')
CLIP_BENCHMARK_NAME = "cars_laion2b_s34b_b79k_ViT-B-32_en_zeroshot_classification.json"


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "results"
    for r in RECORDS:
        write_result(d / f"{r['dataset']}_{r['pretrained']}_{r['model']}_{r['language']}_{r['task']}.json", r)
    return d


def _same(a, b):
    """Equality of records where NaN == NaN."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same(a[k], b[k])
        elif isinstance(a[k], float) and math.isnan(a[k]):
            assert isinstance(b[k], float) and math.isnan(b[k]), k
        else:
            assert a[k] == b[k], k


# ------------------------------------------------------------------ collecting
def test_reads_a_clip_benchmark_result_file(tmp_path):
    (tmp_path / CLIP_BENCHMARK_NAME).write_text(CLIP_BENCHMARK_TEXT)
    [rec] = collect_results([tmp_path / CLIP_BENCHMARK_NAME])
    _same(rec, {"dataset": "cars", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
                "task": "zeroshot_classification", "language": "en",
                "metrics": {"acc1": 0.8591, "acc5": NAN, "mean_per_class_recall": 0.8588}})
    # with dumped class names and templates (--dump_classnames / --dump_templates) they stay out of the table
    data = json.loads(CLIP_BENCHMARK_TEXT)
    data.update(classnames=["a", "b"], templates=["a photo of a {c}."])
    (tmp_path / "with_names.json").write_text(json.dumps(data))
    columns, rows = results_table(collect_results(str(tmp_path / "with_names.json")))
    assert columns == ["dataset", "model", "pretrained", "task", "language", "acc1", "acc5",
                       "mean_per_class_recall", "model_fullname"]
    assert rows[0]["model_fullname"] == "ViT-B-32 laion2b_s34b_b79k"


def test_folders_recursively_globs_and_files_each_read_once(folder, tmp_path):
    (folder / "sub").mkdir()
    (folder / "sub" / CLIP_BENCHMARK_NAME).write_text(CLIP_BENCHMARK_TEXT)
    (folder / "notes.txt").write_text("not json, not read")
    assert len(collect_results(folder)) == 9
    assert len(collect_results([str(folder / "*_linear_probe.json")])) == 4
    assert len(collect_results([str(folder / "**" / "cars_*.json")])) == 1
    # the same file named twice (directly and through the folder) is read once
    assert len(collect_results([folder / "sub" / CLIP_BENCHMARK_NAME, folder])) == 9


def test_a_json_that_is_not_a_result_is_an_error_naming_it(folder):
    bad = folder / "zz_config.json"
    bad.write_text('{"model": "ViT-B-32", "batch_size": 64}')
    with pytest.raises(EvalInputError, match=r"zz_config\.json: not a CLIP_benchmark result, missing key\(s\) "
                                             r"dataset, pretrained, task, metrics, language"):
        collect_results([folder])
    bad.write_text("{broken")
    with pytest.raises(EvalInputError, match=r"zz_config\.json: not valid JSON"):
        collect_results([bad])


def test_paths_matching_nothing_are_named(folder, tmp_path):
    with pytest.raises(EvalInputError, match=r"no result files found for '.*nothing-here/\*\.json'"):
        collect_results([str(tmp_path / "nothing-here" / "*.json")])
    # one good path does not hide a misspelt one
    with pytest.raises(EvalInputError, match=r"no result files found for '.*missing\.json' \(give JSON files"):
        collect_results([folder, tmp_path / "missing.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalInputError, match=r"no result files found for '.*empty'"):
        collect_results(tmp_path / "empty")
    with pytest.raises(EvalInputError, match="no result files given"):
        collect_results([])


# ------------------------------------------------------------------ CSV
def test_csv_round_trips_exact_values(folder, tmp_path):
    out = write_csv(collect_results(folder), tmp_path / "out" / "bench.csv")
    reader = csv.reader(io.StringIO(out.read_text()))
    header = next(reader)
    assert header == ["dataset", "model", "pretrained", "task", "language",
                      "acc1", "acc5", "mean_per_class_recall", "lp_acc1", "lp_acc5", "lp_mean_per_class_recall",
                      "model_fullname"]
    rows = [dict(zip(header, line)) for line in reader]
    # sorted by task (zero-shot first), data set, model, pretrained
    assert [(r["task"], r["dataset"], r["model"]) for r in rows] == [
        ("zeroshot_classification", "cifar10", "RN50"), ("zeroshot_classification", "cifar10", "ViT-B-32"),
        ("zeroshot_classification", "mnist", "RN50"), ("zeroshot_classification", "mnist", "ViT-B-32"),
        ("linear_probe", "cifar10", "RN50"), ("linear_probe", "cifar10", "ViT-B-32"),
        ("linear_probe", "mnist", "RN50"), ("linear_probe", "mnist", "ViT-B-32")]
    assert rows[1] == {"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "openai",
                       "task": "zeroshot_classification", "language": "en", "acc1": "0.8983", "acc5": "0.99641",
                       "mean_per_class_recall": "0.8982", "lp_acc1": "", "lp_acc5": "",
                       "lp_mean_per_class_recall": "", "model_fullname": "ViT-B-32 openai"}
    assert rows[2]["acc5"] == ""                      # missing metric: empty cell
    assert rows[4]["lp_acc1"] == "nan"                # NaN stays NaN (as CLIP_benchmark's csv writes it)
    assert float(rows[6]["lp_acc1"]) == 0.9712345     # floats are written exactly
    assert rows[6]["acc1"] == ""


def test_table_does_not_depend_on_the_order_files_are_found():
    assert csv_text(RECORDS) == csv_text(RECORDS[::-1]) == csv_text(RECORDS[3:] + RECORDS[:3])
    assert markdown_table(RECORDS) == markdown_table(RECORDS[::-1])


def test_extra_keys_follow_the_metrics():
    recs = [make_result("shapes", "tiny", "local", "knn", {"knn_acc1": 0.5}, k=3, temperature=0.07),
            make_result("shapes", "tiny", "local", "zeroshot", {"acc1": 1.0}, skipped_images=1,
                        skipped=[{"input": "a.png", "error": "bad"}])]
    columns, rows = results_table(recs)
    assert columns == ["dataset", "model", "pretrained", "task", "language", "acc1", "knn_acc1",
                       "model_fullname", "skipped_images", "skipped", "k", "temperature"]
    parsed = list(csv.DictReader(io.StringIO(csv_text(recs))))
    assert parsed[0]["skipped"] == '[{"input":"a.png","error":"bad"}]'
    assert parsed[1]["k"] == "3" and parsed[0]["k"] == ""


# ------------------------------------------------------------------ markdown
def test_markdown_one_table_per_task_models_by_dataset():
    md = markdown_table(RECORDS)
    assert md == (
        "## zeroshot_classification\n"
        "\n"
        "| model | pretrained | cifar10 / acc1 | mnist / acc1 |\n"
        "|---|---|---|---|\n"
        "| RN50 | yfcc15m | 0.5000 | 0.2500 |\n"
        "| ViT-B-32 | openai | 0.8983 | 0.4836 |\n"
        "\n"
        "## linear_probe\n"
        "\n"
        "| model | pretrained | cifar10 / lp_acc1 | mnist / lp_acc1 |\n"
        "|---|---|---|---|\n"
        "| RN50 | yfcc15m | – | 0.9712 |\n"
        "| ViT-B-32 | openai | 0.9500 | 0.9900 |\n")


def test_markdown_chosen_metrics_missing_cells_and_digits():
    md = markdown_table(RECORDS, metrics=["acc5", "lp_acc5"], digits=2)
    lines = md.splitlines()
    assert lines[2] == "| model | pretrained | cifar10 / acc5 | mnist / acc5 |"
    assert lines[4] == "| RN50 | yfcc15m | 0.90 | – |"             # RN50 has no acc5 on mnist
    assert lines[5] == "| ViT-B-32 | openai | 1.00 | 0.80 |"
    assert lines[9] == "| model | pretrained | cifar10 / lp_acc5 | mnist / lp_acc5 |"
    assert lines[11] == "| RN50 | yfcc15m | 0.97 | 1.00 |"
    assert lines[12] == "| ViT-B-32 | openai | 1.00 | – |"           # NaN
    two = markdown_table(RECORDS[:2], metrics=["acc1", "mean_per_class_recall"]).splitlines()
    assert two[2] == ("| model | pretrained | cifar10 / acc1 | cifar10 / mean_per_class_recall | mnist / acc1 | "
                      "mnist / mean_per_class_recall |")
    assert two[4] == "| ViT-B-32 | openai | 0.8983 | 0.8982 | 0.4836 | 0.4700 |"
    with pytest.raises(EvalInputError, match="none of the metrics recall is in the results; available: acc1"):
        markdown_table(RECORDS, metrics=["recall"])
    with pytest.raises(EvalInputError, match="no results"):
        markdown_table([])


def test_markdown_retrieval_languages_and_unknown_tasks():
    recs = [make_result("flickr30k", "RN50", "openai", "retrieval",
                        {"image_retrieval_recall@1": 0.6, "image_retrieval_recall@5": 0.85,
                         "text_retrieval_recall@1": 0.7, "text_retrieval_recall@5": 0.9}),
            make_result("imagenet1k", "RN50", "openai", "zeroshot", {"acc1": 0.6}, language="en"),
            make_result("imagenet1k", "RN50", "openai", "zeroshot", {"acc1": 0.4}, language="fr"),
            make_result("shapes", "RN50", "openai", "my_task", {"score": 3, "other": 1.5})]
    md = markdown_table(recs)
    assert "| RN50 | openai | 0.8500 | 0.9000 |" in md
    assert "| model | pretrained | flickr30k / image_retrieval_recall@5 | flickr30k / text_retrieval_recall@5 |" in md
    assert "| model | pretrained | language | imagenet1k / acc1 |" in md
    assert "| RN50 | openai | en | 0.6000 |\n| RN50 | openai | fr | 0.4000 |" in md
    assert "## my_task\n\n| model | pretrained | shapes / score |\n|---|---|---|\n| RN50 | openai | 3 |\n" in md
    assert md.index("## zeroshot_classification") < md.index("## zeroshot_retrieval") < md.index("## my_task")


# ------------------------------------------------------------------ write_report
def test_write_report_writes_both_files_atomically(folder, tmp_path):
    (folder / CLIP_BENCHMARK_NAME).write_text(CLIP_BENCHMARK_TEXT)
    written = write_report([folder], tmp_path / "out" / "report")
    assert written == {"csv": tmp_path / "out" / "report.csv", "md": tmp_path / "out" / "report.md"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.csv", "report.md"]  # no temp files
    records = collect_results(folder)
    assert written["csv"].read_text() == csv_text(records)
    md = written["md"].read_text()
    assert md == markdown_table(records)
    assert "| model | pretrained | cars / acc1 | cifar10 / acc1 | mnist / acc1 |" in md
    assert "| ViT-B-32 | laion2b_s34b_b79k | 0.8591 | – | – |" in md
    # same inputs in another order -> byte-identical report
    again = write_report([str(folder / "*linear_probe.json"), folder], tmp_path / "again")
    assert again["csv"].read_text() == written["csv"].read_text()
    # a bad input writes nothing
    with pytest.raises(EvalInputError):
        write_report([tmp_path / "nope.json"], tmp_path / "never")
    assert not (tmp_path / "never.csv").exists() and not (tmp_path / "never.md").exists()
