"""SentEval transfer tasks (issue 23, §3): SentEval's file formats and its logistic-regression k-fold protocol."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402

from clipzoo.errors import DatasetError, EvalInputError  # noqa: E402
from clipzoo.eval.senteval import (  # noqa: E402
    INNER_REGS,
    KFOLD_REGS,
    SENTEVAL_TASKS,
    inner_kfold_classifier,
    kfold_classifier,
    load_senteval_task,
    senteval_evaluate,
)

COLORS = ["red", "blue", "green", "yellow", "purple"]
SHAPES = ["circle", "square", "triangle", "star", "heart", "cross"]


def _sentences(color, n, extra=""):
    return [f"a {color} {SHAPES[i % 6]}{' ' + extra if i % 2 else ''} ." for i in range(n)]


def write_senteval(root):
    """Tiny files in each of SentEval's formats under ROOT/downstream/; the label follows a colour or shape word."""
    d = root / "downstream"
    for task, pos, neg in (("MR", "rt-polarity.pos", "rt-polarity.neg"), ("CR", "custrev.pos", "custrev.neg"),
                           ("SUBJ", "subj.subjective", "subj.objective"), ("MPQA", "mpqa.pos", "mpqa.neg")):
        (d / task).mkdir(parents=True)
        (d / task / pos).write_text("\n".join(_sentences("red", 10, "here")) + "\n", encoding="latin-1")
        (d / task / neg).write_text("\n".join(_sentences("blue", 10, "there")) + "\n", encoding="latin-1")
    (d / "SST" / "binary").mkdir(parents=True)
    for split, n in (("train", 10), ("dev", 4), ("test", 4)):
        rows = [f"{s}\t1" for s in _sentences("red", n)] + [f"{s}\t0" for s in _sentences("blue", n)]
        (d / "SST" / "binary" / f"sentiment-{split}").write_text("\n".join(rows) + "\n")
    (d / "TREC").mkdir()
    classes = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    for name, n in (("train_5500.label", 6), ("TREC_10.label", 2)):
        rows = [f"{c}:x what is the {COLORS[i % 5]} {SHAPES[k]} ?" for k, c in enumerate(classes) for i in range(n)]
        (d / "TREC" / name).write_text("\n".join(rows) + "\n", encoding="latin-1")
    (d / "MRPC").mkdir()
    for name, n in (("msr_paraphrase_train.txt", 12), ("msr_paraphrase_test.txt", 6)):
        rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            same = i % 2 == 0
            other = SHAPES[i % 6] if same else SHAPES[(i + 3) % 6]
            rows.append(f"{int(same)}\t{i}\t{i + 100}\ta {COLORS[i % 5]} {SHAPES[i % 6]} .\tthe {other} is "
                        f"{COLORS[(i + 1) % 5]} .")
        (d / "MRPC" / name).write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def model():
    import clipzoo

    return clipzoo.load("clipzoo/tiny-shapes", device="cpu")


def test_senteval_readers_parse_each_format(tmp_path):
    root = write_senteval(tmp_path)
    mr = load_senteval_task(root, "MR")["all"]
    assert len(mr[0]) == 20 and mr[1] == [1] * 10 + [0] * 10 and mr[0][1] == ["a", "red", "square", "here", "."]
    subj = load_senteval_task(root / "downstream", "SUBJ")["all"]  # data/ or data/downstream/ both work
    assert subj[1][:10] == [1] * 10  # subjective = 1, objective = 0 (SentEval's order)
    trec = load_senteval_task(root, "TREC")
    assert trec["train"][0][0] == ["what", "is", "the", "red", "circle", "?"] and sorted(set(trec["train"][1])) == list(
        range(6))
    a, b, y = load_senteval_task(root, "MRPC")["test"]
    assert len(a) == len(b) == len(y) == 6 and y[:2] == [1, 0] and b[1] == ["the", "heart", "is", "green", "."]
    sst = load_senteval_task(root, "SST2")
    assert [len(sst[s][1]) for s in ("train", "dev", "test")] == [20, 8, 8]


def test_senteval_errors_name_the_file_and_fix(tmp_path):
    root = write_senteval(tmp_path)
    with pytest.raises(EvalInputError, match="unknown SentEval task 'SST5'"):
        load_senteval_task(root, "SST5")
    (root / "downstream" / "TREC" / "TREC_10.label").write_text("WHAT:x is this\n")
    with pytest.raises(EvalInputError, match=r"TREC_10.label:1: expected 'COARSE:fine question'"):
        load_senteval_task(root, "TREC")
    with pytest.raises(EvalInputError, match="no MR/ folder for task MR under"):
        load_senteval_task(tmp_path / "elsewhere", "MR")


def test_senteval_inner_kfold_matches_nested_cross_validation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    y = (x[:, 0] + 0.8 * rng.normal(size=60) > 0).astype(int)
    dev, acc = inner_kfold_classifier(x, y, k=3, seed=1111)
    outer = StratifiedKFold(3, shuffle=True, random_state=1111)
    tests = []
    for a, b in outer.split(x, y):
        grid = GridSearchCV(LogisticRegression(random_state=1111), {"C": list(INNER_REGS)},
                            cv=StratifiedKFold(3, shuffle=True, random_state=1111)).fit(x[a], y[a])
        tests.append(round(100 * grid.score(x[b], y[b]), 2))
    assert acc == round(float(np.mean(tests)), 2) and 50 < acc < 100 and 50 < dev <= 100
    dev2, acc2, yhat = kfold_classifier((x[:40], y[:40]), (x[40:], y[40:]), k=3, seed=1111)
    grid = GridSearchCV(LogisticRegression(random_state=1111), {"C": list(KFOLD_REGS)},
                        cv=StratifiedKFold(3, shuffle=True, random_state=1111)).fit(x[:40], y[:40])
    assert acc2 == round(100 * grid.score(x[40:], y[40:]), 2) and (yhat == grid.predict(x[40:])).all()


def test_senteval_tasks_on_the_tiny_model(model, tmp_path):
    root = write_senteval(tmp_path)
    tasks = ["MR", "SST2", "TREC", "MRPC"]  # the other binary tasks share MR's code path (their readers are tested)
    result = senteval_evaluate(model, root, tasks, kfold=3)
    rows = result["tasks"]
    assert list(rows) == tasks and result["kfold"] == 3 and result["seed"] == 1111
    for task in ("MR", "SST2"):  # the label is a colour word the text tower separates
        assert rows[task]["acc"] >= 90, (task, rows[task])
    assert rows["MR"]["ndev"] == rows["MR"]["ntest"] == 20 and rows["TREC"]["ntest"] == 12
    assert 0 <= rows["MRPC"]["f1"] <= 100 and rows["MRPC"]["ntest"] == 6
    assert result["average"] == round(float(np.mean([r["acc"] for r in rows.values()])), 2)
    assert senteval_evaluate(model, root, ["SST2"])["tasks"]["SST2"] == rows["SST2"]  # deterministic
    assert set(SENTEVAL_TASKS) == {"MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC"}


def test_cli_eval_senteval(tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    root = write_senteval(tmp_path)
    out = tmp_path / "se.json"
    result = CliRunner().invoke(app, ["eval", "senteval", "--data-root", str(root), "--tasks", "SST2,TREC",
                                      "--kfold", "3", "-m", "clipzoo/tiny-shapes", "--device", "cpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert list(record["tasks"]) == ["SST2", "TREC"] and record["benchmark"] == "senteval"
    bad = CliRunner().invoke(app, ["eval", "senteval", "--data-root", str(root), "--tasks", "MR,XX",
                                   "-m", "clipzoo/tiny-shapes"])
    assert bad.exit_code == 2 and "unknown SentEval task 'XX'" in bad.output


def write_wiki_sections(folder):
    """A Wiki Sections triplets file: anchor and positive share a shape word, the negative has another shape."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["Sentence1,Sentence2,Sentence3,Title"]
    for i, shape in enumerate(SHAPES):
        other = SHAPES[(i + 2) % 6]
        rows.append(f"a {COLORS[i % 5]} {shape} .,\"the {shape}, drawn again .\",a {other} .,Shapes")
        rows.append(f"a {COLORS[i % 5]} {shape} .,one more {shape} .,a {other} here .,Shapes")  # same anchor
    (folder / "test.csv").write_text("\n".join(rows) + "\n")
    return folder / "test.csv"


def test_wiki_sections_reads_as_passage_retrieval(model, tmp_path):
    from clipzoo.eval.text_retrieval import load_text_retrieval, text_retrieval_evaluate
    from clipzoo.eval.wiki_sections import triplet_accuracy, wiki_sections_retrieval

    path = write_wiki_sections(tmp_path / "wiki")
    queries, passages, qrels = load_text_retrieval(tmp_path / "wiki")  # the folder, beside MS MARCO / BEIR folders
    assert (queries, passages, qrels) == wiki_sections_retrieval(path) == load_text_retrieval(path)
    assert len(queries) == 6 and len(passages) == 24 and queries["q0"] == "a red circle ."
    assert passages["p0"] == "the circle, drawn again ." and qrels["q0"] == {"p0", "p2"}
    metrics = text_retrieval_evaluate(model, queries, passages, qrels)
    assert metrics["n_queries"] == 6 and 0 < metrics["mrr@10"] <= 1
    acc = triplet_accuracy(model, path)
    f = {t: model.encode_text([t]) for t in {s for r in ([q, *passages.values()] for q in queries.values()) for s in r}}
    with open(path, newline="") as fh:
        rows = [(r["Sentence1"], r["Sentence2"], r["Sentence3"]) for r in csv.DictReader(fh)]
    wins = sum(float(f[a] @ f[p].T) > float(f[a] @ f[n].T) for a, p, n in rows)
    assert acc == {"triplet_accuracy": pytest.approx(wins / 12), "n_triplets": 12}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "test.csv").write_text("anchor,pos,neg\na,b,c\n")
    with pytest.raises(DatasetError, match="needs the header Sentence1,Sentence2,Sentence3"):
        load_text_retrieval(tmp_path / "bad")
