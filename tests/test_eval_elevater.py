"""ELEVATER's protocol (issue 23, §1) on small data sets written by vision-datasets itself from generated shapes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("vision_datasets")
pytest.importorskip("sklearn")

from vision_datasets import CocoDictGeneratorFactory, DatasetManifest, DatasetTypes, ImageDataManifest  # noqa: E402
from vision_datasets.common.data_manifest.data_manifest import CategoryManifest  # noqa: E402
from vision_datasets.image_classification import ImageClassificationLabelManifest  # noqa: E402

from clipzoo.datasets.shapes_dataset import ShapesDataset  # noqa: E402
from clipzoo.errors import EvalInputError  # noqa: E402
from clipzoo.eval.elevater import elevater_markdown, evaluate_set, run_elevater, write_elevater  # noqa: E402
from clipzoo.eval.elevater_data import catalog, elevater_names, fewshot_ids, open_sets, read_split  # noqa: E402
from clipzoo.eval.elevater_finetune import (  # noqa: E402
    WD_GRID,
    FinetuneConfig,
    image_tower_parameters,
    search_weight_decay,
    train_head_and_tower,
)

SIZES = ["large", "medium", "small"]  # zero-shot is weak on size
SPLITS = {"train": (30, 11), "val": (9, 12), "test": (24, 13)}  # (images, generator seed)
# a relabelled task: circles are called "square" and squares "circle" — zero-shot is wrong on it by construction,
# and the fine-tune (head initialised from those text weights) has to learn the relabelling
RELABEL = {"circle": "square", "square": "circle"}
SHAPES3 = ["circle", "square"]


def relabelled_samples(n, seed):
    out, i = [], 0
    data = ShapesDataset(20 * n, seed=seed)
    while len(out) < n:
        sample = data[i]
        i += 1
        if sample.labels["shape"] in RELABEL:
            sample.labels["relabelled"] = RELABEL[sample.labels["shape"]]
            out.append(sample)
    return out


def write_coco_set(root, name="shape-sizes", label="size", classes=SIZES, splits=SPLITS, samples=ShapesDataset):
    """One data set in vision-datasets' COCO classification format, written by its own CocoDictGenerator."""
    folder = root / name
    folder.mkdir(parents=True)
    entry = {"name": name, "version": 1, "type": "classification_multiclass", "format": "coco",
             "root_folder": name, "num_classes": len(classes)}
    generator = CocoDictGeneratorFactory.create(DatasetTypes.IMAGE_CLASSIFICATION_MULTICLASS)
    for split, (n, seed) in splits.items():
        images = []
        for i, sample in enumerate(samples(n, seed=seed)):
            rel = f"{split}/{i:04d}.png"
            (folder / split).mkdir(exist_ok=True)
            sample.image.save(folder / rel)
            lab = ImageClassificationLabelManifest(classes.index(sample.labels[label]))
            images.append(ImageDataManifest(i + 1, rel, sample.image.width, sample.image.height, [lab]))
        cats = [CategoryManifest(i, c) for i, c in enumerate(classes)]
        manifest = DatasetManifest(images, cats, DatasetTypes.IMAGE_CLASSIFICATION_MULTICLASS)
        (folder / f"{split}.json").write_text(json.dumps(generator.run(manifest)))
        entry[split] = {"index_path": f"{split}.json"}
    return entry


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("elevater")
    relabelled = write_coco_set(root, "shapes-relabelled", "relabelled", SHAPES3,
                                {"train": (16, 21), "val": (6, 22), "test": (16, 23)}, relabelled_samples)
    (root / "vision_datasets.json").write_text(json.dumps([write_coco_set(root), relabelled]))
    return root


@pytest.fixture(scope="module")
def model():
    import clipzoo

    return clipzoo.load("clipzoo/tiny-shapes", device="cpu")


def test_elevater_catalog_ships_the_20_sets_with_classnames_templates_and_metrics():
    data = catalog()
    names = elevater_names()
    assert len(names) == 20 and names[0] == "caltech-101" and "imagenet-1k" not in names
    assert data["shots"] == [5, 20, 50] and data["seeds"] == [0, 1, 2]
    sets = {d["name"]: d for d in data["datasets"]}
    assert len(sets["cifar-10"]["classnames"]) == 10 and sets["cifar-10"]["classnames"][0] == "airplane"
    assert len(sets["country211"]["classnames"]) == 211 and len(sets["stanford-cars"]["classnames"]) == 196
    assert sets["caltech-101"]["metric"] == "mean-per-class" and sets["hateful-memes"]["metric"] == "roc_auc"
    assert all(d["num_classes"] == d["hub"]["num_classes"] == len(d["classnames"]) for d in data["datasets"])
    assert all(d["templates"] and all("{}" in t for t in d["templates"]) for d in data["datasets"])


def test_elevater_reads_the_format_written_by_vision_datasets(data_root, tmp_path):
    ds, relabelled = open_sets(data_root)
    assert relabelled.name == "shapes-relabelled" and relabelled.classnames == SHAPES3
    assert ds.name == "shape-sizes" and ds.splits == ["train", "val", "test"] and ds.classnames == SIZES
    test = read_split(data_root, ds, "test")
    expected = [SIZES.index(s.labels["size"]) for s in ShapesDataset(24, seed=13)]
    assert test.labels == expected and len(test.images) == 24 and test.images[0].size == (64, 64)
    # the IRIS text format (ELEVATER's released files: "path label" lines + labels.txt) reads to the same labels
    iris = tmp_path / "iris"
    (iris / "s").mkdir(parents=True)
    lines = []
    for i, sample in enumerate(ShapesDataset(24, seed=13)):
        sample.image.save(iris / "s" / f"{i}.png")
        lines.append(f"{i}.png {SIZES.index(sample.labels['size'])}")
    (iris / "s" / "test.txt").write_text("\n".join(lines) + "\n")
    (iris / "s" / "labels.txt").write_text("\n".join(SIZES) + "\n")
    hub = [{"name": "iris-sizes", "type": "classification_multiclass", "root_folder": "s",
            "test": {"index_path": "test.txt"}, "labelmap": "labels.txt"}]
    (iris / "vision_datasets.json").write_text(json.dumps(hub))
    (ids,) = open_sets(iris)
    assert ids.classnames == SIZES and read_split(iris, ids, "test").labels == expected


def test_elevater_errors_name_the_input_and_fix(tmp_path, data_root):
    with pytest.raises(EvalInputError, match="is not a folder"):
        open_sets(tmp_path / "nope")
    with pytest.raises(EvalInputError, match="no ELEVATER data set found under"):
        open_sets(tmp_path)
    with pytest.raises(EvalInputError, match="unknown ELEVATER data set 'cifar10'"):
        open_sets(data_root, ["cifar10"])
    (ds,) = open_sets(data_root, ["shape-sizes"])
    with pytest.raises(EvalInputError, match="cannot sample 40 shots per class"):
        fewshot_ids(data_root, ds, 40, 0)


def test_elevater_fewshot_sampling_is_vision_datasets_and_seeded(data_root):
    (ds,) = open_sets(data_root, ["shape-sizes"])
    a, b, c = (fewshot_ids(data_root, ds, 5, s) for s in (0, 0, 1))
    assert a == b and a != c
    train = read_split(data_root, ds, "train")
    labels = dict(zip(train.ids, train.labels))
    counts = [sum(labels[i] == k for i in a) for k in range(3)]
    assert counts == [5, 5, 5]  # SampleFewShot: single-label images, exactly n shots per class


def test_elevater_zeroshot_linear_fewshot_table_and_average(model, data_root, tmp_path):
    zs = run_elevater(model, data_root, "zeroshot")
    (ds,) = open_sets(data_root, ["shape-sizes"])
    test = read_split(data_root, ds, "test")
    weights = model.classifier(SIZES, ["a photo of a {}."])
    ref = float((model.similarity(model.encode_image(test.images), weights).argmax(1) == torch.tensor(test.labels))
                .float().mean())
    assert zs["datasets"]["shape-sizes"]["acc1"] == pytest.approx(ref) and zs["average"] == pytest.approx(
        (ref + zs["datasets"]["shapes-relabelled"]["score"]) / 2)
    small = FinetuneConfig(epochs=5, batch_size=8, lrs=(1e-2, 1e-1), wds=(1e-5, 1e-3))  # the grids are parameters
    few = run_elevater(model, data_root, "fewshot", shots=5, datasets=["shape-sizes"], finetune_config=small)
    row = few["datasets"]["shape-sizes"]
    assert few["seeds"] == [0, 1, 2] and few["shots"] == 5 and "score_std" in row and 0 <= row["score"] <= 1
    # seeds make runs repeatable
    assert run_elevater(model, data_root, "fewshot", shots=5, datasets=["shape-sizes"], finetune_config=small) == few
    assert [r["seed"] for r in row["runs"]] == [0, 1, 2] and all(r["lr"] in (1e-2, 1e-1) for r in row["runs"])
    lin = run_elevater(model, data_root, "linear", datasets=["shapes-relabelled"], finetune_config=small)
    assert lin["shots"] is None and lin["seeds"] == [0]
    assert lin["datasets"]["shapes-relabelled"]["acc1"] > zs["datasets"]["shapes-relabelled"]["acc1"] + 0.3
    paths = write_elevater(few, tmp_path / "out" / "few")
    assert json.loads(Path(paths["json"]).read_text()) == few
    md = elevater_markdown(few)
    assert f"| shape-sizes | accuracy | {100 * row['score']:.2f} ± {100 * row['score_std']:.2f} |" in md
    assert f"| **ELEVATER average** | | **{100 * few['average']:.2f}** | |" in md


def test_elevater_finetune_improves_over_zeroshot_and_is_repeatable(model, data_root):
    (ds,) = open_sets(data_root, ["shapes-relabelled"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FinetuneConfig(epochs=4, batch_size=8, lrs=(1e-2, 1e-1), wds=(1e-4,))
    zs = evaluate_set(model, data_root, ds, "zeroshot")
    ft = evaluate_set(model, data_root, ds, "finetune", finetune_config=cfg)
    assert zs["acc1"] < 0.2 and ft["acc1"] > zs["acc1"] + 0.3, (ft, zs)
    assert len(ft["runs"]) == 1 and ft["runs"][0]["lr"] in (1e-2, 1e-1) and ft["runs"][0]["wd"] == 1e-4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is restored
    # a seeded run repeats exactly (a short one: same seed, same data, same logits)
    split = read_split(data_root, ds, "train")
    x, y = model.pixels(split.images[:6]), torch.tensor(split.labels[:6])
    tower = image_tower_parameters(model, x)
    head = model.classifier(SHAPES3, ["a photo of a {}."])
    short = FinetuneConfig(epochs=1, batch_size=3, lrs=(1e-2,), wds=(1e-4,), seed=5)
    runs = []
    for _ in range(2):
        runs.append(train_head_and_tower(model, tower, head, x, y, x, y, 1e-2, 1e-4, short)[1])
        model.load_state_dict(before)
    assert torch.equal(runs[0], runs[1])


def test_cli_eval_elevater_writes_json_and_markdown(data_root, tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    out = tmp_path / "res" / "zs"
    args = ["eval", "elevater", "--data-root", str(data_root), "--mode", "zeroshot", "-m", "clipzoo/tiny-shapes",
            "--datasets", "shape-sizes", "--device", "cpu", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["mode"] == "zeroshot" and list(record["datasets"]) == ["shape-sizes"]
    assert record["average"] == record["datasets"]["shape-sizes"]["score"]
    assert "| **ELEVATER average** |" in out.with_suffix(".md").read_text()
    bad = CliRunner().invoke(app, ["eval", "elevater", "--data-root", str(data_root), "--mode", "probe",
                                   "-m", "clipzoo/tiny-shapes"])
    assert bad.exit_code == 2
    assert "unknown --mode 'probe': choose from zeroshot, linear, fewshot, finetune" in bad.output


def test_elevater_weight_decay_search_follows_its_schedule():
    import math

    visited = []

    def score(wd):
        visited.append(WD_GRID.index(wd))
        return -abs(math.log10(wd) - 0.3)

    wd, best = search_weight_decay(score)
    assert len(WD_GRID) == 97 and WD_GRID[0] == pytest.approx(1e-6) and WD_GRID[-1] == pytest.approx(1e6)
    # 7 coarse points (logspace(-6, 6, 7)), then peak ± 8, ± 4, ± 2, ± 1 around the best so far
    assert visited == [0, 16, 32, 48, 64, 80, 96, 40, 56, 44, 52, 50, 54, 49, 51]
    assert wd == WD_GRID[50] and best == pytest.approx(-abs(math.log10(WD_GRID[50]) - 0.3))
