"""The ONNX runtimes' ViT image tower with its attention fused (issue 22 §1: static int8 images ≥ 4×).

``torch.onnx`` writes open_clip's ``nn.MultiheadAttention`` as a chain of Reshape / Transpose / MatMul /
Softmax that no ONNX Runtime fusion recognises; on ViT-B/32 under static int8 those Transposes, the bias
Adds and the erf-GELU took more time than the integer matmuls. The runtimes' export
(``export_onnx(..., vit="contrib")``, :mod:`clipzoo.runtime.onnx`) therefore writes each block of an open_clip
``VisionTransformer`` out as: the patch embedding as a ``MatMul`` over the flattened patches
(:func:`patch_embedding`; a quantisable op, where ONNX Runtime runs a quantised Conv with a float output as a
float Conv), each block as one QKV ``MatMul`` (no bias) → ``Split`` → ONNX Runtime's
``com.microsoft.MultiHeadAttention`` (the QKV bias added inside it, heads split without Transposes), the
output projection and the MLP as they are; then ONNX Runtime's transformer optimiser
(``optimize_model``, model type ``bert``, :func:`fusion_options`) folds the GELU with its bias into
``BiasGelu`` — not the residual Adds and LayerNorms into ``SkipLayerNormalization``, whose CPU kernel is slower
than ``Add`` + ``LayerNormalization`` — and its symbolic shape inference annotates every tensor (the quantisers
skip tensors of unknown type — the contrib ops' outputs without it). Static int8 then quantises the MatMuls
between those fused float ops, and :func:`quantized_attention` turns each block's quantised QKV MatMul →
Split → MultiHeadAttention into one ``QAttention`` (the integer QKV projection written straight into the
heads' layout). Each of these choices was kept because it made the static graph faster by measurement
(end to end: ``benchmarks/runtimes.py``, docs/benchmarks.md).

The fused graph is used only when it reproduces ``encode_pixels`` (≤ :data:`FUSED_TOLERANCE`, in torch
before the export and in ONNX Runtime after it); any other image tower, a failed check or the dynamo exporter
exports the plain graph. ``clipzoo convert --to onnx`` keeps the plain, portable graph (no contrib ops).

The *standard* layout (``vit="standard"``: the portable export that ``openvino-int8`` quantises) writes the same
blocks in standard ONNX ops only (:func:`standard_block`): the patch embedding as a MatMul, each block's QKV
projection with its bias as one MatMul, the heads split by one Reshape + Transpose of the packed QKV,
``Softmax(q kᵀ) v`` as two batched MatMuls, the heads merged by one Transpose — where ``nn.MultiheadAttention``
as torch writes it works sequence-first and splits q, k and v apart (ViT-B/32: 97 Transposes against 37, and
a Conv that OpenVINO ran in bf16). In OpenVINO the static int8 ViT-B/32 image tower ran 1.17× faster in this
layout (median of nine interleaved rounds, at the same min cosine to fp32; benchmarks/vit_layout.py).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import io
import logging
import warnings
from pathlib import Path
from typing import Any

from ..backends.onnx_format import CONTRIB_DOMAIN

FUSED_TOLERANCE = 1e-4
ATTENTION_OP = f"{CONTRIB_DOMAIN}::MultiHeadAttention"
FUSED_OPS = ("MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "QuickGelu")
BLOCK_PARTS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
LAYOUTS = ("plain", "contrib", "standard")  # a ViT image graph: as torch writes it, in ONNX Runtime's contrib ops,
# or written block by block in standard ops (export_onnx(vit=...))


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


def standard_block(block, x):
    """One pre-norm residual block on ``x`` [N, S, D] in standard ONNX ops: the QKV projection with its bias,
    the heads split by one reshape and permutation of the packed QKV, ``softmax(q kᵀ / √d) v``, the heads merged,
    the output projection and the MLP."""
    import torch

    attn = block.attn
    n, s, width = x.shape
    heads = attn.num_heads
    qkv = torch.nn.functional.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.reshape(n, s, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    scores = torch.matmul(q * (width // heads) ** -0.5, k.transpose(-2, -1))
    y = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(n, s, width)
    x = x + block.ls_1(attn.out_proj(y))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


BLOCKS = {"contrib": fused_block, "standard": standard_block}


def patch_embedding(conv, pixels):
    """The patch embedding ``conv(pixels).flatten(2).transpose(1, 2)`` [N, L, D]; a convolution whose kernel is its
    stride (a ViT's: no padding, bias, dilation or groups) as a ``MatMul`` over the flattened patches — the same
    numbers, and an op that static int8 runs on its integer kernels (ONNX Runtime runs a quantised Conv with a
    float output as a float Conv)."""
    import torch

    k = tuple(conv.kernel_size)
    n, c, h, w = pixels.shape
    if (k != tuple(conv.stride) or conv.bias is not None or conv.groups != 1 or tuple(conv.dilation) != (1, 1)
            or conv.padding not in ((0, 0), "valid") or h % k[0] or w % k[1]):
        return conv(pixels).flatten(2).transpose(1, 2)
    patches = pixels.reshape(n, c, h // k[0], k[0], w // k[1], k[1]).permute(0, 2, 4, 1, 3, 5)
    return torch.matmul(patches.reshape(n, (h // k[0]) * (w // k[1]), c * k[0] * k[1]),
                        conv.weight.reshape(conv.out_channels, -1).t())


def encode_fused(visual, pixels, layout: str = "contrib"):
    """Raw image features of :func:`vit_visual` ``visual`` with every block written out in ``layout``
    (``"contrib"``: attention fused into ONNX Runtime's op; ``"standard"``: standard ops)."""
    import torch

    x = patch_embedding(visual.conv1, pixels)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
    for block in visual.transformer.resblocks:
        x = BLOCKS[layout](block, x)
    x = visual.ln_post(x[:, 0])
    return x @ visual.proj if visual.proj is not None else x


@functools.lru_cache(maxsize=1)
def fused_tower_class() -> type:
    import torch

    class FusedImageTower(torch.nn.Module):
        def __init__(self, visual, layout: str):
            super().__init__()
            self.visual = visual
            self.layout = layout
            self.eval()

        def forward(self, pixels):
            return encode_fused(self.visual, pixels, self.layout).float()

    return FusedImageTower


def fused_image_tower(comparator, pixels, layout: str = "contrib"):
    """The image tower of ``comparator`` written out in ``layout`` when it has one and it reproduces
    ``encode_pixels`` on ``pixels`` within :data:`FUSED_TOLERANCE` (in torch), else None."""
    import torch

    visual = vit_visual(comparator)
    if visual is None:
        return None
    tower = fused_tower_class()(visual, layout)
    try:
        with torch.no_grad():
            ref = comparator.encode_pixels(pixels).float()
            got = tower(pixels)
    except Exception:  # noqa: BLE001 - not the layout we know: the plain export
        return None
    same = bool(torch.isfinite(ref).all()) and float((got - ref).abs().max()) <= FUSED_TOLERANCE
    return tower if same else None


def export_fused(tower, pixels, path: Path, input_name: str, output_name: str, opset, batch_dynamic: bool) -> bool:
    """Export ``tower`` (:func:`fused_image_tower`) to ``path`` with TorchScript, fuse its GELUs with their bias
    (:func:`fuse_graph`; the contrib layout) and check it in ONNX Runtime against the tower; returns False
    (``path`` removed) when it does not reproduce it within :data:`FUSED_TOLERANCE`."""
    import numpy as np
    import onnxruntime as ort
    import torch

    axes = {input_name: {0: "N"}, output_name: {0: "N"}} if batch_dynamic else None
    contrib = tower.layout == "contrib"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings
            torch.onnx.export(tower, (pixels,), str(path), dynamo=False, input_names=[input_name],
                              output_names=[output_name], opset_version=opset or 17, dynamic_axes=axes,
                              do_constant_folding=True, custom_opsets={CONTRIB_DOMAIN: 1} if contrib else None)
            if contrib:
                fuse_graph(path)
            ref = tower(pixels).numpy()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        diff = float(np.abs(session.run([output_name], {input_name: pixels.numpy()})[0] - ref).max())
    except OSError:  # the file system refused the write (a full disk, ulimit -f): the plain export would too
        raise
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
            optimised = optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                       optimization_options=fusion_options())
        model = SymbolicShapeInference.infer_shapes(optimised.model, auto_merge=True)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    onnx.save(model, str(path))


def fusion_options():
    """The transformer optimiser's fusions the graph keeps: BiasGelu, not SkipLayerNormalization — its CPU
    kernel (a scalar loop with a division per element) took twice the time of ``Add`` + ``LayerNormalization``
    on ViT-B/32 (issue 22), which ONNX Runtime leaves unfused here (the residual sum has two consumers)."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = options.enable_attention = False
    return options


def graph_ops(path: Path) -> set[str]:
    """The op types of the ONNX graph at ``path``."""
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def quantized_attention(path: Path) -> int:
    """Rewrite each block's ``QuantizeLinear → DequantizeLinear → MatMul(DequantizeLinear(W)) → Split →
    MultiHeadAttention(q, k, v, bias)`` in the static-int8 graph at ``path`` as one ONNX Runtime ``QAttention``:
    the same uint8 input with its calibrated (fixed) scale, the same int8 per-column weights and the QKV bias —
    the QKV projection on the integer kernels written straight into the heads' layout, with no float QKV
    tensor, Split or per-head transposes in between. Returns how many blocks were rewritten."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    uses = collections.Counter(i for n in graph.node for i in n.input)
    weights = {i.name for i in graph.initializer}
    drop: set[int] = set()
    replace: dict[int, Any] = {}
    for node in graph.node:
        parts = attention_parts(node, producer, uses, weights)
        if parts is not None:
            replace[id(node)] = qattention_node(node, *parts[:2])
            drop |= {id(p) for p in parts[2]}
    if replace:
        nodes = [replace.get(id(n), n) for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for n in graph.node for i in n.input}
        kept = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        onnx.save(model, str(path))
    return len(replace)


def attention_parts(mha, producer: dict, uses: collections.Counter, weights: set):
    """(the activation's DequantizeLinear, the weight's, [the nodes QAttention replaces]) when ``mha`` is a
    MultiHeadAttention fed by a quantised QKV MatMul through a Split, else None."""
    if mha.op_type != "MultiHeadAttention" or mha.domain != CONTRIB_DOMAIN or len(mha.input) != 4:
        return None
    split = producer.get(mha.input[0])
    if split is None or split.op_type != "Split" or list(split.output) != list(mha.input[:3]):
        return None
    matmul = producer.get(split.input[0])
    if matmul is None or matmul.op_type != "MatMul" or uses[matmul.output[0]] != 1:
        return None
    dq_a, dq_w = (producer.get(i) for i in matmul.input)
    if dq_a is None or dq_w is None or {dq_a.op_type, dq_w.op_type} != {"DequantizeLinear"}:
        return None
    quantize = producer.get(dq_a.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear" or dq_w.input[0] not in weights or min(
            len(dq_a.input), len(dq_w.input)) < 3:
        return None
    return dq_a, dq_w, [split, matmul, dq_w] + ([dq_a] if uses[dq_a.output[0]] == 1 else [])


def qattention_node(mha, dq_a, dq_w):
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
    kept = {k: v for k, v in attrs.items() if k in ("num_heads", "scale", "mask_filter_value")}
    inputs = [dq_a.input[0], dq_w.input[0], mha.input[3], dq_a.input[1], dq_w.input[1], "", dq_a.input[2],
              dq_w.input[2]]  # input, weight, bias, input scale, weight scale, mask, input / weight zero points
    return helper.make_node("QAttention", inputs, list(mha.output), name=f"{mha.name}_quant", domain=CONTRIB_DOMAIN,
                            **kept)
