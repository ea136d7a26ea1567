"""Same numbers as CLIP_benchmark (the ``clip-benchmark`` package) on the same model, data and logits.

clip-benchmark 1.6.2's ``accuracy`` helper calls ``float()`` on a one-element array, which NumPy ≥ 2.4
refuses; the test swaps in the same formula with ``.item()``. Our implementation has no such call.
"""
from __future__ import annotations

import pytest
import torch

zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zsr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
open_clip = pytest.importorskip("open_clip")

from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from clipzoo.eval import (  # noqa: E402
    accuracy,
    mean_per_class_recall,
    retrieval_metrics,
    retrieval_metrics_from_scores,
    zeroshot_classify,
    zeroshot_metrics,
)
from clipzoo.eval.metrics import positives_from_index  # noqa: E402
from clipzoo.eval.retrieval import flatten_captions, retrieval_evaluate  # noqa: E402

CLASSES = ["cat", "dog", "car", "tree", "boat", "bird", "fish"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}.", "{c}"]


def _cb_accuracy(output, target, topk=(1,)):
    """clip_benchmark's accuracy with ``.item()`` instead of ``float(array)`` (NumPy ≥ 2.4)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [correct[:k].reshape(-1).float().sum().item() / n for k in topk]


@pytest.fixture(autouse=True)
def _patched_accuracy(monkeypatch):
    monkeypatch.setattr(zsc, "accuracy", _cb_accuracy)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import clipzoo
    from clipzoo.testing.tiny import tiny_model, write_open_clip_safetensors

    path = write_open_clip_safetensors(tmp_path_factory.mktemp("parity") / "tiny.safetensors", 0,
                                       embed_config=True)
    return tiny_model(0), clipzoo.load(str(path))


class _Data(torch.utils.data.Dataset):
    def __init__(self, pixels, targets, classes=None):
        self.pixels, self.targets, self.classes = pixels, targets, classes

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        return self.pixels[i], self.targets[i]


@pytest.mark.parametrize("n_classes", [7, 3])
def test_zeroshot_same_as_clip_benchmark(models, n_classes):
    ref, ours = models
    classes = CLASSES[:n_classes]
    g = torch.Generator().manual_seed(n_classes)
    pixels = torch.randn(40, 3, 32, 32, generator=g)
    targets = torch.randint(0, n_classes, (40,), generator=g)
    loader = torch.utils.data.DataLoader(_Data(pixels, targets, classes), batch_size=16)
    expected = zsc.evaluate(ref, loader, open_clip.tokenize, classes, TEMPLATES, device="cpu", amp=False)
    got = zeroshot_classify(ours, loader, None, classes, TEMPLATES, batch_size=16)
    assert got["acc1"] == pytest.approx(expected["acc1"], abs=1e-12)
    assert got["mean_per_class_recall"] == pytest.approx(expected["mean_per_class_recall"], abs=1e-12)
    if n_classes >= 5:
        assert got["acc5"] == pytest.approx(expected["acc5"], abs=1e-12)
    else:  # CLIP_benchmark writes NaN; we leave the key out
        assert expected["acc5"] != expected["acc5"] and "acc5" not in got
    # the class weights are the same vectors (CLIP_benchmark stores them as (D, C))
    cb_w = zsc.zero_shot_classifier(ref, open_clip.tokenize, classes, TEMPLATES, "cpu", amp=False)
    assert torch.allclose(ours.classifier(classes, [t.replace("{c}", "{}") for t in TEMPLATES]), cb_w.T, atol=1e-5)


def test_metric_functions_same_on_same_logits():
    g = torch.Generator().manual_seed(0)
    for n, c in [(50, 10), (33, 5), (20, 3)]:
        logits = torch.randn(n, c, generator=g)
        targets = torch.randint(0, c, (n,), generator=g)
        ks = (1, 5) if c >= 5 else (1,)
        assert accuracy(logits, targets, ks) == _cb_accuracy(logits, targets, ks)
        pred = logits.argmax(1)
        assert mean_per_class_recall(targets, pred) == pytest.approx(balanced_accuracy_score(targets, pred), abs=1e-12)
        m = zeroshot_metrics(logits, targets)
        assert m["acc1"] == _cb_accuracy(logits, targets)[0]


def test_retrieval_recall_same_on_same_scores():
    g = torch.Generator().manual_seed(0)
    n_images = 30
    index = torch.cat([torch.arange(n_images), torch.randint(0, n_images, (50,), generator=g)])  # 1–several captions
    scores = torch.randn(len(index), n_images, generator=g)
    positives = positives_from_index(index, n_images)
    got = retrieval_metrics_from_scores(scores, positives, (1, 5, 10))
    for k in (1, 5, 10):
        img = (zsr.batchify(zsr.recall_at_k, scores, positives, 7, "cpu", k=k) > 0).float().mean().item()
        txt = (zsr.batchify(zsr.recall_at_k, scores.T, positives.T, 7, "cpu", k=k) > 0).float().mean().item()
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(img, abs=1e-12)
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(txt, abs=1e-12)


def test_retrieval_same_as_clip_benchmark_with_model(models):
    ref, ours = models
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(12, 3, 32, 32, generator=g)
    words = ["cat", "dog", "car", "tree", "boat", "bird", "fish", "house", "cup", "hat", "shoe", "lamp"]
    captions = [[f"a photo of a {w}", f"a {w}"] if i % 3 else [f"a {w}"] for i, w in enumerate(words)]

    def collate(batch):
        return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

    loader = torch.utils.data.DataLoader(_Data(pixels, captions), batch_size=5, collate_fn=collate)
    expected = zsr.evaluate(ref, loader, open_clip.tokenize, "cpu", amp=False, recall_k_list=[1, 5, 10])
    got = retrieval_evaluate(ours, pixels, captions, recall_k=(1, 5, 10))
    assert got == pytest.approx(expected, abs=1e-12)
    texts, index = flatten_captions(captions)
    assert retrieval_metrics(ours.encode_image(pixels), ours.encode_text(texts), index) == got
