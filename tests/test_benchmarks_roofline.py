"""benchmarks/roofline.py counts the ops of ViT-B/32's image tower right (issue 22 §1: the ceiling rests on it),
and times the model on the crops as the loader stacks them."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_issue22_roofline_counts_the_image_towers_matmuls():
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from torch.utils.flop_counter import FlopCounterMode

    import roofline

    visual = open_clip.create_model("ViT-B-32").visual.train()  # train: the unfused attention path
    with FlopCounterMode(display=False) as counter:
        visual(torch.randn(1, 3, 224, 224))
    counted = counter.get_flop_counts()["Global"]
    assert set(map(str, counted)) == {"aten.convolution", "aten.addmm", "aten.mm"}
    # the counter sees the patch embedding, every Linear and the projection; not the attention products
    # (scores q·kᵀ and their values), 2 × tokens² × width multiply-adds per layer
    attention = 12 * 2 * roofline.TOKENS ** 2 * 768
    assert 2 * roofline.vit_macs() == counter.get_total_flops() + 2 * attention == 8_817_623_040


def test_crop_batches_stack_the_loaders_uint8_crops_in_order():
    torch = pytest.importorskip("torch")
    from decode_share import crop_batches

    data = [(f"{i}.jpg", torch.full((3, 2, 2), i, dtype=torch.uint8)) for i in range(5)]
    batches = crop_batches(data, 2)
    assert [tuple(b.shape) for b in batches] == [(2, 3, 2, 2), (2, 3, 2, 2), (1, 3, 2, 2)]
    assert torch.cat(batches)[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4] and batches[0].dtype == torch.uint8
