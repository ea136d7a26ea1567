"""PyTorch (OpenAI / open_clip) parameter names <-> MindSpore-CLIP's, and MindSpore ``.ckpt`` files.

The renaming is MindSpore-CLIP's ``ckpt_transform.py`` rule, written from its effect: layer norms
(``ln_1``, ``ln_2``, ``ln_pre``, ``ln_post``, ``ln_final``) ``weight``/``bias`` -> ``gamma``/``beta``;
``token_embedding.weight`` -> ``token_embedding.embedding_table``; batch norms (``bn1``-``bn3`` and a block's
``downsample.1``) ``weight``/``bias``/``running_mean``/``running_var`` -> ``gamma``/``beta``/``moving_mean``/
``moving_variance``. Every other name is unchanged, and every tensor is copied as it is (no transpose: MindSpore's
``Dense``, ``Conv2d`` and multi-head attention keep PyTorch's layouts), so a round trip is bit-identical.
Batch norms' ``num_batches_tracked`` and the buffers ``attn_mask`` are not parameters there and are dropped;
the way back restores ``num_batches_tracked`` (as 0) so that PyTorch loads the result strictly.

Renaming needs neither torch nor MindSpore; reading and writing ``.ckpt`` files needs MindSpore (its protobuf
schema and writer: the file is parsed and checked here, never handed unchecked to MindSpore's C++ reader).
"""
from __future__ import annotations

import binascii
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError, one_line
from ..extras import require
from .mindspore_config import CONFIG_ENTRY

LN_LEAVES = {"weight": "gamma", "bias": "beta"}
BN_LEAVES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
DROPPED_LEAVES = ("num_batches_tracked", "attn_mask")
# entries of a .ckpt that are no weights: MindSpore-CLIP's ckpt_transform.py keeps OpenAI's three ints; ours, the config
NON_WEIGHTS = frozenset({"input_resolution", "context_length", "vocab_size", CONFIG_ENTRY})
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
        if name in NON_WEIGHTS or name.endswith(DROPPED_LEAVES):
            continue
        key = to_torch_name(name)
        out[key] = torch.from_numpy(np.array(_numpy(value), dtype=np.float32, order="C"))
        module, _, leaf = key.rpartition(".")
        if leaf == "running_mean":
            out[f"{module}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def read_ckpt(path: "str | os.PathLike") -> dict[str, Any]:
    """A MindSpore ``.ckpt`` -> ``{name: numpy array}``, its tensors (a string entry, such as the model config clipzoo
    stores, is left out: :func:`read_ckpt_entries` has them), checked as :func:`read_ckpt_entries` checks them."""
    return {name: value for name, value in read_ckpt_entries(path).items() if not isinstance(value, str)}


def read_ckpt_entries(path: "str | os.PathLike") -> dict[str, Any]:
    """Every entry of a MindSpore ``.ckpt``: ``{name: numpy array}``, a string entry as a ``str``. The protobuf is
    parsed here and every entry checked before NumPy reads it — one tag, non-negative dims, a known dtype, as many
    bytes as its dims and dtype need (MindSpore's own reader trusts them: a crafted file corrupted its heap) — else a
    one-line :class:`CheckpointError` naming the file and the entry. A tensor MindSpore wrote in slices (consecutive
    entries of one tag) is joined as MindSpore joins it; bfloat16 becomes float32 (exactly)."""
    require("mindspore", "reading MindSpore .ckpt files")
    from mindspore.train.checkpoint_pb2 import Checkpoint

    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is not a file; give the path of a MindSpore .ckpt")
    with open(path, "rb") as f:
        content = f.read()
    if content[-17:-10] == b"crc_num":  # save_checkpoint(crc_check=True)'s trailer: the CRC-32 of what precedes it
        content, crc = content[:-17], int.from_bytes(content[-10:], "big")
        if binascii.crc32(content) != crc:
            raise CheckpointError(f"{path} fails its CRC check: the file is damaged; download or write it again")
    ckpt = Checkpoint()
    try:
        ckpt.ParseFromString(content)
    except MemoryError:
        raise
    except Exception as exc:  # protobuf's DecodeError (and whatever its parser raises on garbage): not a checkpoint
        raise CheckpointError(f"cannot read {path} as a MindSpore checkpoint ({one_line(exc, 120)}): it is damaged "
                              "or another format") from None
    del content
    if not ckpt.value:
        raise CheckpointError(f"{path} holds no tensors: it is not a MindSpore checkpoint (or an empty one)")
    return _entries(ckpt, str(path))


CKPT_DTYPES = {"Float16": "<f2", "Float32": "<f4", "Float64": "<f8", "BFloat16": "<u2", "Int8": "i1", "UInt8": "u1",
               "Int16": "<i2", "UInt16": "<u2", "Int32": "<i4", "UInt32": "<u4", "Int64": "<i8", "UInt64": "<u8",
               "Bool": "?"}  # MindSpore's tensor_type -> the NumPy dtype of its bytes (MindSpore writes little-endian)
DAMAGED = "the file is damaged or was not written by MindSpore; write it again"


def _entries(ckpt, path: str) -> dict[str, Any]:
    runs: list[tuple[str, list]] = []  # (tag, its consecutive entries)
    for value in ckpt.value:
        if not value.HasField("tensor"):
            raise CheckpointError(f"{path}: entry {value.tag!r} is a MindSpore map tensor, which clipzoo does not "
                                  "read; give a checkpoint of CLIP weights")
        if runs and runs[-1][0] == value.tag:
            runs[-1][1].append(value.tensor)
        else:
            runs.append((value.tag, [value.tensor]))
    out: dict[str, Any] = {}
    for tag, tensors in runs:
        if tag in out:
            raise CheckpointError(f"{path}: entry {tag!r} appears twice, apart; {DAMAGED}")
        out[tag] = _entry(path, tag, tensors)
    return out


def _entry(path: str, tag: str, tensors: list) -> Any:
    """One entry's value, checked: a ``str`` or a NumPy array of exactly its dims."""
    import numpy as np

    kind, dims = tensors[0].tensor_type, tuple(tensors[0].dims)
    if any(t.tensor_type != kind or tuple(t.dims) != dims for t in tensors[1:]):
        raise CheckpointError(f"{path}: the slices of entry {tag!r} disagree on dtype or dims; {DAMAGED}")
    data = b"".join(t.tensor_content for t in tensors)
    if kind == "str":  # save_checkpoint's strings: NumPy's UTF-32
        try:
            return data.decode("utf-32-le").rstrip("\0")
        except UnicodeDecodeError:
            raise CheckpointError(f"{path}: string entry {tag!r} is not UTF-32 text; {DAMAGED}") from None
    if kind not in CKPT_DTYPES:
        raise CheckpointError(f"{path}: entry {tag!r} has dtype {kind!r}, which is not a MindSpore tensor dtype "
                              f"clipzoo reads ({', '.join(CKPT_DTYPES)}); {DAMAGED}")
    if any(d < 0 for d in dims):
        raise CheckpointError(f"{path}: entry {tag!r} has a negative dimension {list(dims)}; {DAMAGED}")
    dtype = np.dtype(CKPT_DTYPES[kind])
    shape = () if dims == (0,) and data else dims  # MindSpore's dims [0]: a scalar
    size = math.prod(shape) * dtype.itemsize
    if size != len(data):
        raise CheckpointError(f"{path}: entry {tag!r} ({kind}, dims {list(dims)}) needs {size} bytes and holds "
                              f"{len(data)}; {DAMAGED}")
    array = np.frombuffer(data, dtype).reshape(shape)
    if kind == "BFloat16":  # the upper half of a float32
        return (array.astype("<u4") << 16).view("<f4")
    return array.copy()  # writable, and the file's bytes freed


def write_ckpt(path: "str | os.PathLike", params: Mapping[str, Any],
               model_config: "Mapping[str, Any] | None" = None) -> None:
    """Write ``{name: array}`` as a MindSpore ``.ckpt`` (``mindspore.save_checkpoint``); ``model_config`` (an open_clip
    model config) is stored as the string entry ``CONFIG_ENTRY``, which the readers use instead of guessing it."""
    import numpy as np

    ms = require("mindspore", "writing MindSpore .ckpt files")
    entries = [{"name": name, "data": ms.Tensor(np.array(_numpy(v), order="C"))}  # (ascontiguousarray makes a
               for name, v in params.items()]                                        # 0-d logit_scale 1-d)
    extra = {CONFIG_ENTRY: json.dumps(dict(model_config), sort_keys=True)} if model_config is not None else None
    ms.save_checkpoint(entries, str(path), append_dict=extra)
