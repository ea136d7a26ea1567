"""The ONNX runtimes' ViT image tower with its attention fused (issue 22 §1: static int8 images ≥ 4×).

``torch.onnx`` writes open_clip's ``nn.MultiheadAttention`` as a chain of Reshape / Transpose / MatMul /
Softmax that no ONNX Runtime fusion recognises; on ViT-B/32 under static int8 those Transposes, the bias
Adds and the erf-GELU took more time than the integer matmuls. The runtimes' export
(``export_onnx(..., fused=True)``, :mod:`clipzoo.runtime.onnx`) therefore writes each block of an open_clip
``VisionTransformer`` out as: one QKV ``MatMul`` (no bias) → ``Split`` → ONNX Runtime's
``com.microsoft.MultiHeadAttention`` (the QKV bias added inside it, heads split without Transposes), the
output projection and the MLP as they are; then ONNX Runtime's transformer optimiser
(``optimize_model``, model type ``bert``, no attention fusion of its own) folds the residual Adds, biases and
LayerNorms into ``SkipLayerNormalization`` and the GELU with its bias into ``BiasGelu``, and its symbolic
shape inference annotates every tensor (the quantisers skip tensors of unknown type — the contrib ops' outputs
without it). Static int8 then quantises the MatMuls between those fused float ops.

The fused graph is used only when it reproduces ``encode_pixels`` (≤ :data:`FUSED_TOLERANCE`, in torch
before the export and in ONNX Runtime after it); any other image tower, a failed check or the dynamo exporter
exports the plain graph. ``clipzoo convert --to onnx`` keeps the plain, portable graph (no contrib ops).
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from pathlib import Path

FUSED_TOLERANCE = 1e-4
ATTENTION_OP = "com.microsoft::MultiHeadAttention"
FUSED_OPS = ("MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "QuickGelu")
BLOCK_PARTS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")


def vit_visual(comparator):
    """The open_clip ``VisionTransformer`` behind ``comparator.encode_pixels`` when its layout is the one
    :func:`encode_fused` writes out (class-token pooling, no attentional pooler, pre-norm blocks with a packed
    QKV projection), else None."""
    visual = getattr(getattr(comparator, "model", None), "visual", None)
    needs = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    if visual is None or not all(hasattr(visual, n) for n in needs):
        return None
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", None) != "tok" or getattr(
            visual, "final_ln_after_pool", True) or getattr(visual, "output_tokens", True):
        return None
    blocks = getattr(visual.transformer, "resblocks", None) or []
    if not blocks or not getattr(visual.transformer, "batch_first", False) or any(
            not all(hasattr(b, n) for n in BLOCK_PARTS) or hasattr(b, "ln_1_kv")
            or not getattr(b.attn, "batch_first", 0) or getattr(b.attn, "in_proj_weight", None) is None
            for b in blocks):
        return None
    return visual


@functools.lru_cache(maxsize=1)
def attention_function():
    """A ``torch.autograd.Function``: multi-head attention of q, k, v [N, S, D] plus a packed QKV bias, computed
    by torch and exported as one ``com.microsoft.MultiHeadAttention`` node (defined on first use: no torch at
    import)."""
    import torch

    class FusedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, bias, heads: int):
            width = q.shape[-1]
            q, k, v = (t + b for t, b in zip((q, k, v), bias.split(width)))

            def split(t):
                return t.unflatten(-1, (heads, width // heads)).transpose(1, 2)

            y = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
            return y.transpose(1, 2).flatten(2)

        @staticmethod
        def symbolic(g, q, k, v, bias, heads: int):
            out = g.op(ATTENTION_OP, q, k, v, bias, num_heads_i=heads)
            out.setType(q.type())  # [N, S, D] as q: the exporter's shape inference knows no contrib op
            return out

    return FusedAttention


def fused_block(block, x):
    """One pre-norm residual block on ``x`` [N, S, D]: the QKV projection without its bias (the bias is added
    inside the attention node), the fused attention, the output projection and the MLP."""
    import torch

    attn = block.attn
    bias = attn.in_proj_bias if attn.in_proj_bias is not None else x.new_zeros(3 * attn.embed_dim)
    q, k, v = torch.nn.functional.linear(block.ln_1(x), attn.in_proj_weight).split(attn.embed_dim, dim=-1)
    y = attention_function().apply(q, k, v, bias, attn.num_heads)
    x = x + block.ls_1(attn.out_proj(y))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def encode_fused(visual, pixels):
    """Raw image features of :func:`vit_visual` ``visual`` with every block's attention fused."""
    import torch

    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
    for block in visual.transformer.resblocks:
        x = fused_block(block, x)
    x = visual.ln_post(x[:, 0])
    return x @ visual.proj if visual.proj is not None else x


@functools.lru_cache(maxsize=1)
def fused_tower_class() -> type:
    import torch

    class FusedImageTower(torch.nn.Module):
        def __init__(self, visual):
            super().__init__()
            self.visual = visual
            self.eval()

        def forward(self, pixels):
            return encode_fused(self.visual, pixels).float()

    return FusedImageTower


def fused_image_tower(comparator, pixels):
    """The fused image tower of ``comparator`` when it has one and it reproduces ``encode_pixels`` on ``pixels``
    within :data:`FUSED_TOLERANCE` (in torch), else None."""
    import torch

    visual = vit_visual(comparator)
    if visual is None:
        return None
    tower = fused_tower_class()(visual)
    try:
        with torch.no_grad():
            ref = comparator.encode_pixels(pixels).float()
            got = tower(pixels)
    except Exception:  # noqa: BLE001 - not the layout we know: the plain export
        return None
    same = bool(torch.isfinite(ref).all()) and float((got - ref).abs().max()) <= FUSED_TOLERANCE
    return tower if same else None


def export_fused(tower, pixels, path: Path, input_name: str, output_name: str, opset, batch_dynamic: bool) -> bool:
    """Export ``tower`` (:func:`fused_image_tower`) to ``path`` with TorchScript, fuse its LayerNorms and GELUs
    (:func:`fuse_graph`) and check it in ONNX Runtime against the tower; returns False (``path`` removed) when
    it does not reproduce it within :data:`FUSED_TOLERANCE`."""
    import numpy as np
    import onnxruntime as ort
    import torch

    axes = {input_name: {0: "N"}, output_name: {0: "N"}} if batch_dynamic else None
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings
            torch.onnx.export(tower, (pixels,), str(path), dynamo=False, input_names=[input_name],
                              output_names=[output_name], opset_version=opset or 17, dynamic_axes=axes,
                              do_constant_folding=True, custom_opsets={"com.microsoft": 1})
            fuse_graph(path)
            ref = tower(pixels).numpy()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        diff = float(np.abs(session.run([output_name], {input_name: pixels.numpy()})[0] - ref).max())
    except Exception:  # noqa: BLE001 - an ONNX Runtime without these contrib ops: the plain export
        diff = float("inf")
    if diff <= FUSED_TOLERANCE:
        return True
    path.unlink(missing_ok=True)
    return False


def fuse_graph(path: Path) -> None:
    """ONNX Runtime's transformer optimiser on the graph at ``path`` (``SkipLayerNormalization``, ``BiasGelu``;
    model type ``bert`` at its own fusions only, ``opt_level=0``), then its symbolic shape inference, so that
    every tensor — the contrib ops' outputs too — has a known type and shape for the quantisers."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    from onnxruntime.transformers.optimizer import optimize_model

    quiet = [logging.getLogger(n) for n in ("", "onnxruntime.transformers", "fusion_skiplayernorm", "onnx_model",
                                            "fusion_base", "fusion_utils", "onnx_model_bert", "optimizer")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):
            optimised = optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
        model = SymbolicShapeInference.infer_shapes(optimised.model, auto_merge=True)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    onnx.save(model, str(path))


def graph_ops(path: Path) -> set[str]:
    """The op types of the ONNX graph at ``path``."""
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
