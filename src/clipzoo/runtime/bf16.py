"""``runtime="bf16"``: the PyTorch model in bfloat16 on a CPU that computes bf16 natively (oneDNN).

The weights are converted to ``torch.bfloat16`` (measured on a Sapphire-Rapids-class CPU with AMX, ViT-B/32,
batch 32: bf16 weights ran the image tower 3.8× fp32, ``torch.autocast`` 2.2×; both at cosine ≥ 0.9999
to fp32 — docs/benchmarks.md). On a CPU without ``avx512_bf16`` or AMX, bf16 is emulated and runs several
times slower than fp32, so asking for it there raises a one-line :class:`ClipzooError` instead.
On a GPU it is the model loaded with ``precision="bf16"``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cards import ModelCard
from ..errors import ClipzooError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (from /proc/cpuinfo; empty where it is not readable)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


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
    """The comparator of ``card`` with bfloat16 weights (CPU: only where bf16 is native)."""
    if str(device).startswith("cpu"):
        check_cpu()
    return build(precision="bf16")
