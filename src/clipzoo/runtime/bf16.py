"""``runtime="bf16"``: the PyTorch model in bfloat16 on a CPU that computes bf16 natively (oneDNN, AMX).

The model is built with ``precision="bf16"`` and then run in bf16 throughout (:func:`to_bf16`): open_clip's
bf16 build keeps its LayerNorms fp32 (``LayerNormFp32`` casts every activation to fp32 and back) and some
tensors fp32; on a CPU whose matmuls run several times faster in bf16 (oneDNN's AMX kernels) those casts and
``nn.MultiheadAttention``'s fast path (its bf16 ``bmm`` does not reach AMX) took much of the time.
:func:`sdpa_attention` routes self-attention through ``F.scaled_dot_product_attention`` (the fused CPU flash
kernel), with the same weights and state dict. Measured side by side in one run (benchmarks/bf16_speed.py →
benchmarks/results/bf16_speed.json; ViT-B/32 random weights, batch 32 images / 256 texts, 2 threads, the
cores shared at load average ~9.5): 1.94× fp32 eager on images, 2.02× on texts, min cosine 0.99995 / 0.99991
to fp32 (open_clip's bf16 build alone: 2.01× / 1.72×; ``torch.autocast``: 1.84× / 1.22×) —
docs/benchmarks.md "bf16 on this CPU".

On a CPU without ``avx512_bf16`` or AMX, bf16 is emulated and runs several times slower than fp32, so
asking for it there raises a one-line :class:`ClipzooError` instead. On a GPU it is the model loaded with
``precision="bf16"``.
"""
from __future__ import annotations

import functools
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cards import ModelCard
from ..errors import ClipzooError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
FP32_NORMS = ("LayerNormFp32",)
"""Norm classes whose forward casts its input to fp32 and back (open_clip's, in a bf16 build): :func:`to_bf16`
gives them the mixed forward instead — bf16 in and out, fp32 weights (CPU kernel: 2-4× the casting one)."""


def cpuinfo_field(*keys: str) -> str | None:
    """The value of the first of ``keys`` in /proc/cpuinfo (its first processor); None where it is absent or the
    file is not readable."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_cpuinfo(text, *keys)


def parse_cpuinfo(text: str, *keys: str) -> str | None:
    """The value of the first line of ``text`` (/proc/cpuinfo's format) whose key is one of ``keys``; None where
    none is."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (from /proc/cpuinfo; empty where it is not readable)."""
    return frozenset((cpuinfo_field("flags", "Features") or "").split())


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's ``model name``; "" where it has none). Two CPUs that both
    compute bf16 natively can rank the runtimes differently: on the 12-03 code an AMD EPYC with ``avx512_bf16``
    but no AMX ran int8 fastest, a Xeon with AMX bf16 (benchmarks/results/runtimes_epyc.json beside
    runtimes.json); on later code that Xeon ran static int8 fastest too (runtimes_xeon_amx.json)."""
    return cpuinfo_field("model name", "Model", "cpu model") or ""


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def check_cpu() -> None:
    """Raise :class:`ClipzooError` when this CPU has no native bf16."""
    if not native_bf16(cpu_flags()):
        raise ClipzooError("runtime='bf16' needs a CPU with native bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo); "
                           "this one emulates it several times slower than fp32 — use runtime='int8' or 'onnx'")


def apply(card: ModelCard, build: Callable[..., Any], *, device: str, precision: str, cache_dir,
          load_kwargs: dict) -> Any:
    """The comparator of ``card`` in bfloat16 (CPU: only where bf16 is native; all weights bf16 and
    self-attention through SDPA there)."""
    if not str(device).startswith("cpu"):
        return build(precision="bf16")
    check_cpu()
    comparator = build(precision="bf16")
    model = getattr(comparator, "model", None)
    if model is not None and str(getattr(comparator, "dtype", None)) == "torch.bfloat16":
        to_bf16(model)
        sdpa_attention(model)
    return comparator


def to_bf16(model) -> int:
    """Make a mixed-precision build run in bf16 throughout, in place: the fp32 parameters and buffers left
    outside the norms are cast to bf16; layer and batch norms keep their fp32 weights and statistics (the CPU
    kernels take bf16 input with them and answer bf16), and those of :data:`FP32_NORMS` stop casting their input
    to fp32; scalars (the logit scale and bias) stay fp32. Returns how many tensors it cast."""
    import torch

    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
    cast = 0
    for module in model.modules():
        if isinstance(module, norms):
            if type(module).__name__ in FP32_NORMS and isinstance(module, torch.nn.LayerNorm):
                module.forward = types.MethodType(mixed_layer_norm, module)
            continue
        for tensors in (module._parameters, module._buffers):
            for tensor in tensors.values():
                if tensor is not None and tensor.dtype == torch.float32 and tensor.numel() > 1:  # logit scale: fp32
                    tensor.data = tensor.data.to(torch.bfloat16)
                    cast += 1
    return cast


def mixed_layer_norm(self, x):
    """``nn.LayerNorm.forward`` on bf16 input with fp32 weights: bf16 out, the statistics in fp32 inside."""
    import torch.nn.functional as F

    return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def sdpa_attention(model) -> int:
    """Route the self-attention of every ``nn.MultiheadAttention`` in ``model`` through
    ``F.scaled_dot_product_attention`` (same weights, same module and state dict: only the instance's
    ``forward`` changes); a call it does not cover falls back to the module's own. Returns how many."""
    import torch

    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention) and module._qkv_same_embed_dim \
                and module.bias_k is None and not module.add_zero_attn:
            module.forward = types.MethodType(sdpa_forward, module)
            count += 1
    return count


def sdpa_forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                 average_attn_weights: bool = True, is_causal: bool = False):
    """``nn.MultiheadAttention.forward`` for self-attention without weights, through SDPA."""
    import torch
    import torch.nn.functional as F

    if (need_weights or key_padding_mask is not None or not (query is key is value) or self.training
            or (is_causal and attn_mask is None) or query.dim() != 3):
        return type(self).forward(self, query, key, value, key_padding_mask=key_padding_mask,
                                  need_weights=need_weights, attn_mask=attn_mask,
                                  average_attn_weights=average_attn_weights, is_causal=is_causal)
    x = query if self.batch_first else query.transpose(0, 1)
    n, length, width = x.shape
    heads = self.num_heads
    q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(n, length, 3, heads, width // heads) \
        .permute(2, 0, 3, 1, 4)
    mask = attn_mask
    if mask is not None:
        mask = ~mask if mask.dtype == torch.bool else mask.to(q.dtype)  # MHA: True = masked; SDPA: True = kept
        if mask.dim() == 3:
            mask = mask.view(n, heads, length, length)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = F.linear(out.transpose(1, 2).reshape(n, length, width), self.out_proj.weight, self.out_proj.bias)
    return (out if self.batch_first else out.transpose(0, 1)), None
