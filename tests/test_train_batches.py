"""In-memory training batches: class-spread order, tokenising each distinct caption once, eval lines in
the metrics log."""
from __future__ import annotations

import json

import pytest
import torch

from clipzoo.train.config import TrainConfig
from clipzoo.train.data import MemoryData, _tokenize_unique, shapes_data, spread_groups
from clipzoo.train.engine import train
from clipzoo.train.model import build_model

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}


def _counts_per_batch(order, groups, batch):
    return [torch.bincount(groups[order[b:b + batch]], minlength=int(groups.max()) + 1)
            for b in range(0, len(order) - batch + 1, batch)]


def test_spread_order_is_a_permutation_holding_each_group_once_per_round():
    groups = torch.arange(10).repeat_interleave(30)[torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    order = spread_groups(groups, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(300))
    # a batch the size of a round holds every group exactly once
    assert all(c.tolist() == [1] * 10 for c in _counts_per_batch(order, groups, 10))
    # a batch spanning parts of three rounds holds a group at most three times
    assert max(int(c.max()) for c in _counts_per_batch(order, groups, 16)) <= 3
    # the order is random: two seeds differ, one seed repeats
    again = spread_groups(groups, torch.Generator().manual_seed(0))
    other = spread_groups(groups, torch.Generator().manual_seed(1))
    assert torch.equal(order, again) and not torch.equal(order, other)


def test_spread_order_with_unequal_groups_gives_fewer_same_group_pairs_than_a_shuffle():
    g = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 77, (20000,), generator=g)

    def same_group_partners(order, batch=128):
        return sum(float((c * (c - 1)).sum()) for c in _counts_per_batch(order, groups, batch)) / len(order)

    spread = same_group_partners(spread_groups(groups, g))
    uniform = same_group_partners(torch.randperm(20000, generator=g))
    assert uniform == pytest.approx(1.65, abs=0.05)  # 127 others / 77 classes
    assert spread < 0.65 * uniform


def test_distinct_captions_are_tokenised_once_with_the_same_result():
    calls = []

    def tokenizer(texts):
        calls.append(list(texts))
        return torch.tensor([[len(t), ord(t[0])] for t in texts])

    texts = ["a red star", "a star", "a red star", "blue", "a star", "a red star"]
    out = _tokenize_unique(tokenizer, texts)
    assert torch.equal(out, tokenizer(texts)) and calls[0] == ["a red star", "a star", "blue"]


def test_shapes_classes_batches_are_spread_over_the_classes_and_resume_exactly():
    model = build_model(TrainConfig(model_config=TINY))
    data = shapes_data("shapes-classes:400", model, seed=3, workers=1)
    assert data.groups is not None and len(data.groups) == 400
    assert data.tokens.shape[:2] == (400, 5)
    from clipzoo.train.data import render_shapes

    _, _, labels = render_shapes(400, seed=0, image_size=32, workers=1, two_object_prob=0.0)
    names = sorted({lab["shape_color"] for lab in labels})
    assert [names[int(i)] for i in data.groups] == [lab["shape_color"] for lab in labels]
    full = list(data.batches(epoch=1, start=0, batch_size=40))
    tail = list(data.batches(epoch=1, start=4, batch_size=40))
    assert len(tail) == len(full) - 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                              for a, b in zip(full[4:], tail))
    halves = [list(data.batches(epoch=1, start=0, batch_size=40, rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(torch.cat([halves[0][2][0], halves[1][2][0]]), full[2][0])
    with pytest.raises(Exception, match="3 groups for 2 samples"):
        MemoryData(data.images[:2].numpy(), [["a"], ["b"]], model.tokenizer, [0, 0, 0], [1, 1, 1], groups=[0, 1, 2])


def test_evaluations_are_written_to_the_metrics_log_with_elapsed_time(tmp_path):
    cfg = TrainConfig(model_config=TINY, data=["shapes-classes:64"], batch_size=16, lr=1e-3, warmup=1, steps=5,
                      eval_every=2, eval_data="shapes-heldout:14", output=str(tmp_path / "run"), progress=False,
                      tensorboard=False, log_every=2, workers=1)
    result = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if "eval/acc1" in x]
    assert [x["step"] for x in evals] == [2, 4, 5]  # every 2 steps, and at the end
    assert [x["eval/acc1"] for x in evals] == [e["acc1"] for e in result.evals]
    steps = [x for x in lines if "loss" in x]
    assert [x["step"] for x in steps] == [2, 4, 5]
    elapsed = [x["elapsed_s"] for x in lines]
    assert all(b >= a > 0 for a, b in zip(elapsed, elapsed[1:]))

    # the run's picture: loss and acc1 curves from that log
    from PIL import Image

    from clipzoo.errors import ClipzooError
    from clipzoo.train.curves import plot_run, read_metrics

    assert [r["step"] for r in read_metrics(tmp_path / "run")[1]] == [2, 4, 5]
    png = plot_run(tmp_path / "run", tmp_path / "pics" / "curves.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (770, 396)
    (tmp_path / "empty.jsonl").write_text(json.dumps({"step": 2, "eval/acc1": 0.5}) + "\n")
    with pytest.raises(ClipzooError, match="empty.jsonl holds no logged training steps"):
        plot_run(tmp_path / "empty.jsonl", tmp_path / "x.png")
    with pytest.raises(ClipzooError, match=r"nowhere does not exist; pass a run folder"):
        read_metrics(tmp_path / "nowhere")
