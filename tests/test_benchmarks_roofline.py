"""benchmarks/roofline.py counts the ops of ViT-B/32's image tower right (issue 22 §1: the ceiling rests on it)."""
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
