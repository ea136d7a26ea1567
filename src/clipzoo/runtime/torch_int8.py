"""``runtime="torch-int8"``: ``torch.ao.quantization.quantize_dynamic`` of the model's ``nn.Linear`` layers
(weights int8, activations quantised per batch at run time), in place — inference only, CPU."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ..cards import ModelCard
from ..errors import UnsupportedError
from .onnx import refuse_export


def apply(card: ModelCard, build: Callable[..., Any], *, device: str, precision: str, cache_dir,
          load_kwargs: dict) -> Any:
    """The eager comparator of ``card`` with its linear layers quantised."""
    refuse_export(card, "torch-int8", "onnx-int8")
    return quantize_torch(build())


def quantize_torch(comparator):
    """Dynamic int8 quantisation of ``comparator.model``'s ``nn.Linear`` layers, in place."""
    import torch

    if comparator.device.type != "cpu":
        raise UnsupportedError(f"runtime='torch-int8' runs on CPU only; {comparator.card.alias} is on "
                               f"{comparator.device} — load it with device='cpu'")
    if comparator.dtype != torch.float32:
        raise UnsupportedError("runtime='torch-int8' quantises an fp32 model; load it with precision='fp32'")
    names = quantisable_linears(comparator.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        comparator.model = torch.ao.quantization.quantize_dynamic(comparator.model, names, dtype=torch.qint8,
                                                                  inplace=False)
    for module in comparator.model.modules():
        if hasattr(module, "get_weight_dtype"):  # open_clip reads mlp.c_fc.weight.dtype, now a packed int8 weight
            object.__setattr__(module, "get_weight_dtype", lambda: torch.float32)
    comparator.eval()
    return comparator


# modules that read their child Linears' .weight / .bias directly instead of calling them (open_clip's
# ModifiedResNet attention pool, torch's MultiheadAttention): a quantised child would break them, so
# their Linears stay fp32
READS_CHILD_WEIGHTS = ("AttentionPool2d",)


def quantisable_linears(model) -> set[str]:
    """Names of the ``nn.Linear`` modules that can be quantised (none inside :data:`READS_CHILD_WEIGHTS`
    modules or ``nn.MultiheadAttention``)."""
    import torch

    skip = [name for name, m in model.named_modules()
            if type(m).__name__ in READS_CHILD_WEIGHTS or isinstance(m, torch.nn.MultiheadAttention)]
    return {name for name, m in model.named_modules()
            if type(m) is torch.nn.Linear and not any(name.startswith(p + ".") for p in skip)}
