"""MindSpore towers' k×k convolutions run as im2col + matmul (``mindspore_layers.UnfoldConv2d``): the same outputs
and gradients as MindSpore's ``nn.Conv2d`` with the same weight, in PyNative and Graph mode, and the towers use it
(MindSpore's own CPU kernel for them ran RN50 at 0.16 images/s; benchmarks/mindspore_embed.py)."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindspore import nn  # noqa: E402

from clipzoo.models.mindspore_layers import UnfoldConv2d  # noqa: E402

CASES = [  # (c_in, c_out, kernel, stride, pad_mode, padding, side): a ResNet's 3x3, its stride-2 stem, a ViT's patches
    (8, 16, 3, 1, "pad", 1, 14), (3, 8, 3, 2, "pad", 1, 15), (3, 12, 8, 8, "valid", 0, 32)]


def pair(c_in, c_out, kernel, stride, pad_mode, padding):
    rng = np.random.default_rng(kernel * 10 + stride)
    weight = ms.Tensor(rng.standard_normal((c_out, c_in, kernel, kernel)).astype(np.float32) * 0.1)
    cells = [cls(c_in, c_out, kernel, stride=stride, pad_mode=pad_mode, padding=padding, has_bias=False)
             for cls in (nn.Conv2d, UnfoldConv2d)]
    for c in cells:
        c.weight.set_data(weight)
    return cells


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("case", CASES, ids=["3x3", "3x3-stride2", "patch8"])
def test_issue19_unfold_conv_equals_conv2d(case, mode):
    *spec, side = case
    conv, unfold = pair(*spec)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, spec[0], side, side)).astype(np.float32))
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        want, got = conv(x).asnumpy(), unfold(x).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("case", CASES, ids=["3x3", "3x3-stride2", "patch8"])
def test_issue19_unfold_conv_gradients_equal_conv2d(case):
    *spec, side = case
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, spec[0], side, side)).astype(np.float32))
    grads = []
    for cell in pair(*spec):
        fn = ms.value_and_grad(lambda x, cell=cell: (cell(x) ** 2).sum(), grad_position=0, weights=cell.weight)
        _, (dx, dw) = fn(x)
        grads.append((dx.asnumpy(), dw.asnumpy()))
    for want, got in zip(grads[0], grads[1]):
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_issue19_towers_use_unfold_conv_for_every_kxk_convolution():
    from clipzoo.models.mindspore_clip import VisionTransformer
    from clipzoo.models.mindspore_resnet import Bottleneck

    vit = VisionTransformer(32, 8, 64, 1, 2, 32)
    block = Bottleneck(64, 16, stride=2)
    assert isinstance(vit.conv1, UnfoldConv2d) and isinstance(block.conv2, UnfoldConv2d)
    assert type(block.conv1) is nn.Conv2d and type(block.conv3) is nn.Conv2d  # 1x1: MindSpore's kernel is fast
    assert "conv1.weight" in {n for n, _ in vit.parameters_and_names()}  # checkpoint names unchanged


def test_issue19_unfold_conv_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="^UnfoldConv2d takes pad_mode 'pad' or 'valid' without dilation or groups, "
                                         "got pad_mode='same', dilation=.*, group=1$"):
        UnfoldConv2d(3, 4, 3, pad_mode="same")
    with pytest.raises(ValueError, match="group=2$"):
        UnfoldConv2d(4, 4, 3, pad_mode="pad", padding=1, group=2)
