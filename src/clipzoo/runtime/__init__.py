"""Runtimes: how a loaded Comparator executes (``clipzoo.load(spec, runtime=…)``, CLI ``--runtime``).

=============  ==================================================================================
``eager``      PyTorch as loaded (the default; ``"torch"`` is the same). fp16 / bf16 through
               ``precision=`` — on a GPU these run PyTorch's fused (SDPA) attention kernels.
``compile``    ``torch.compile`` of the image and text encoders (inductor; needs a C++ compiler
               on CPU). The first batch of each new shape compiles, later ones are fast.
``onnx``       exported once to ONNX (cached) and run in ONNX Runtime.
``int8``       dynamic int8 quantisation of the linear layers (matmuls): through ONNX Runtime
               (``onnx-int8``) when it is installed — the faster here, see docs/benchmarks.md —
               else through PyTorch (``torch-int8``). Both can be named explicitly. (ViT-B/32 on 2
               cores: the dynamic and the static one measured as fast — benchmarks/results/runtimes.json.)
``onnx-int8-   static int8 (QDQ) in ONNX Runtime: activation scales calibrated once (cached), so a
static``       row does not depend on its batch; weights int8 per channel; integer (VNNI / AMX) kernels.
               (Both ONNX int8 runtimes: 7-bit weights on an x86 CPU without VNNI / AMX int8.)
``openvino-   the same static int8 graphs (its own portable export, the same calibration) run in OpenVINO,
int8``         whose CPU kernels fuse the element-wise ops into the integer matmuls; needs
               ``clipzoo[openvino]``; CPU only.
``bf16``       bfloat16 weights on a CPU with native bf16 (AVX512-BF16 / AMX), else refused.
``auto``       the fastest of the above available here, measured on a few batches under a cosine
               guard to fp32 (≥ 0.995: ``min_cosine=``, or spelled ``"auto:0.999"``); the choice is cached
               per machine and model; a model under 25 M parameters runs eager without measuring.
               The default of ``clipzoo embed``, ``clipzoo index build`` and ``clipzoo serve``.
=============  ==================================================================================

Each runtime keeps the Comparator API; its fidelity to eager fp32 is tested on tiny models: cosine ≥ 0.999 for
the float runtimes and ≥ 0.99 for the dynamic int8 ones (tests/test_runtime.py), min cosine ≥ 0.995 for static int8
on generated shapes (tests/test_runtime_static_int8.py). No bound on every input: an image far from the calibration
sample is clipped by the static ranges (a plain red image: cosine 0.9745 under ``onnx-int8-static`` on tiny-shapes;
docs/embedding.md).

One module per runtime (:data:`RUNTIME_MODULES`), each with ``apply(card, build, *, device, precision,
cache_dir, load_kwargs)``; :func:`apply_runtime` is what :func:`clipzoo.api.load` calls for a runtime other
than eager. The modules import torch and onnxruntime only when they run, so this package stays cheap.
"""
from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..cards import ModelCard
from ..errors import ClipzooError
from . import auto
from .table import MODULES, has_onnxruntime, run_runtime

RUNTIMES = ("eager", "compile", "onnx", "int8", "onnx-int8", "torch-int8", "onnx-int8-static", "openvino-int8", "bf16",
            "auto")
ALIASES = {"torch": "eager", "default": "eager", "ort": "onnx", "onnxruntime": "onnx"}
EAGER_NAMES = ("eager", "torch", "default")
"""Names :func:`clipzoo.api.load` runs as loaded, without :func:`apply_runtime`."""

# runtime name (after normalize_runtime) -> its module
RUNTIME_MODULES: dict[str, ModuleType] = {**MODULES, "auto": auto}


def split_guard(runtime: str | None) -> tuple[str, float | None]:
    """``"auto:0.999"`` -> ``("auto", 0.999)``: the cosine guard of ``auto`` spelled into its name (what the CLI's
    ``--min-cosine`` passes through index builds); other names -> ``(name, None)``."""
    name = str(runtime or "eager").strip()
    head, sep, tail = name.partition(":")
    if not sep:
        return name, None
    if head.strip().lower() != "auto":
        raise ClipzooError(f"runtime {runtime!r}: only auto takes a cosine guard (auto:0.995)")
    try:
        return "auto", auto.check_guard(float(tail))
    except ValueError:
        raise ClipzooError(f"runtime {runtime!r}: the guard after 'auto:' must be a number in (0, 1], "
                           "e.g. auto:0.995") from None


def normalize_runtime(runtime: str | None) -> str:
    """A runtime name as users may spell it -> one of :data:`RUNTIMES`; ``int8`` resolves to the int8
    engine available here, ``auto:GUARD`` to ``auto``. Unknown names raise :class:`ClipzooError` listing the
    known ones."""
    name = split_guard(runtime)[0].lower().replace("_", "-")
    name = ALIASES.get(name, name)
    if name not in RUNTIMES:
        raise ClipzooError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if name == "int8":
        name = "onnx-int8" if has_onnxruntime() else "torch-int8"
    return name


def apply_runtime(name: str, card: ModelCard, build: Callable[..., Any], *, device: str, precision: str,
                  cache_dir, load_kwargs: dict) -> Any:
    """The Comparator of ``card`` under runtime ``name`` (as the user spelled it).

    ``build(**overrides)`` loads the eager Comparator of ``card`` (with the user's device and precision
    unless overridden); the ONNX runtimes call it as ``build(device="cpu", precision="fp32")`` and only when
    their export cache misses, the others wrap what it returns. ``load_kwargs``: the backend keywords, which
    key the ONNX export cache.
    """
    runtime = normalize_runtime(name)
    # the options of auto are taken out of load_kwargs in place: build() must not pass them to the backend
    options = {k: load_kwargs.pop(k) for k in auto.OPTIONS if k in load_kwargs}
    if options and runtime != "auto":
        raise ClipzooError(f"{', '.join(sorted(options))}: only for runtime='auto', not {name!r}")
    if runtime == "eager":
        return build()
    if runtime == "auto":  # it measures the others and names the one it chose
        guard = split_guard(name)[1]
        if guard is not None:
            options.setdefault("min_cosine", guard)
        return auto.apply(card, build, device=device, precision=precision, cache_dir=cache_dir,
                          load_kwargs=dict(load_kwargs), **options)
    return run_runtime(runtime, card, build, device=device, precision=precision, cache_dir=cache_dir,
                       load_kwargs=load_kwargs)
