"""The Evaluator: tasks on data sets read from disk, one embedding pass, caches, CLIP_benchmark parity
end to end (its own data loader on the same folder), and bad images counted and named."""
from __future__ import annotations

import shutil

import pytest
import torch

from clipzoo.datasets import write_shapes
from clipzoo.datasets.readers import open_dataset
from clipzoo.errors import BadImageError, DatasetError, EvalInputError
from clipzoo.eval import zeroshot_classify
from clipzoo.eval.runner import Evaluator, split_train_test, supported_tasks
from test_datasets_readers import _clip_benchmark_layout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import clipzoo
    from clipzoo.testing.tiny import tiny_model, write_open_clip_safetensors

    path = write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", 0, embed_config=True)
    return tiny_model(0), clipzoo.load(str(path))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev") / "shapes"
    write_shapes(root, 42, seed=3, image_size=32, shard_size=10)
    return root


def test_zeroshot_equals_the_direct_library_path(tiny, shapes):
    _, model = tiny
    data = open_dataset(shapes)
    result = Evaluator(model, workers=0).zeroshot(data)
    records = list(data)
    direct = zeroshot_classify(model, [r.image for r in records], [r.label for r in records], data.classnames,
                               data.templates)
    assert result.metrics == pytest.approx(direct, abs=1e-12)
    assert set(result.metrics) == {"acc1", "acc5", "mean_per_class_recall"}
    rec = result.record
    assert (rec["dataset"], rec["model"], rec["task"], rec["language"]) == (
        "shapes", "tiny", "zeroshot_classification", "en")


def test_workers_and_shard_layouts_give_the_same_features(tiny, shapes):
    _, model = tiny
    f0 = Evaluator(model, workers=0).features(open_dataset(shapes))
    f2 = Evaluator(model, workers=2).features(open_dataset(shapes / "webdataset"))
    assert f0.keys == f2.keys  # order restored across workers
    assert torch.allclose(f0.features, f2.features, atol=1e-6)
    assert torch.equal(f0.labels, f2.labels)


def test_every_task_shares_one_embedding_pass(tiny, shapes):
    _, model = tiny
    ev = Evaluator(model, workers=0)
    data = open_dataset(shapes)
    tasks = supported_tasks(ev, data)
    assert tasks == ["zeroshot", "retrieval", "linear-probe", "knn", "cluster"]
    results = ev.run(["zeroshot", "retrieval", "knn", "cluster"], data)
    ev.zeroshot(data)
    assert ev.stats == {"image_passes": 1, "class_weight_passes": 1}
    assert set(results["retrieval"].metrics) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text")
                                                 for k in (1, 5, 10)}
    assert set(results["knn"].metrics) == {"knn_acc1", "knn_acc5", "knn_mean_per_class_recall"}
    assert set(results["cluster"].metrics) == {"nmi", "ami", "ari"}
    assert all(0 <= v <= 1 for v in results["knn"].metrics.values())


def test_features_cache_on_disk_is_reused(tiny, shapes, tmp_path):
    _, model = tiny
    data = open_dataset(shapes)
    first = Evaluator(model, workers=0, cache_dir=tmp_path)
    a = first.zeroshot(data).metrics
    second = Evaluator(model, workers=0, cache_dir=tmp_path)
    assert second.zeroshot(data).metrics == a
    assert second.stats["image_passes"] == 0
    # a damaged cache file is recomputed, not trusted
    for f in tmp_path.glob("features-*.pt"):
        f.write_bytes(b"garbage")
    third = Evaluator(model, workers=0, cache_dir=tmp_path)
    assert third.zeroshot(data).metrics == a and third.stats["image_passes"] == 1


def test_knn_with_explicit_train_data_and_with_a_split(tiny, shapes):
    _, model = tiny
    ev = Evaluator(model, workers=0)
    data = open_dataset(shapes)
    f = ev.features(data)
    train_idx, test_idx = split_train_test(len(f), f.labels, 0.5, seed=0)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist()) and len(train_idx) + len(test_idx) == 42
    for c in f.labels.unique():  # stratified: every class on both sides
        assert (f.labels[train_idx] == c).any() and (f.labels[test_idx] == c).any()
    assert torch.equal(split_train_test(len(f), f.labels, 0.5, seed=0)[0], train_idx)
    from clipzoo.eval import knn_metrics

    got = ev.knn(data, k=5).metrics
    want = knn_metrics(f.features[train_idx], f.labels[train_idx], f.features[test_idx], f.labels[test_idx], k=5,
                       num_classes=7)
    assert got == {f"knn_{k}": v for k, v in want.items()}
    # train on the whole data set, test on itself: every point is its own nearest neighbour at k=1
    assert ev.knn(data, train_data=data, k=1).metrics["knn_acc1"] == 1.0


@pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")
def test_same_zeroshot_and_retrieval_as_clip_benchmark_on_its_own_layout(tiny, tmp_path, monkeypatch):
    """clip_benchmark reads the folder with its own webdataset loader; we read it with ours."""
    zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    zsr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    import open_clip

    from test_eval_parity_clip_benchmark import _cb_accuracy

    monkeypatch.setattr(zsc, "accuracy", _cb_accuracy)
    ref, model = tiny
    root = _clip_benchmark_layout(tmp_path / "cls", n=23)
    (root / "classnames.txt").write_text("apple\nbanana\ncherry\ndate\nelder\nfig\n")
    ds = builder.build_wds_dataset("wds/x", model.transform, split="test", data_dir=str(root))
    loader = torch.utils.data.DataLoader(ds.batched(8), batch_size=None, num_workers=0)
    expected = zsc.evaluate(ref, loader, open_clip.tokenize, ds.classes, ds.templates, device="cpu", amp=False)
    got = Evaluator(model, workers=0).zeroshot(open_dataset(root)).metrics
    assert got == pytest.approx({k: expected[k] for k in got}, abs=1e-12)

    root = _clip_benchmark_layout(tmp_path / "ret", n=11, retrieval=True)
    ds = builder.build_wds_dataset("wds/y", model.transform, split="test", data_dir=str(root))
    loader = torch.utils.data.DataLoader(ds.batched(4), batch_size=None, num_workers=0)
    expected = zsr.evaluate(ref, loader, open_clip.tokenize, "cpu", amp=False, recall_k_list=[1, 5, 10])
    got = Evaluator(model, workers=0).retrieval(open_dataset(root)).metrics
    assert got == pytest.approx(expected, abs=1e-12)


def test_missing_and_corrupt_images_are_counted_and_named(tiny, shapes, tmp_path):
    _, model = tiny
    root = tmp_path / "copy"
    shutil.copytree(shapes, root)
    pngs = sorted((root / "images").rglob("*.png"))
    pngs[0].unlink()
    pngs[5].write_bytes(b"\x89PNG broken")
    data = open_dataset(root)
    result = Evaluator(model, workers=0).zeroshot(data)
    rec = result.record
    assert rec["skipped_images"] == 2
    named = sorted(s["input"] for s in rec["skipped"])
    assert named == sorted([str(pngs[0]), str(pngs[5])])
    assert any("does not exist" in s["error"] for s in rec["skipped"])
    assert any("cannot be decoded" in s["error"] for s in rec["skipped"])
    assert len(Evaluator(model, workers=0).features(data)) == 40
    with pytest.raises(BadImageError, match=r"--strict stops at the first bad image"):
        Evaluator(model, workers=0, strict=True).zeroshot(data)


def test_tasks_refuse_data_that_lacks_what_they_need(tiny, tmp_path):
    from PIL import Image

    _, model = tiny
    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "nolabels.csv").write_text("filepath,caption\n0.png,a\n1.png,b\n2.png,c\n")
    ev = Evaluator(model, workers=0)
    data = open_dataset(tmp_path / "nolabels.csv")
    with pytest.raises(DatasetError, match=r"task zeroshot needs class labels but data set 'nolabels' has none"):
        ev.zeroshot(data)
    assert supported_tasks(ev, data) == ["retrieval"]
    (tmp_path / "labels.csv").write_text("filepath,label\n0.png,0\n1.png,1\n2.png,5\n")
    data = open_dataset(tmp_path / "labels.csv", classnames=["a", "b"])
    with pytest.raises(DatasetError, match="labels up to 5 but only 2 class names"):
        ev.zeroshot(data)
    with pytest.raises(DatasetError, match="needs captions"):
        ev.retrieval(data)
    with pytest.raises(EvalInputError, match="too few to split"):
        split_train_test(1, None)


def test_linear_probe_uses_the_cached_features_and_a_seeded_split(tiny, shapes):
    from clipzoo.eval import linear_probe

    _, model = tiny
    ev = Evaluator(model, workers=0)
    data = open_dataset(shapes)
    f = ev.features(data)
    train_idx, test_idx = split_train_test(len(f), f.labels, 0.5, seed=0)
    want = linear_probe(f.features[train_idx].numpy(), f.labels[train_idx].numpy(), f.features[test_idx].numpy(),
                        f.labels[test_idx].numpy(), num_classes=7, seed=0)
    got = ev.linear_probe(data).metrics
    assert got == pytest.approx(want, abs=1e-12)
    assert {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "regularization"} <= set(got)
    few = ev.linear_probe(data, fewshot_k=2).metrics
    assert few["fewshot_k"] == 2
    assert ev.stats["image_passes"] == 1


def test_train_split_of_a_clip_benchmark_folder(tiny, tmp_path):
    """knn / linear-probe train on <root>/train when the data set has one (CLI: automatic)."""
    _, model = tiny
    root = _clip_benchmark_layout(tmp_path / "cb", n=12)
    shutil.copytree(root / "test", root / "train")
    test, train = open_dataset(root, "test"), open_dataset(root, "train")
    assert [s.url for s in train.shards][0].endswith("train/0.tar")
    ev = Evaluator(model, workers=0)
    assert ev.knn(test, train_data=train, k=1).metrics["knn_acc1"] == 1.0  # the same images
    assert ev.stats["image_passes"] == 2
