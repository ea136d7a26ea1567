"""VOC-2007 multilabel: zero-shot mean average precision as CLIP_benchmark runs ``voc2007_multilabel``.

The data is written in PASCAL VOC 2007's own layout (ImageSets/Main listings, Annotations XML, JPEGImages)
and read both by CLIP_benchmark's ``PASCALVoc2007`` and by our ``read_voc2007``; CLIP_benchmark's
``zeroshot_classification.evaluate`` runs the open_clip model, ours runs the same weights through clipzoo.
"""
from __future__ import annotations

import json

import pytest
import torch

zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
voc = pytest.importorskip("clip_benchmark.datasets.voc2007")
open_clip = pytest.importorskip("open_clip")

from clipzoo.datasets.shapes import ShapesDataset  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.eval.multilabel import (  # noqa: E402
    VOC2007_CLASSES,
    average_precision_per_class,
    multilabel_metrics,
    read_voc2007,
    zeroshot_multilabel,
)

TEMPLATES = ["a photo of a {c}."]


def write_voc(root, n=24, seed=0, split="test"):
    """``n`` generated images, each with 1–3 VOC objects, in VOC 2007's layout; returns the (n, 20) targets."""
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    targets = torch.zeros(n, len(VOC2007_CLASSES))
    ids = [f"{i + 1:06d}" for i in range(n)]
    for i, (image_id, sample) in enumerate(zip(ids, ShapesDataset(n, seed=seed, image_size=48))):
        sample.image.save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
        k = int(torch.randint(1, 4, (1,), generator=g))
        classes = torch.randperm(len(VOC2007_CLASSES), generator=g)[:k].tolist() + [None]
        objects = "".join(
            f"<object><name>{VOC2007_CLASSES[c]}</name><pose>Unspecified</pose><bndbox><xmin>1</xmin><ymin>2</ymin>"
            f"<xmax>30</xmax><ymax>40</ymax></bndbox></object>" for c in classes if c is not None)
        for c in classes[:-1]:
            targets[i, c] = 1
        (base / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>{objects}</annotation>")
    for name in VOC2007_CLASSES:  # VOC's per-class listings: id and ±1 (the reader takes the first column)
        rows = [f"{image_id} {1 if targets[i, VOC2007_CLASSES.index(name)] else -1}" for i, image_id in enumerate(ids)]
        (base / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("\n".join(rows) + "\n")
    return targets


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import clipzoo
    from clipzoo.testing.tiny import tiny_model, write_open_clip_safetensors

    path = write_open_clip_safetensors(tmp_path_factory.mktemp("voc") / "tiny.safetensors", 1, embed_config=True)
    return tiny_model(1), clipzoo.load(str(path))


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocdata")
    return root, write_voc(root)


def test_voc2007_multilabel_same_as_clip_benchmark(models, voc_root):
    ref, ours = models
    root, targets = voc_root
    data = read_voc2007(root, "test")
    theirs = voc.PASCALVoc2007(root=str(root), set="test", transform=ours.preprocess, download=False)
    assert torch.equal(data.labels, theirs.labels) and torch.equal(data.labels, targets)
    assert data.classes == list(theirs.classes)
    loader = torch.utils.data.DataLoader(theirs, batch_size=8)
    expected = zsc.evaluate(ref, loader, open_clip.tokenize, theirs.classes, TEMPLATES, device="cpu", amp=False)
    got = zeroshot_multilabel(ours, loader, None, data.classes, TEMPLATES, batch_size=8)
    assert got["mean_average_precision"] == pytest.approx(expected["mean_average_precision"], abs=1e-6)
    assert 0.0 < got["mean_average_precision"] < 1.0
    # from the files, through clipzoo's own image loading: the same figure
    from_paths = zeroshot_multilabel(ours, data.paths, data.labels, data.classes, TEMPLATES, batch_size=8)
    assert from_paths["mean_average_precision"] == pytest.approx(expected["mean_average_precision"], abs=1e-6)
    assert list(from_paths["average_precision_per_class"]) == list(VOC2007_CLASSES)
    # our general zero-shot entry point detects (N, C) targets as CLIP_benchmark's evaluate does
    from clipzoo.eval.zeroshot import zeroshot_classify

    classified = zeroshot_classify(ours, loader, None, data.classes, TEMPLATES, batch_size=8)
    assert set(classified) == {"mean_average_precision", "average_precision_per_class"}
    assert classified["mean_average_precision"] == pytest.approx(expected["mean_average_precision"], abs=1e-6)


def test_voc2007_multilabel_average_precision_same_as_clip_benchmark():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(50, 6, generator=g)
    targets = (torch.rand(50, 6, generator=g) < 0.3).float()
    targets[:, 4] = 0  # a class no image has: AP 0 in both
    expected = zsc.average_precision_per_class(scores, targets)
    got = average_precision_per_class(scores, targets)
    assert torch.allclose(got, expected, atol=1e-6)
    assert got[4].item() == 0.0


def test_voc2007_multilabel_average_precision_by_hand():
    # class 0 ranked: pos, neg, pos -> (1/1 + 2/3) / 2; class 1 ranked: neg, pos, neg -> 1/2
    scores = torch.tensor([[0.9, 0.9], [0.8, 0.1], [0.1, 0.5]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 1]])
    m = multilabel_metrics(scores, targets, ["a", "b"])
    assert m["average_precision_per_class"] == pytest.approx({"a": 5 / 6, "b": 0.5})
    assert m["mean_average_precision"] == pytest.approx((5 / 6 + 0.5) / 2)


def test_voc2007_multilabel_errors(tmp_path, voc_root):
    with pytest.raises(ClipzooError, match=r"aeroplane_test\.txt is missing: point --data-root at the folder "
                                           r"holding VOCdevkit/"):
        read_voc2007(tmp_path, "test")
    with pytest.raises(ClipzooError, match=r"^unknown VOC split 'dev': choose from train, val, trainval, test$"):
        read_voc2007(voc_root[0], "dev")
    with pytest.raises(ClipzooError, match=r"scores \(3, 2\) and targets \(3, 3\) must both be \(N, C\)"):
        average_precision_per_class(torch.zeros(3, 2), torch.zeros(3, 3))


def test_voc2007_multilabel_cli(voc_root, tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    out = tmp_path / "voc.json"
    r = CliRunner().invoke(app, ["eval", "voc2007-multilabel", "-m", "clipzoo/tiny-shapes", "--data-root",
                                 str(voc_root[0]), "--output", str(out), "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    record = json.loads(out.read_text())
    assert (record["dataset"], record["task"]) == ("voc2007_multilabel", "zeroshot_classification")
    assert json.loads(r.stdout)["metrics"] == record["metrics"]
    import clipzoo

    expected = zeroshot_multilabel(clipzoo.load("clipzoo/tiny-shapes"), read_voc2007(voc_root[0]).paths, voc_root[1],
                                   VOC2007_CLASSES, TEMPLATES)
    assert record["metrics"]["mean_average_precision"] == pytest.approx(expected["mean_average_precision"], abs=1e-6)
    bad = CliRunner().invoke(app, ["eval", "voc2007-multilabel", "-m", "clipzoo/tiny-shapes", "--data-root",
                                   str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "is missing: point --data-root" in bad.output
