"""PyTorch (OpenAI / open_clip) parameter names <-> MindSpore-CLIP's, and MindSpore ``.ckpt`` files.

The renaming is MindSpore-CLIP's ``ckpt_transform.py`` rule, written from its effect: layer norms
(``ln_1``, ``ln_2``, ``ln_pre``, ``ln_post``, ``ln_final``) ``weight``/``bias`` -> ``gamma``/``beta``;
``token_embedding.weight`` -> ``token_embedding.embedding_table``; batch norms (``bn1``-``bn3`` and a block's
``downsample.1``) ``weight``/``bias``/``running_mean``/``running_var`` -> ``gamma``/``beta``/``moving_mean``/
``moving_variance``. Every other name is unchanged, and every tensor is copied as it is (no transpose: MindSpore's
``Dense``, ``Conv2d`` and multi-head attention keep PyTorch's layouts), so a round trip is bit-identical.
Batch norms' ``num_batches_tracked`` and the buffers ``attn_mask`` are not parameters there and are dropped;
the way back restores ``num_batches_tracked`` (as 0) so that PyTorch loads the result strictly.

Renaming needs neither torch nor MindSpore; reading and writing ``.ckpt`` files needs MindSpore.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from ..extras import require

LN_LEAVES = {"weight": "gamma", "bias": "beta"}
BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
DROPPED_LEAVES = ("num_batches_tracked", "attn_mask")
EMBEDDING = ("token_embedding.weight", "token_embedding.embedding_table")
_BN_MODULE = re.compile(r"(^|\.)(bn\d+|downsample\.1)$")


def _is_ln(module: str) -> bool:
    return module.rsplit(".", 1)[-1].startswith("ln_")


def to_mindspore_name(key: str) -> "str | None":
    """MindSpore-CLIP's name of PyTorch state-dict key ``key`` (None: not a parameter there)."""
    module, _, leaf = key.rpartition(".")
    if leaf in DROPPED_LEAVES or key in DROPPED_LEAVES:
        return None
    if key == EMBEDDING[0]:
        return EMBEDDING[1]
    if _is_ln(module) and leaf in LN_LEAVES:
        return f"{module}.{LN_LEAVES[leaf]}"
    if _BN_MODULE.search(module) and leaf in BN_LEAVES:
        return f"{module}.{BN_LEAVES[leaf]}"
    return key


def to_torch_name(name: str) -> str:
    """The PyTorch (OpenAI / open_clip) key of MindSpore-CLIP parameter ``name``."""
    module, _, leaf = name.rpartition(".")
    if name == EMBEDDING[1]:
        return EMBEDDING[0]
    if _is_ln(module) and leaf in ("gamma", "beta"):
        return f"{module}.{'weight' if leaf == 'gamma' else 'bias'}"
    if _BN_MODULE.search(module):
        back = {v: k for k, v in BN_LEAVES.items()}
        if leaf in back:
            return f"{module}.{back[leaf]}"
    return name


def _numpy(value) -> Any:
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor (bf16 has no numpy dtype)
        value = value.detach().cpu()
        return value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
    if hasattr(value, "asnumpy"):  # a MindSpore Tensor / Parameter
        return value.asnumpy()
    return np.asarray(value)


def torch_to_mindspore(state_dict: Mapping[str, Any], dtype: "str | None" = "float32") -> dict[str, Any]:
    """A PyTorch CLIP state dict (OpenAI's or open_clip's; ``module.`` prefixes stripped) -> ``{name: numpy}``
    in MindSpore-CLIP's names; ``dtype`` casts floating tensors (None keeps them, e.g. OpenAI's fp16)."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        name = to_mindspore_name(key)
        if name is None:
            continue
        array = _numpy(value)
        out[name] = array.astype(dtype) if dtype and array.dtype.kind == "f" else array
    return out


def mindspore_to_torch(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: array}`` in MindSpore-CLIP's names -> a PyTorch state dict (fp32 tensors; batch norms get
    ``num_batches_tracked``); MindSpore-CLIP's non-weight entries (``input_resolution``, …) are dropped."""
    import numpy as np
    import torch

    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in ("input_resolution", "context_length", "vocab_size") or name.endswith(DROPPED_LEAVES):
            continue
        key = to_torch_name(name)
        out[key] = torch.from_numpy(np.array(_numpy(value), dtype=np.float32, order="C"))
        module, _, leaf = key.rpartition(".")
        if leaf == "running_mean":
            out[f"{module}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def read_ckpt(path: "str | os.PathLike") -> dict[str, Any]:
    """A MindSpore ``.ckpt`` -> ``{name: numpy array}`` (a protobuf file: reading it runs no code)."""
    ms = require("mindspore", "reading MindSpore .ckpt files")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is not a file; give the path of a MindSpore .ckpt")
    try:
        params = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, TypeError, OSError) as exc:
        raise CheckpointError(f"cannot read {path} as a MindSpore checkpoint: {str(exc).splitlines()[0]}") from None
    return {name: _numpy(p) for name, p in params.items()}


def write_ckpt(path: "str | os.PathLike", params: Mapping[str, Any]) -> None:
    """Write ``{name: array}`` as a MindSpore ``.ckpt`` (``mindspore.save_checkpoint``)."""
    import numpy as np

    ms = require("mindspore", "writing MindSpore .ckpt files")
    entries = [{"name": name, "data": ms.Tensor(np.array(_numpy(v), order="C"))}  # (ascontiguousarray makes a
               for name, v in params.items()]                                        # 0-d logit_scale 1-d)
    ms.save_checkpoint(entries, str(path))
