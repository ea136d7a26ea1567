"""Evaluation metrics on tiny hand-computed examples, edge cases, and the model-side task functions."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clipzoo.errors import ClipzooError
from clipzoo.eval import (
    EvalInputError,
    accuracy,
    cluster_metrics,
    clustering_scores,
    knn_metrics,
    knn_scores,
    make_result,
    mean_per_class_recall,
    output_path,
    read_result,
    retrieval_evaluate,
    retrieval_metrics,
    write_result,
    zeroshot_classify,
    zeroshot_logits,
    zeroshot_metrics,
    zeroshot_predict,
)

# ------------------------------------------------------------------ zero-shot
LOGITS_4x3 = torch.tensor([[0.9, 0.05, 0.05],   # target 0 -> predicted 0 (hit)
                           [0.1, 0.7, 0.2],     # target 1 -> predicted 1 (hit)
                           [0.3, 0.3, 0.4],     # target 1 -> predicted 2 (miss, 1 is tied 2nd with 0)
                           [0.6, 0.3, 0.1]])    # target 1 -> predicted 0 (miss, 1 is 2nd)
TARGETS_4 = torch.tensor([0, 1, 1, 1])


def test_zeroshot_hand_computed_three_classes():
    m = zeroshot_metrics(LOGITS_4x3, TARGETS_4)
    assert m["acc1"] == pytest.approx(0.5)
    # class 0: 1/1 right, class 1: 1/3 right -> (1 + 1/3) / 2
    assert m["mean_per_class_recall"] == pytest.approx(2 / 3)
    assert "acc5" not in m  # fewer than 5 classes: no acc5
    # top-2: row 2 ranks [2, 0, 1] (tie 0/1 -> lower index first), so it misses; row 3 hits
    assert accuracy(LOGITS_4x3, TARGETS_4, topk=(1, 2, 3)) == [0.5, 0.75, 1.0]


def test_zeroshot_acc5_with_six_classes():
    logits = torch.tensor([[6., 5, 4, 3, 2, 1],    # target 4: rank 5 -> top-5 hit
                           [6., 5, 4, 3, 2, 1],    # target 5: rank 6 -> miss
                           [1., 2, 3, 4, 5, 6],    # target 5: rank 1 -> hit
                           [0., 0, 9, 0, 0, 0]])   # target 2: rank 1 -> hit
    targets = [4, 5, 5, 2]
    m = zeroshot_metrics(logits, targets)
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc5"] == pytest.approx(0.75)
    # present classes 2, 4, 5: recalls 1, 0, 1/2
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    # numpy and lists work the same
    assert zeroshot_metrics(logits.numpy(), np.array(targets)) == m
    # num_classes decides acc5 as in CLIP_benchmark (len(dataset.classes))
    assert "acc5" not in zeroshot_metrics(logits[:, :4], [0, 1, 2, 3], num_classes=4)


def test_ties_break_to_lower_index():
    logits = torch.tensor([[1., 1., 0.], [0., 2., 2.]])
    assert accuracy(logits, [1, 1], topk=(1, 2)) == [0.5, 1.0]
    assert accuracy(logits, [0, 2], topk=(1,)) == [0.5]
    assert mean_per_class_recall([0, 2], logits.argmax(1)) == pytest.approx(0.5)


def test_zeroshot_logits_from_features_and_weights():
    feats = torch.tensor([[2., 0.], [0., 3.], [1., 1.]])
    weights = torch.tensor([[1., 0.], [0., 1.]])           # (C, D)
    logits = zeroshot_logits(feats, weights)
    assert torch.allclose(logits[0], torch.tensor([100., 0.]))
    assert torch.allclose(zeroshot_logits(feats, weights.T.contiguous() * 5), logits)  # (D, C), unnormalised
    assert zeroshot_metrics(logits, [0, 1, 0])["acc1"] == pytest.approx(1.0)  # tie on row 2 -> class 0


@pytest.mark.parametrize("call", [
    lambda: zeroshot_metrics(torch.empty(0, 3), torch.empty(0, dtype=torch.long)),
    lambda: zeroshot_metrics([], []),
    lambda: accuracy(torch.empty(0, 6), [], topk=(1, 5)),
    lambda: retrieval_metrics(torch.empty(0, 4), torch.empty(0, 4), []),
    lambda: knn_metrics(torch.empty(0, 4), [], torch.randn(2, 4), [0, 1]),
    lambda: cluster_metrics(torch.empty(0, 4), []),
    lambda: mean_per_class_recall([], []),
])
def test_empty_input_raises_clear_error(call):
    with pytest.raises(ClipzooError, match="empty"):
        call()


def test_bad_input_errors():
    with pytest.raises(EvalInputError, match="4 examples"):
        zeroshot_metrics(LOGITS_4x3, [0, 1])
    with pytest.raises(EvalInputError, match="outside"):
        zeroshot_metrics(LOGITS_4x3, [0, 1, 2, 3])
    with pytest.raises(EvalInputError, match="dimension"):
        zeroshot_metrics(torch.zeros(3), [0, 1, 2])
    assert issubclass(EvalInputError, ValueError)


# ------------------------------------------------------------------ retrieval
def _retrieval_fixture():
    images = torch.tensor([[1., 0.], [0., 1.]])
    texts = torch.tensor([[1., 0.1],    # caption of image 0: nearest image 0 (hit)
                          [0.1, 1.],    # caption of image 1: nearest image 1 (hit)
                          [1., 0.]])    # caption of image 1: nearest image 0 (miss)
    return images, texts, [0, 1, 1]


def test_retrieval_hand_computed_several_captions():
    images, texts, index = _retrieval_fixture()
    m = retrieval_metrics(images, texts, index, recall_k=(1, 2, 5))
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["image_retrieval_recall@2"] == pytest.approx(1.0)
    # image 0's best text is text 2 (an image-1 caption): miss; image 1's best is text 1: hit
    assert m["text_retrieval_recall@1"] == pytest.approx(0.5)
    # image 0's top-2 texts are 2 and 0: hit as soon as ANY of its captions is in
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)
    assert m["text_retrieval_recall@5"] == pytest.approx(1.0)  # k beyond the gallery is clamped
    # a boolean positives matrix gives the same
    pos = torch.tensor([[True, False], [False, True], [False, True]])
    assert retrieval_metrics(images, texts, pos, recall_k=(1, 2, 5)) == m
    assert set(retrieval_metrics(images, texts, index)) == {
        f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}


def test_retrieval_bad_index():
    images, texts, _ = _retrieval_fixture()
    with pytest.raises(EvalInputError, match="3 texts"):
        retrieval_metrics(images, texts, [0, 1])
    with pytest.raises(EvalInputError, match="outside"):
        retrieval_metrics(images, texts, [0, 1, 2])


# ------------------------------------------------------------------ knn
def test_knn_hand_computed():
    train = torch.tensor([[1., 0.], [0.8, 0.6], [0., 1.]])
    labels = [0, 1, 1]
    test = torch.tensor([[1., 0.], [0.6, 0.8]])
    scores = knn_scores(train, labels, test, k=2, temperature=0.07)
    t = 0.07
    expected = torch.tensor([[math.exp(1 / t), math.exp(0.8 / t)],
                             [0., math.exp(0.96 / t) + math.exp(0.8 / t)]])
    expected /= torch.tensor([[math.exp(1 / t)], [math.exp(0.96 / t)]])  # the nearest neighbour's weight is 1
    assert torch.allclose(scores, expected, rtol=1e-4)
    m = knn_metrics(train, labels, test, [0, 1], k=20)  # k clamped to 3 training examples
    assert m == {"acc1": 1.0, "mean_per_class_recall": 1.0}
    # k=3: test 0 gets exp(1/t) for class 0 vs exp(.8/t)+exp(0) for class 1 -> still class 0
    assert knn_scores(train, labels, test, k=3).argmax(1).tolist() == [0, 1]


def test_knn_votes_at_a_low_temperature_do_not_overflow():
    """exp(sim / T) overflowed float32 below T ≈ 0.0113: every class scored inf and the lowest class id won."""
    train = torch.tensor([[1., 0.], [0., 1.], [0.1, 1.]])
    labels = [0, 1, 1]
    test = torch.tensor([[0.1, 1.], [1., 0.05]])
    for t in (0.07, 0.01, 0.001, 1e-6):
        scores = knn_scores(train, labels, test, k=3, temperature=t)
        assert torch.isfinite(scores).all() and scores.argmax(1).tolist() == [1, 0], t
        assert knn_metrics(train, labels, test, [1, 0], k=3, temperature=t)["acc1"] == 1.0


def test_knn_top5_with_many_classes():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 16, generator=g)
    train_y = torch.arange(6).repeat(10)
    train = centers[train_y] + 0.05 * torch.randn(60, 16, generator=g)
    test_y = torch.arange(6).repeat(3)
    test = centers[test_y] + 0.05 * torch.randn(18, 16, generator=g)
    m = knn_metrics(train, train_y, test, test_y)
    assert m["acc1"] == 1.0 and m["acc5"] == 1.0


# ------------------------------------------------------------------ clustering
def test_cluster_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(8)[:4] * 10
    y = torch.arange(4).repeat(10)
    x = centers[y] + 0.01 * torch.randn(40, 8, generator=g)
    m = cluster_metrics(x, y)
    assert m == pytest.approx({"nmi": 1.0, "ami": 1.0, "ari": 1.0})


def test_clustering_scores_hand():
    # a relabelling of the classes is a perfect clustering
    assert clustering_scores([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx({"nmi": 1.0, "ami": 1.0, "ari": 1.0})
    # ARI of [0,0,1,1] vs [0,1,0,1]: index -0.5 (hand: sum C(n_ij,2)=0, expected 2*2/6, max 2)
    assert clustering_scores([0, 0, 1, 1], [0, 1, 0, 1])["ari"] == pytest.approx(-0.5)
    assert clustering_scores([0, 0, 1, 1], [0, 1, 0, 1])["nmi"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(EvalInputError, match="clusters"):
        cluster_metrics(torch.randn(2, 3), [0, 1], num_classes=3)


# ------------------------------------------------------------------ results JSON
def test_results_roundtrip_and_clip_benchmark_schema(tmp_path):
    rec = make_result("cifar10", "ViT-B-32", "openai", "zeroshot",
                      {"acc1": torch.tensor(0.5), "acc5": np.float64(0.75)}, language="en")
    assert list(rec) == ["dataset", "model", "pretrained", "task", "metrics", "language"]
    assert rec["task"] == "zeroshot_classification" and rec["metrics"] == {"acc1": 0.5, "acc5": 0.75}
    name = output_path(dataset="cifar10", pretrained="laion/x", model="ViT-B-32", language="en",
                       task=rec["task"])
    assert name == "cifar10_laion_x_ViT-B-32_en_zeroshot_classification.json"
    path = write_result(tmp_path / "sub" / name, rec)
    assert read_result(path) == rec
    # a file as clip_benchmark writes it (compact, NaN acc5) reads back
    cb = {"dataset": "x", "model": "m", "pretrained": "p", "task": "zeroshot_classification",
          "metrics": {"acc1": 1.0, "acc5": float("nan"), "mean_per_class_recall": 1.0}, "language": "en"}
    (tmp_path / "cb.json").write_text(json.dumps(cb))
    assert math.isnan(read_result(tmp_path / "cb.json")["metrics"]["acc5"])
    (tmp_path / "bad.json").write_text('{"dataset": "x"}')
    with pytest.raises(EvalInputError, match="missing key"):
        read_result(tmp_path / "bad.json")
    with pytest.raises(EvalInputError, match="cannot read"):
        read_result(tmp_path / "nope.json")


# ------------------------------------------------------------------ model side (tiny random model)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import clipzoo
    from clipzoo.testing.tiny import write_open_clip_safetensors

    path = write_open_clip_safetensors(tmp_path_factory.mktemp("eval") / "tiny.safetensors", 0,
                                       embed_config=True)
    return clipzoo.load(str(path))


CLASSES = ["cat", "dog", "car", "tree", "boat", "bird"]


def test_zeroshot_classify_matches_metrics_on_features(tiny):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(12, 3, 32, 32, generator=g)
    labels = torch.arange(6).repeat(2)
    templates = ["a photo of a {c}.", "a {}."]  # CLIP_benchmark's {c} and ours
    got = zeroshot_classify(tiny, pixels, labels, CLASSES, templates, batch_size=5)
    weights = tiny.classifier(CLASSES, ["a photo of a {}.", "a {}."])
    expected = zeroshot_metrics(tiny.similarity(tiny.encode_image(pixels), weights), labels)
    assert got == expected and set(got) == {"acc1", "acc5", "mean_per_class_recall"}
    # a loader of (images, targets) batches gives the same numbers
    loader = [(pixels[i:i + 4], labels[i:i + 4]) for i in range(0, 12, 4)]
    assert zeroshot_classify(tiny, loader, None, CLASSES, templates) == got
    # class-specific prompts (CuPL-style dict)
    logits, _ = zeroshot_predict(tiny, pixels, CLASSES, {c: [f"a photo of a {c}."] for c in CLASSES})
    assert torch.allclose(logits, tiny.similarity(tiny.encode_image(pixels), tiny.classifier(CLASSES)), atol=1e-5)
    with pytest.raises(ClipzooError, match="empty"):
        zeroshot_classify(tiny, [], [], CLASSES, templates)


def test_retrieval_evaluate_with_model(tiny):
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    captions = [["a cat", "a small cat"], "a dog", ["a car", "a red car", "an old car"], "a tree"]
    got = retrieval_evaluate(tiny, pixels, captions, recall_k=(1, 5))
    img = tiny.encode_image(pixels)
    txt = tiny.encode_text(["a cat", "a small cat", "a dog", "a car", "a red car", "an old car", "a tree"])
    assert got == retrieval_metrics(img, txt, [0, 0, 1, 2, 2, 2, 3], recall_k=(1, 5))
    assert got["image_retrieval_recall@5"] == 1.0
    with pytest.raises(ClipzooError, match="empty"):
        retrieval_evaluate(tiny, pixels, [])
