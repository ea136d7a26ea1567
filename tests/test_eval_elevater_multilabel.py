"""ELEVATER's multilabel set (voc-2007-classification, 11-point mAP; issue 23 §1) on small multilabel data sets
written by vision-datasets itself from generated images: two-shape images (two shapes -> two labels), and a swapped
shape + colour set (one object -> its shape and its colour as two labels, the names swapped so that zero-shot is
wrong by construction, as test_eval_elevater.py's relabelled multiclass set) for the linear, fewshot and finetune
modes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("vision_datasets")
pytest.importorskip("sklearn")

from vision_datasets import CocoDictGeneratorFactory, DatasetManifest, DatasetTypes, ImageDataManifest  # noqa: E402
from vision_datasets.common.data_manifest.data_manifest import CategoryManifest  # noqa: E402
from vision_datasets.image_classification import ImageClassificationLabelManifest  # noqa: E402

from clipzoo.datasets.shapes_dataset import ShapesDataset  # noqa: E402
from clipzoo.datasets.shapes_spec import SHAPES  # noqa: E402
from clipzoo.errors import EvalInputError  # noqa: E402
from clipzoo.eval.elevater import (  # noqa: E402
    elevater_markdown,
    evaluate_set,
    map_11_points,
    multilabel_targets,
    run_elevater,
)
from clipzoo.eval.elevater_data import catalog, fewshot_ids, multilabel_val_split, open_sets, read_split  # noqa: E402
from clipzoo.eval.elevater_finetune import (  # noqa: E402
    FinetuneConfig,
    eval_score,
    head_loss,
    image_tower_parameters,
    train_head_and_tower,
)

CLASSES = list(SHAPES)
SPLITS = {"train": (8, 31), "test": (40, 33)}  # (images, generator seed)
# shape + colour: category i is drawn as SC_CLASSES[i] but named SC_NAMES[i] (circle <-> square, blue <-> red)
SC_CLASSES = ["circle", "square", "blue", "red"]
SC_NAMES = ["square", "circle", "red", "blue"]
SC_SPLITS = {"train": (16, 31), "test": (24, 33)}


def two_shape_samples(n, seed):
    """Generated images holding two different shapes, with their two shape names."""
    data, out, i = ShapesDataset(8 * n, seed=seed, two_object_prob=1.0), [], 0
    while len(out) < n:
        shapes = sorted({o.shape for o in data.plan(i)["objects"]})
        if len(shapes) == 2:
            out.append((data[i].image, shapes))
        i += 1
    return out


def shape_color_samples(n, seed):
    """One-object images of a circle or square, blue or red, with their two labels: the shape and the colour."""
    data, out, i = ShapesDataset(60 * n, seed=seed, two_object_prob=0.0), [], 0
    while len(out) < n:
        obj = data.plan(i)["objects"][0]
        if obj.shape in SC_CLASSES and obj.color in SC_CLASSES:
            out.append((data[i].image, [obj.shape, obj.color]))
        i += 1
    return out


def write_multilabel_set(root, name="two-shapes", splits=SPLITS, classes=CLASSES, names=None,
                         samples=two_shape_samples):
    """``samples`` in vision-datasets' multilabel COCO format; category ``i`` (drawn as ``classes[i]``) is called
    ``names[i]`` (default: ``classes``)."""
    names = names or classes
    folder = root / name
    folder.mkdir(parents=True)
    entry = {"name": name, "version": 1, "type": "classification_multilabel", "format": "coco",
             "root_folder": name, "num_classes": len(classes)}
    generator = CocoDictGeneratorFactory.create(DatasetTypes.IMAGE_CLASSIFICATION_MULTILABEL)
    truth = {}
    for split, (n, seed) in splits.items():
        (folder / split).mkdir()
        images, truth[split] = [], []
        for i, (image, shapes) in enumerate(samples(n, seed)):
            image.save(folder / split / f"{i:04d}.png")
            ids = sorted(classes.index(s) for s in shapes)
            labels = [ImageClassificationLabelManifest(c) for c in ids]
            images.append(ImageDataManifest(i + 1, f"{split}/{i:04d}.png", image.width, image.height, labels))
            truth[split].append(ids)
        cats = [CategoryManifest(i, c) for i, c in enumerate(names)]
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
def model():
    import clipzoo

    return clipzoo.load("clipzoo/tiny-shapes", device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("elevater_ml")
    entry, truth = write_multilabel_set(root)
    swapped, sc_truth = write_multilabel_set(root, "shape-color-swapped", SC_SPLITS, SC_CLASSES, SC_NAMES,
                                             shape_color_samples)
    (root / "vision_datasets.json").write_text(json.dumps([entry, write_multiclass_set(root), swapped]))
    return root, {**truth, "sc": sc_truth}


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


def test_elevater_multilabel_voc2007_zeroshot_scores_11point_map(data, model):
    root, truth = data
    voc = {d["name"]: d for d in catalog()["datasets"]}["voc-2007-classification"]
    assert voc["metric"] == "11point_mAP" and voc["hub"]["type"] == "classification_multilabel"
    (ds,) = open_sets(root, ["two-shapes"])
    assert ds.multilabel and ds.classnames == CLASSES and ds.metric == "11point_mAP"
    test = read_split(root, ds, "test")
    assert test.labels == truth["test"] and all(len(labels) == 2 for labels in test.labels)
    targets = multilabel_targets(test.labels, len(CLASSES))
    assert targets.sum() == 2 * len(test.labels) and targets[0, truth["test"][0]].tolist() == [1, 1]

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
    swapped = record["datasets"]["shape-color-swapped"]
    assert row["metric"] == "11point_mAP" and other["metric"] == "accuracy" and row["score"] > 0.65
    assert record["average"] == pytest.approx((row["score"] + other["score"] + swapped["score"]) / 3)
    md = out.with_suffix(".md").read_text()
    assert f"| two-shapes | 11point_mAP | {100 * row['score']:.2f} | – |" in md
    assert f"| one-shape | accuracy | {100 * other['score']:.2f} | {100 * other['acc1']:.2f} |" in md
    assert f"| **ELEVATER average** | | **{100 * record['average']:.2f}** | |" in md


def test_issue23_elevater_multilabel_cli_fewshot_runs_and_matches_the_library(data, model, tmp_path):
    """`clipzoo eval elevater --mode fewshot` on the multilabel set (formerly refused): ELEVATER's seeds, mean ± std
    of the 11-point mAP, the same numbers as the library."""
    from typer.testing import CliRunner

    from clipzoo.cli import app

    root, truth = data
    out = tmp_path / "few"
    args = ["eval", "elevater", "--data-root", str(root), "--mode", "fewshot", "--shots", "1", "--datasets",
            "two-shapes", "--epochs", "5", "--lrs", "0.01,0.1", "--wds", "1e-4", "--batch-size", "8",
            "-m", "clipzoo/tiny-shapes", "--device", "cpu", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    row = record["datasets"]["two-shapes"]
    cfg = FinetuneConfig(epochs=5, batch_size=8, lrs=(0.01, 0.1), wds=(1e-4,))
    lib = run_elevater(model, root, "fewshot", shots=1, datasets=["two-shapes"], finetune_config=cfg, batch_size=8)
    assert row == lib["datasets"]["two-shapes"] and record["seeds"] == [0, 1, 2] and record["shots"] == 1
    assert row["metric"] == "11point_mAP" and row["score"] == row["map_11_points"] and "acc1" not in row
    assert [r["seed"] for r in row["runs"]] == [0, 1, 2] and all("val_map_11_points" in r for r in row["runs"])
    targets = multilabel_targets(truth["test"], len(CLASSES))
    rng = np.random.default_rng(1)
    chance = np.mean([map_11_points(targets, rng.random(targets.shape)) for _ in range(5)])
    assert row["score"] > chance + 0.2, (row, chance)
    md = out.with_suffix(".md").read_text()
    assert f"| two-shapes | 11point_mAP | {100 * row['score']:.2f} ± {100 * row['score_std']:.2f} | – |" in md


def test_issue23_elevater_multilabel_head_loss_is_bce_on_multi_positive_targets(model):
    """The multilabel head trains with BCE-with-logits (ELEVATER's criterion for its multilabel sets): two positive
    labels of one image are both pushed up, which softmax cross-entropy cannot do."""
    logits = torch.tensor([[2.0, -1.0, 0.5]], requires_grad=True)
    targets = torch.tensor([[1.0, 1.0, 0.0]])
    loss = head_loss(logits, targets)
    sig = torch.sigmoid(logits.detach())[0]
    by_hand = -(torch.log(sig[0]) + torch.log(sig[1]) + torch.log(1 - sig[2])) / 3
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert loss.item() == pytest.approx(torch.nn.BCEWithLogitsLoss()(logits, targets).item(), rel=1e-6)
    loss.backward()
    assert torch.allclose(logits.grad, (sig - targets[0]).unsqueeze(0) / 3)
    assert logits.grad[0, 0] < 0 and logits.grad[0, 1] < 0 and logits.grad[0, 2] > 0  # both positives go up
    assert head_loss(logits.detach(), torch.tensor([0])).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits.detach(), torch.tensor([0])).item())  # class ids: cross-entropy
    # eval: ELEVATER's 11-point mAP of softmax(logits) for multilabel targets, top-1 for class ids
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
    multi = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert eval_score(scores, multi) == pytest.approx(map_11_points(multi.numpy(), scores.softmax(-1).numpy()))
    assert eval_score(scores, torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)
    # trained on images that all hold classes 0 and 1, the head ranks both above classes 2 and 3
    feats = model.encode_image([image for image, _ in two_shape_samples(6, 5)], normalize=False)
    multi = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 6)
    head = torch.nn.functional.normalize(torch.randn(4, feats.shape[1], generator=torch.Generator().manual_seed(0)),
                                         dim=-1)
    cfg = FinetuneConfig(epochs=3, batch_size=3)
    before = train_head_and_tower(model, [], head, feats, multi, feats, multi, 0.0, 0.0, cfg)[1]
    after = train_head_and_tower(model, [], head, feats, multi, feats, multi, 0.1, 0.0, cfg)[1]
    assert not (before[:, :2].min(1).values > before[:, 2:].max(1).values).all()
    assert (after[:, :2].min(1).values > after[:, 2:].max(1).values + 1).all(), after


def test_issue23_elevater_multilabel_val_split_is_elevaters_greedy_split():
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 0, 0], [0, 0, 1]])
    # wanted: ceil(0.2 * [4, 2, 3]) = [1, 1, 1]; class 0 takes row 0, class 1 row 1, class 2 row 2
    fit, val = multilabel_val_split(targets)
    assert val.tolist() == [0, 1, 2] and fit.tolist() == [3, 4, 5]
    # a row counts for every class it holds: row 1 serves classes 0 and 1
    fit, val = multilabel_val_split(np.array([[0, 0], [1, 1], [1, 0], [0, 1], [1, 1]]))
    assert val.tolist() == [1] and fit.tolist() == [0, 2, 3, 4]
    # ceil: 15 positives want 3 validation images, 16 want 4 (the first ones in data order)
    assert multilabel_val_split(np.ones((15, 1)))[1].tolist() == [0, 1, 2]
    assert multilabel_val_split(np.ones((16, 1)))[1].tolist() == [0, 1, 2, 3]
    with pytest.raises(EvalInputError, match=r"needs \(N, C\) 0/1 targets"):
        multilabel_val_split(np.ones(4))


def test_issue23_elevater_multilabel_linear_fewshot_finetune_score_11point_map(data, model):
    """The multilabel set in the linear, fewshot and finetune modes (BCE head, 11-point mAP): above chance, above
    zero-shot (wrong by construction on the swapped names), seeds repeat exactly, the model is restored."""
    root, truth = data
    (ds,) = open_sets(root, ["shape-color-swapped"])
    assert ds.multilabel and ds.classnames == SC_NAMES and ds.metric == "11point_mAP"
    targets = multilabel_targets(truth["sc"]["test"], len(SC_CLASSES))
    assert (targets.sum(1) == 2).all()  # every image: its shape and its colour
    rng = np.random.default_rng(1)
    chance = np.mean([map_11_points(targets, rng.random(targets.shape)) for _ in range(5)])
    zs = evaluate_set(model, root, ds, "zeroshot")["score"]
    assert zs < chance, (zs, chance)

    small = FinetuneConfig(epochs=5, batch_size=8, lrs=(1e-2, 1e-1), wds=(1e-4,))
    lin = run_elevater(model, root, "linear", datasets=[ds.name], finetune_config=small)
    row = lin["datasets"][ds.name]
    assert row["metric"] == "11point_mAP" and row["score"] == row["map_11_points"] and "acc1" not in row
    assert row["score"] > chance + 0.25 and row["score"] > zs + 0.35, (row, zs, chance)
    assert lin["average"] == row["score"] and row["runs"][0]["lr"] in (1e-2, 1e-1)

    # few-shot: vision-datasets' SampleFewShot on a multilabel manifest draws images until every class has 2
    ids = {seed: fewshot_ids(root, ds, 2, seed) for seed in (0, 1, 2)}
    train = read_split(root, ds, "train")
    labels = dict(zip(train.ids, train.labels))
    assert all(min(sum(c in labels[i] for i in chosen) for c in range(4)) >= 2 for chosen in ids.values())
    assert ids[0] != ids[1] and fewshot_ids(root, ds, 2, 0) == ids[0]
    few = run_elevater(model, root, "fewshot", shots=2, datasets=[ds.name], finetune_config=small)
    assert run_elevater(model, root, "fewshot", shots=2, datasets=[ds.name], finetune_config=small) == few
    frow = few["datasets"][ds.name]
    assert few["seeds"] == [0, 1, 2] and "score_std" in frow and frow["score"] > chance + 0.15, frow
    assert f"| {ds.name} | 11point_mAP | {100 * frow['score']:.2f} ± {100 * frow['score_std']:.2f} | – |" in (
        elevater_markdown(few))

    before = {k: v.clone() for k, v in model.state_dict().items()}
    ft = evaluate_set(model, root, ds, "finetune", finetune_config=small)
    assert ft["score"] > zs + 0.15 and ft["score"] > chance + 0.1, (ft, zs, chance)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is restored
    # a seeded end-to-end multilabel run repeats exactly
    x, y = model.pixels(train.images[:6]), torch.tensor(multilabel_targets(train.labels[:6], 4), dtype=torch.float32)
    tower = image_tower_parameters(model, x)
    head = model.classifier(SC_NAMES, ["a photo of a {}."])
    short = FinetuneConfig(epochs=1, batch_size=3, seed=5)
    runs = []
    for _ in range(2):
        runs.append(train_head_and_tower(model, tower, head, x, y, x, y, 1e-2, 1e-4, short))
        model.load_state_dict(before)
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
