"""`clipzoo eval` under hostile use (probe of the eval module, 16 findings): a features cache that outlived its
images, outputs landing on or inside the inputs, tied scores against CLIP_benchmark, `$` in names, huge class
counts, links in the report folder, averages over some data sets only, `eval all` losing every result to one task,
the 1-shot probe, NaN scores, T <= 0, the k that voted, and `{{` in templates."""
from __future__ import annotations

import csv
import json
import shutil
import warnings

import pytest
import torch
from typer.testing import CliRunner

from clipzoo.cli import app
from clipzoo.datasets.readers import open_dataset
from clipzoo.errors import ClipzooError, DatasetError, EvalInputError
from clipzoo.eval.runner import Evaluator

CLASSES = ("circle", "square", "star")
COLOURS = {"circle": (220, 30, 30), "square": (30, 200, 40), "star": (40, 60, 230)}


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _draw(path, name: str, i: int) -> None:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (32, 32), (120 + 10 * i, 120, 110))
    box = [6 + i, 6, 26, 26 - i]
    draw = ImageDraw.Draw(im)
    if name == "circle":
        draw.ellipse(box, fill=COLOURS[name])
    elif name == "square":
        draw.rectangle(box, fill=COLOURS[name])
    else:
        draw.polygon([(16, 4), (28 - i, 28), (4 + i, 28)], fill=COLOURS[name])
    im.save(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random open_clip model, an image folder (3 classes x 5) and a CSV over its images (with captions)."""
    from clipzoo.testing.tiny import write_open_clip_safetensors

    root = tmp_path_factory.mktemp("eval_hostile")
    model = write_open_clip_safetensors(root / "tiny.safetensors", 0, embed_config=True)
    folder = root / "folder"
    rows = []
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for i in range(5):
            path = folder / name / f"{i}.png"
            _draw(path, name, i)
            rows.append((str(path), f"a {name} number {i}", name))
    table = root / "table"
    table.mkdir()
    with open(table / "data.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("filepath", "caption", "shape"), *rows])
    (table / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    return root, str(model), folder, table


@pytest.fixture(scope="module")
def model(setup):
    import clipzoo

    return clipzoo.load(setup[1])


def _copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ 1: the features cache and rewritten images
def test_features_cache_sees_an_image_rewritten_under_the_same_name(setup, model, tmp_path):
    """The cache key hashed a folder's paths only: after every star image was overwritten by a circle one, the
    cached (old) features came back — acc1 0.98 against 0.64 without the cache, no warning."""
    folder = _copy_folder(setup[2], tmp_path / "images")
    cache = tmp_path / "cache"
    Evaluator(model, workers=0, cache_dir=cache).zeroshot(open_dataset(str(folder)))
    for i in range(5):
        shutil.copyfile(folder / "circle" / f"{i}.png", folder / "star" / f"{i}.png")
    again = Evaluator(model, workers=0, cache_dir=cache)
    cached = again.features(open_dataset(str(folder)))
    fresh = Evaluator(model, workers=0).features(open_dataset(str(folder)))
    assert again.stats["image_passes"] == 1  # embedded again, not read from the stale cache file
    assert torch.equal(cached.features, fresh.features)
    assert torch.equal(fresh.features[10:], fresh.features[:5])  # the stars are circles now
    third = Evaluator(model, workers=0, cache_dir=cache)  # unchanged images: the cache serves them
    assert torch.equal(third.features(open_dataset(str(folder))).features, fresh.features)
    assert third.stats["image_passes"] == 0


# ------------------------------------------------------------------ 2, 3, 13: outputs onto / into the inputs
def test_output_refuses_a_csv_sidecar_and_an_image_it_lists(setup, tmp_path):
    root, model, folder, table = setup
    data = _copy_folder(table, tmp_path / "t")
    names, image = data / "classnames.txt", folder / "star" / "0.png"
    before = {p: p.read_bytes() for p in (names, image)}
    base = ["eval", "zeroshot", "-m", model, "-d", data / "data.csv", "--label-key", "shape", "--workers", 0,
            "--no-progress"]
    for out in (names, image):
        code, stdout, stderr = run(*base, "-o", out)
        assert (code, stdout) == (2, ""), stderr  # refused before anything is evaluated
        assert stderr == (f"error: --output {str(out)!r} is the input {str(out)!r}: writing there would destroy it; "
                          "choose another file\n")
    assert {p: p.read_bytes() for p in before} == before
    code, stdout, stderr = run(*base, "-o", tmp_path / "ok.json")  # elsewhere: written, as before
    assert code == 0 and json.loads((tmp_path / "ok.json").read_text()) == json.loads(stdout)


def test_outputs_inside_an_image_folder_data_set_are_refused(setup, tmp_path):
    """eval all --output-dir in a class folder added its plots to the data set: 47 images instead of 45 next time."""
    root, model, folder, _ = setup
    data = _copy_folder(folder, tmp_path / "images")
    listing = sorted(p.relative_to(data) for p in data.rglob("*"))
    code, stdout, stderr = run("eval", "all", "-m", model, "-d", data, "--output-dir", data / "star", "-t",
                               "zeroshot", "--workers", 0, "--no-progress")
    assert (code, stdout) == (2, "")
    assert stderr == (f"error: --output-dir {str(data / 'star')!r} is inside the data set folder {str(data)!r}: "
                      "files written there become part of the data; choose a folder outside it\n")
    code, stdout, stderr = run("eval", "zeroshot", "-m", model, "-d", data, "-o", data / "star" / "r.json",
                               "--workers", 0, "--no-progress")
    assert (code, stdout) == (2, "")
    assert stderr == (f"error: --output {str(data / 'star' / 'r.json')!r} is inside the data set folder "
                      f"{str(data)!r}: a file written there becomes part of the data; choose a place outside it\n")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == listing


def test_an_output_under_a_file_is_one_line_before_any_work(setup, tmp_path):
    """-o afile/r.json failed with `[Errno 17] File exists` after the whole evaluation (its JSON already printed)."""
    root, model, folder, _ = setup
    (tmp_path / "afile").write_text("")
    code, stdout, stderr = run("eval", "cluster", "-m", model, "-d", folder, "-o", tmp_path / "afile" / "r.json",
                               "--workers", 0, "--no-progress")
    assert (code, stdout) == (2, "")
    assert stderr == (f"error: --output {str(tmp_path / 'afile' / 'r.json')!r} cannot be written: "
                      f"{str(tmp_path / 'afile')!r} is a file, not a folder; choose another place\n")
    code, stdout, stderr = run("eval", "report", tmp_path, "-o", tmp_path / "afile" / "x")
    assert code == 2 and stderr == (f"error: --out {str(tmp_path / 'afile' / 'x.csv')!r} cannot be written: "
                                    f"{str(tmp_path / 'afile')!r} is a file, not a folder; choose another place\n")
    code, _, stderr = run("eval", "cluster", "-m", model, "-d", folder, "-o", "/proc/r.json", "--workers", 0,
                          "--no-progress")
    assert code == 2 and stderr.startswith("error: --output '/proc/r.json' cannot be written: folder '/proc' takes "
                                           "no new file (")


# ------------------------------------------------------------------ 4: ties, as CLIP_benchmark ranks them
def _cb_accuracy(output, target, topk=(1,)):
    """clip_benchmark 1.6.2's accuracy, with ``.item()`` for its ``float(array)`` (NumPy >= 2.4 refuses that)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).item() / len(target) for k in topk]


def test_tied_class_scores_give_clip_benchmarks_accuracy():
    """ImageNet names two classes 'missile' (657, 744) and two 'sunglasses' (836, 837): equal class weights, equal
    logits. Ties broke to the lower index here: acc1 0.5 where CLIP_benchmark reports 0.535."""
    from sklearn.metrics import balanced_accuracy_score

    from clipzoo.eval import zeroshot_metrics

    torch.manual_seed(0)
    rows, targets = [], []
    for a, b in ((657, 744), (836, 837)):
        for t in (a, b):
            for _ in range(50):
                row = torch.randn(1000) * 0.5 + 20
                row[a] = row[b] = 30.0
                rows.append(row)
                targets.append(t)
    logits, targets = torch.stack(rows), torch.tensor(targets)
    acc1, acc5 = _cb_accuracy(logits, targets, (1, 5))
    ours = zeroshot_metrics(logits, targets)
    assert (ours["acc1"], ours["acc5"]) == (acc1, acc5) == (0.535, 1.0)
    assert ours["mean_per_class_recall"] == balanced_accuracy_score(targets, logits.argmax(1)) == 0.5


def test_tied_captions_give_clip_benchmarks_recall():
    """Duplicate captions tie at rank k: text_retrieval_recall@5 0.8167 here, 0.8067 in CLIP_benchmark."""
    import torch.nn.functional as F
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    from clipzoo.eval import retrieval_metrics

    g = torch.Generator().manual_seed(0)
    images = torch.randn(60, 16, generator=g)
    distinct = torch.randn(12, 16, generator=g)  # 120 captions drawn from 12 texts: ties everywhere
    texts = distinct[torch.randint(0, 12, (120,), generator=g)] + 0.0
    index = torch.arange(120) // 2
    scores = F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).T
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(120), index] = True
    ours = retrieval_metrics(images, texts, index, recall_k=(1, 5, 10))
    for k in (1, 5, 10):
        image_r = (batchify(recall_at_k, scores, positives, 64, "cpu", k=k) > 0).float().mean().item()
        text_r = (batchify(recall_at_k, scores.T, positives.T, 64, "cpu", k=k) > 0).float().mean().item()
        assert (ours[f"image_retrieval_recall@{k}"], ours[f"text_retrieval_recall@{k}"]) == (image_r, text_r), k


# ------------------------------------------------------------------ 5, 7, 8: plots
def test_dollar_signs_in_names_are_drawn_as_text(tmp_path):
    """A class named `$\\undefinedmacro$`, a model `$\\undefined$`, a data set `$x^$`: a 340-line ParseException."""
    from PIL import Image

    from clipzoo.eval.leaderboard import write_leaderboard
    from clipzoo.eval.plots import plot_confusion_matrix, plot_per_class_accuracy, plot_recall_at_k
    from clipzoo.eval.results import make_result, write_result

    names = ["$\\undefinedmacro$", "$x^$", "a $5 note"]
    pngs = [plot_confusion_matrix([0, 1, 2], [0, 2, 2], names, tmp_path / "c.png", title="$\\undefined$ — $x^$"),
            plot_per_class_accuracy(dict(zip(names, [1.0, 0.0, 0.5])), tmp_path / "p.png", title="$x^$"),
            plot_recall_at_k({"$x^$": {1: 0.5, 5: 0.9}}, tmp_path / "r.png", title="$\\undefined$")]
    for i, model in enumerate(("$\\undefined$", "$x^$")):
        write_result(tmp_path / "res" / f"{i}.json", make_result("$x^$", model, "", "zeroshot", {"acc1": 0.5}))
    written = write_leaderboard([str(tmp_path / "res")], tmp_path / "board")
    for png in [*pngs, written["plot0"]]:
        assert Image.open(png).size[0] > 100


def test_per_class_plots_past_the_class_limit_are_left_out_in_one_line(tmp_path):
    """21,841 classes (ImageNet-21k): the confusion matrix alone needed gigabytes and ran for hours."""
    from clipzoo.constants import MAX_PLOT_CLASSES
    from clipzoo.eval.outputs import save_task_result
    from clipzoo.eval.plots import plot_confusion_matrix, plot_per_class_accuracy
    from clipzoo.eval.runner import TaskResult

    n = MAX_PLOT_CLASSES + 1
    targets = torch.arange(3 * n) % n
    record = {"dataset": "big", "model": "m", "pretrained": "", "task": "zeroshot_classification",
              "metrics": {"acc1": 1.0}, "language": "en"}
    said = []
    written = save_task_result(TaskResult(record, {"targets": targets, "predictions": targets,
                                                   "classnames": [f"c{i}" for i in range(n)]}),
                               tmp_path / "r.json", note=said.append)
    assert written == [tmp_path / "r.json"] and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    assert said == [f"r.confusion.png and r.per_class.png not drawn: {n} classes are more than a per-class plot "
                    f"takes ({MAX_PLOT_CLASSES}, clipzoo.constants.MAX_PLOT_CLASSES)"]
    with pytest.raises(EvalInputError, match=rf"^{n} classes are more than a per-class plot takes .*; plot a subset"):
        plot_confusion_matrix(targets, targets, [f"c{i}" for i in range(n)], tmp_path / "c.png")
    with pytest.raises(EvalInputError, match="more than a per-class plot takes"):
        plot_per_class_accuracy({f"c{i}": 1.0 for i in range(n)}, tmp_path / "p.png")


def test_confusion_copies_replace_a_link_and_never_write_its_target(tmp_path):
    from clipzoo.eval.leaderboard import write_leaderboard
    from clipzoo.eval.plots import plot_confusion_matrix
    from clipzoo.eval.results import make_result, write_result

    write_result(tmp_path / "res" / "z.json", make_result("shapes", "m", "", "zeroshot", {"acc1": 0.5}))
    png = plot_confusion_matrix([0, 1], [0, 0], ["a", "b"], tmp_path / "res" / "z.confusion.png")
    (tmp_path / "board").mkdir()
    (tmp_path / "victim.txt").write_text("precious")
    link = tmp_path / "board" / "confusion_shapes_zeroshot_classification.png"
    link.symlink_to(tmp_path / "victim.txt")
    write_leaderboard([str(tmp_path / "res")], tmp_path / "board", plots=False, confusion_model="m")
    assert (tmp_path / "victim.txt").read_text() == "precious"
    assert not link.is_symlink() and link.read_bytes() == png.read_bytes()


# ------------------------------------------------------------------ 9: averages over every data set
def test_averages_are_over_every_data_set_or_none():
    """RN50 with cifar10 alone (0.95) was ranked above ViT-B-32 with cifar10 and imagenet1k (mean 0.764), under a
    header saying 'Average perf. on 2 datasets'."""
    from clipzoo.eval.leaderboard import leaderboard, leaderboard_markdown, openclip_csv
    from clipzoo.eval.results import make_result

    records = [make_result("cifar10", "ViT-B-32", "openai", "zeroshot", {"acc1": 0.8983}),
               make_result("imagenet1k", "ViT-B-32", "openai", "zeroshot", {"acc1": 0.63}),
               make_result("cifar10", "RN50", "openai", "zeroshot", {"acc1": 0.95})]
    assert openclip_csv(records) == ("name,pretrained,Average perf. on 2 datasets,ImageNet 1k,CIFAR-10\n"
                                     f"ViT-B-32,openai,{(0.63 + 0.8983) / 2!r},0.6300,0.8983\n"
                                     "RN50,openai,,,0.9500\n")
    md = leaderboard_markdown(leaderboard(records))
    assert "| average (zeroshot_classification) |  |  | **0.7641** | – |" in md
    assert "| average |  |  | **0.7641** | – |" in md


# ------------------------------------------------------------------ 10, 11: eval all and the linear probe
def _one_class_csv(setup, tmp_path):
    root, model, folder, table = setup
    with open(table / "data.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    data = tmp_path / "one"
    data.mkdir()
    with open(data / "data.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0], *[r for r in rows[1:] if r[2] == "circle"]])
    (data / "classnames.txt").write_text("circle\n")
    return model, data / "data.csv"


def test_eval_all_keeps_the_tasks_that_can_run(setup, tmp_path):
    """A one-class data set: `error: the training set holds a single class`, exit 2 and nothing printed or written,
    though zeroshot, retrieval, knn and cluster all run on it."""
    model, data = _one_class_csv(setup, tmp_path)
    out = tmp_path / "out"
    args = ["eval", "all", "-m", model, "-d", data, "--label-key", "shape", "--workers", 0, "--no-progress",
            "--no-plots", "--output-dir", out]
    code, stdout, stderr = run(*args)
    assert code == 0, stderr
    assert [r["task"] for r in json.loads(stdout)] == ["zeroshot_classification", "zeroshot_retrieval", "knn",
                                                       "cluster"]
    assert stderr.splitlines()[0] == ("skipped linear-probe: the training set holds a single class (0); a linear "
                                      "probe needs at least 2 classes")
    assert len(list(out.glob("*.json"))) == 4 and "## knn" in (out / "report.md").read_text()
    code, stdout, stderr = run(*args[:-2], "-t", "linear-probe", "-t", "knn")  # asked for by name: exit 2
    assert code == 2 and [r["task"] for r in json.loads(stdout)] == ["knn"]
    assert stderr == ("error: task linear-probe: the training set holds a single class (0); a linear probe needs at "
                      "least 2 classes\n")
    code, stdout, stderr = run(*args[:-2], "-t", "linear-probe")
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == "error: none of the tasks (linear-probe) could run on data set 'data'"


def test_a_one_shot_linear_probe_from_the_cli(setup):
    """--fewshot-k 1 said 'pass regularization=C', an option the CLI did not have."""
    root, model, folder, _ = setup
    base = ["eval", "linear-probe", "-m", model, "-d", folder, "--workers", 0, "--no-progress", "--fewshot-k", 1]
    code, stdout, stderr = run(*base)
    assert (code, stdout) == (2, "")
    assert stderr == ("error: cannot hold out a validation split: every class has a single training example (e.g. "
                      "--fewshot-k 1); pass --regularization C\n")
    code, stdout, stderr = run(*base, "--regularization", 0.5)
    assert code == 0, stderr
    metrics = json.loads(stdout)["metrics"]
    assert (metrics["regularization"], metrics["fewshot_k"]) == (0.5, 1)
    code, _, stderr = run(*base, "--regularization", 0)
    assert (code, stderr) == (2, "error: --regularization must be above 0, got 0\n")


# ------------------------------------------------------------------ 12, 14, 15, 16
def test_similarity_refuses_scores_that_are_no_finite_number(tmp_path):
    from clipzoo.eval import read_pairs, similarity_metrics

    for bad in ("nan", "inf", "1e400"):
        path = tmp_path / f"{bad}.tsv"
        path.write_text(f"sentence1\tsentence2\tscore\na red circle\ta red ring\t5\na dog\ta car\t{bad}\n")
        with pytest.raises(DatasetError) as err:
            read_pairs(path)
        assert str(err.value) == (f"{path}:3: score {bad!r} is not a finite number (expected tab-separated columns "
                                  "sentence1, sentence2, score)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = similarity_metrics(torch.randn(4, 8), torch.randn(4, 8), [1.0, 1.0, 1.0, 1.0])
    assert [str(w.message) for w in caught] == ["similarity: every human score is 1; Spearman and Pearson are "
                                                "undefined (NaN) — check the score column"]
    assert m["spearman"] != m["spearman"] and m["pearson"] != m["pearson"]  # NaN
    same = torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as caught:  # the model's equal cosines were NaN without a word
        warnings.simplefilter("always")
        m = similarity_metrics(same, same * 2, [1.0, 2.0, 3.0, 4.0])
    assert [str(w.message) for w in caught] == ["similarity: the model gives every pair the same cosine (1); "
                                                "Spearman and Pearson are undefined (NaN) — are the two texts of "
                                                "each pair the same?"]
    assert m["spearman"] != m["spearman"] and m["pearson"] != m["pearson"]  # NaN


def test_knn_temperature_must_be_above_zero_in_the_library():
    """T = 0 made every vote NaN (acc1 1.0: the NaN class won), T < 0 reversed the votes; the CLI alone refused."""
    from clipzoo.eval import knn_metrics, knn_scores

    x, labels = torch.randn(20, 8), torch.arange(20) % 5
    for t in (0, -1.0, float("nan")):
        with pytest.raises(EvalInputError, match=rf"^temperature must be above 0, got {t:g}$"):
            knn_metrics(x, labels, x, labels, k=3, temperature=t)
        with pytest.raises(ClipzooError):
            knn_scores(x, labels, x, k=3, temperature=t)


def test_the_knn_record_says_the_k_that_voted(setup, model):
    data = open_dataset(str(setup[2]))  # 3 classes x 5 images, split in half: round(2.5) = 2 each, 6 train
    ev = Evaluator(model, workers=0)
    record = ev.knn(data, k=100000).record
    assert (record["k"], record["k_requested"]) == (6, 100000)
    assert ev.knn(data, k=3).record["k"] == 3 and "k_requested" not in ev.knn(data, k=3).record


def test_templates_take_format_escapes_and_errors_quote_them_as_written(setup, model, tmp_path):
    """`a {c} {{texture}}` (CLIP_benchmark: `a cat {texture}`) was refused, quoted as `a {} {{texture}}`."""
    from clipzoo.eval import class_weights
    from clipzoo.templates import fill_template

    for t in ("a {c} {{texture}}", "{{{c}}}", "{{c}} {c}", "}}{c}{{"):
        assert fill_template(t, "cat", escapes=True) == t.format(c="cat")
    weights = class_weights(model, list(CLASSES), ["a {c} {{texture}}"])
    assert torch.equal(weights, model.classifier(list(CLASSES), [lambda c: f"a {c} {{texture}}"]))
    root, path, folder, _ = setup
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("a {c} {{texture}}\n")
    bad.write_text("a {c} {texture}\n")
    base = ["eval", "zeroshot", "-m", path, "-d", folder, "--workers", 0, "--no-progress", "--templates"]
    code, stdout, stderr = run(*base, good)
    assert code == 0, stderr
    code, stdout, stderr = run(*base, bad)
    assert (code, stdout) == (2, "")
    assert stderr == ("error: prompt template 'a {c} {texture}' has a brace that is not a label placeholder; "
                      "templates are plain text with '{}' (or '{label}') where the label goes and '{{' / '}}' for a "
                      "literal brace\n")


# ------------------------------------------------------------------ 6: result names carry pretrained
def test_eval_all_names_keep_two_models_of_one_name_apart(setup, tmp_path):
    """runA/model.safetensors then runB/model.safetensors into one --output-dir: one file, runB's; runA's gone."""
    from clipzoo.eval.results import MAX_NAME_BYTES, make_result, result_file_name
    from clipzoo.testing.tiny import write_open_clip_safetensors

    root, _, folder, _ = setup
    out = tmp_path / "coll"
    for run_dir, seed in (("runA", 0), ("runB", 1)):
        (tmp_path / run_dir).mkdir()
        model = write_open_clip_safetensors(tmp_path / run_dir / "model.safetensors", seed, embed_config=True)
        code, _, stderr = run("eval", "all", "-m", model, "-d", folder, "-t", "zeroshot", "--output-dir", out,
                              "--workers", 0, "--no-progress", "--no-plots")
        assert code == 0, stderr
    files = sorted(p.name for p in out.glob("*.json"))
    slug = str(tmp_path).replace("/", "_")
    assert files == [f"folder_{slug}_runA_model.safetensors_model_en_zeroshot.json",
                     f"folder_{slug}_runB_model.safetensors_model_en_zeroshot.json"]
    report = (out / "report.md").read_text()
    assert f"{tmp_path}/runA/model.safetensors" in report and f"{tmp_path}/runB/model.safetensors" in report
    a = result_file_name(make_result("imagenet1k", "ViT-B-32", "openai", "zeroshot", {}), "zeroshot")
    b = result_file_name(make_result("imagenet1k", "ViT-B-32", "laion2b_s34b_b79k", "zeroshot", {}), "zeroshot")
    assert (a, b) == ("imagenet1k_openai_ViT-B-32_en_zeroshot.json",
                      "imagenet1k_laion2b_s34b_b79k_ViT-B-32_en_zeroshot.json")
    long = result_file_name(make_result("d", "m", "/x" * 200, "zeroshot", {}), "zeroshot")
    assert len(long.encode()) <= MAX_NAME_BYTES and long.startswith("d__x_x") and long.endswith("_zeroshot.json")
