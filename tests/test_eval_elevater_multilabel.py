"""ELEVATER's multilabel set (voc-2007-classification, 11-point mAP; issue 23 §1) on a small multilabel data set
written by vision-datasets itself from generated two-shape images (two shapes -> two labels)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("vision_datasets")
pytest.importorskip("sklearn")

from vision_datasets import CocoDictGeneratorFactory, DatasetManifest, DatasetTypes, ImageDataManifest  # noqa: E402
from vision_datasets.common.data_manifest.data_manifest import CategoryManifest  # noqa: E402
from vision_datasets.image_classification import ImageClassificationLabelManifest  # noqa: E402

from clipzoo.datasets.shapes_dataset import ShapesDataset  # noqa: E402
from clipzoo.datasets.shapes_spec import SHAPES  # noqa: E402
from clipzoo.errors import ClipzooError, EvalInputError  # noqa: E402
from clipzoo.eval.elevater import elevater_markdown, map_11_points, multilabel_targets, run_elevater  # noqa: E402
from clipzoo.eval.elevater_data import catalog, open_sets, read_split  # noqa: E402

CLASSES = list(SHAPES)
SPLITS = {"train": (8, 31), "test": (40, 33)}  # (images, generator seed)


def two_shape_samples(n, seed):
    """Generated images holding two different shapes, with their two shape names."""
    data, out, i = ShapesDataset(8 * n, seed=seed, two_object_prob=1.0), [], 0
    while len(out) < n:
        shapes = sorted({o.shape for o in data.plan(i)["objects"]})
        if len(shapes) == 2:
            out.append((data[i].image, shapes))
        i += 1
    return out


def write_multilabel_set(root, name="two-shapes"):
    folder = root / name
    folder.mkdir(parents=True)
    entry = {"name": name, "version": 1, "type": "classification_multilabel", "format": "coco",
             "root_folder": name, "num_classes": len(CLASSES)}
    generator = CocoDictGeneratorFactory.create(DatasetTypes.IMAGE_CLASSIFICATION_MULTILABEL)
    truth = {}
    for split, (n, seed) in SPLITS.items():
        (folder / split).mkdir()
        images, truth[split] = [], []
        for i, (image, shapes) in enumerate(two_shape_samples(n, seed)):
            image.save(folder / split / f"{i:04d}.png")
            labels = [ImageClassificationLabelManifest(CLASSES.index(s)) for s in shapes]
            images.append(ImageDataManifest(i + 1, f"{split}/{i:04d}.png", image.width, image.height, labels))
            truth[split].append([CLASSES.index(s) for s in shapes])
        cats = [CategoryManifest(i, c) for i, c in enumerate(CLASSES)]
        manifest = DatasetManifest(images, cats, DatasetTypes.IMAGE_CLASSIFICATION_MULTILABEL)
        (folder / f"{split}.json").write_text(json.dumps(generator.run(manifest)))
        entry[split] = {"index_path": f"{split}.json"}
    return entry, truth


def write_multiclass_set(root, name="one-shape", n=14, seed=41):
    """A multiclass set beside it (test split only), so the table and average hold both kinds."""
    folder = root / name
    (folder / "test").mkdir(parents=True)
    images = []
    for i, sample in enumerate(ShapesDataset(n, seed=seed, two_object_prob=0.0)):
        sample.image.save(folder / "test" / f"{i:04d}.png")
        label = ImageClassificationLabelManifest(CLASSES.index(sample.labels["shape"]))
        images.append(ImageDataManifest(i + 1, f"test/{i:04d}.png", 64, 64, [label]))
    manifest = DatasetManifest(images, [CategoryManifest(i, c) for i, c in enumerate(CLASSES)],
                               DatasetTypes.IMAGE_CLASSIFICATION_MULTICLASS)
    coco = CocoDictGeneratorFactory.create(DatasetTypes.IMAGE_CLASSIFICATION_MULTICLASS).run(manifest)
    (folder / "test.json").write_text(json.dumps(coco))
    return {"name": name, "version": 1, "type": "classification_multiclass", "format": "coco", "root_folder": name,
            "num_classes": len(CLASSES), "test": {"index_path": "test.json"}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("elevater_ml")
    entry, truth = write_multilabel_set(root)
    (root / "vision_datasets.json").write_text(json.dumps([entry, write_multiclass_set(root)]))
    return root, truth


def reference_map(targets, scores):
    """Independent 11-point mAP: rank by score (ties as one cut), precision/recall at every cut plus the curve's
    end point (precision 1, recall 0, as sklearn's curve that ELEVATER reads ends), the best precision at
    recall >= r for r = 0, 0.1, ..., 1, their mean; the mean over classes with a positive."""
    aps = []
    for c in range(targets.shape[1]):
        t, s = [int(v) for v in targets[:, c]], [float(v) for v in scores[:, c]]
        positives = sum(t)
        if positives == 0:
            continue
        curve = [(1.0, 0.0)]
        for cut in sorted(set(s), reverse=True):
            kept = [ti for ti, si in zip(t, s) if si >= cut]
            curve.append((sum(kept) / len(kept), sum(kept) / positives))
        points = []
        for k in range(11):
            at = [p for p, r in curve if r >= k / 10 - 1e-12]
            points.append(max(at) if at else 0.0)
        aps.append(sum(points) / 11)
    return sum(aps) / len(aps)


def test_elevater_11point_map_matches_its_definition():
    # hand-computed: class 0 ranks pos, neg, pos, neg -> precision 1 at recall .5, 2/3 at recall 1:
    # recalls 1.0 … 0.6 take 2/3, 0.5 … 0.0 take 1 -> (5 * 2/3 + 6) / 11 = 28/33; class 1 has no positive (left
    # out, as ELEVATER's evaluator does); class 2's one positive is ranked third -> precision 1/3 at recalls
    # 1.0 … 0.1 and 1 at recall 0 (the curve's end point) -> (10 / 3 + 1) / 11 = 13/33
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.1, 0.2], [0.7, 0.2, 0.3], [0.1, 0.3, 0.4]])
    assert map_11_points(targets, scores) == pytest.approx((28 / 33 + 13 / 33) / 2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = (rng.random((30, 6)) < 0.3).astype(int)
        s = np.round(rng.random((30, 6)), 1)  # ties too
        assert map_11_points(t, s) == pytest.approx(reference_map(t, s))
    with pytest.raises(EvalInputError, match="at least one positive label"):
        map_11_points(np.zeros((3, 2)), np.ones((3, 2)))


def test_elevater_multilabel_voc2007_zeroshot_scores_11point_map(data):
    root, truth = data
    voc = {d["name"]: d for d in catalog()["datasets"]}["voc-2007-classification"]
    assert voc["metric"] == "11point_mAP" and voc["hub"]["type"] == "classification_multilabel"
    (ds,) = open_sets(root, ["two-shapes"])
    assert ds.multilabel and ds.classnames == CLASSES and ds.metric == "11point_mAP"
    test = read_split(root, ds, "test")
    assert test.labels == truth["test"] and all(len(labels) == 2 for labels in test.labels)
    targets = multilabel_targets(test.labels, len(CLASSES))
    assert targets.sum() == 2 * len(test.labels) and targets[0, truth["test"][0]].tolist() == [1, 1]

    import clipzoo

    model = clipzoo.load("clipzoo/tiny-shapes", device="cpu")
    result = run_elevater(model, root, "zeroshot", datasets=["two-shapes"])
    row = result["datasets"]["two-shapes"]
    # ELEVATER's zero-shot probabilities: softmax(100 * cosine) over the classes, then its 11-point mAP
    weights = model.classifier(CLASSES, ["a photo of a {}."])
    feats = model.encode_image(test.images)
    probs = (100 * feats / feats.norm(dim=-1, keepdim=True) @ (weights / weights.norm(dim=-1, keepdim=True)).T)
    expected = reference_map(targets, probs.softmax(-1).detach().numpy())
    assert row["score"] == pytest.approx(expected) and row["map_11_points"] == row["score"]
    rng = np.random.default_rng(1)
    chance = np.mean([reference_map(targets, rng.random(targets.shape)) for _ in range(5)])
    assert row["score"] > chance + 0.2 and row["score"] > 0.65, (row, chance)
    assert result["average"] == row["score"] and "acc1" not in row
    assert f"| two-shapes | 11point_mAP | {100 * row['score']:.2f} | – |" in elevater_markdown(result)
    for mode in ("linear", "fewshot", "finetune"):
        with pytest.raises(ClipzooError, match="data set 'two-shapes' is multilabel: only --mode zeroshot"):
            run_elevater(model, root, mode)


def test_cli_eval_elevater_zeroshot_includes_the_multilabel_set(data, tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    root, _ = data
    out = tmp_path / "zs"
    args = ["eval", "elevater", "--data-root", str(root), "--mode", "zeroshot", "-m", "clipzoo/tiny-shapes",
            "--device", "cpu", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    row, other = record["datasets"]["two-shapes"], record["datasets"]["one-shape"]
    assert row["metric"] == "11point_mAP" and other["metric"] == "accuracy" and row["score"] > 0.65
    assert record["average"] == pytest.approx((row["score"] + other["score"]) / 2)
    md = out.with_suffix(".md").read_text()
    assert f"| two-shapes | 11point_mAP | {100 * row['score']:.2f} | – |" in md
    assert f"| one-shape | accuracy | {100 * other['score']:.2f} | {100 * other['acc1']:.2f} |" in md
    assert f"| **ELEVATER average** | | **{100 * record['average']:.2f}** | |" in md
    bad = CliRunner().invoke(app, args[:5] + ["linear"] + args[6:])
    assert bad.exit_code == 2 and "data set 'two-shapes' is multilabel: only --mode zeroshot" in bad.output
