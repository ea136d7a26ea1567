"""Reading checkpoint files safely and telling their formats apart.

Safetensors first; pickles through ``torch.load(weights_only=True)``; a pickle that needs more is
refused unless ``trust_pickle=True``; TorchScript archives (OpenAI's releases) are read with
``torch.jit.load``, which runs no Python pickle code.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import ArchitectureMismatchError, CheckpointError, UnsafePickleError, one_line
from .files import NOT_REGULAR, special_file

WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "weights")
PREFIXES = ("module.", "_orig_mod.", "model.")


def is_torchscript(path: "str | os.PathLike") -> bool:
    """A TorchScript archive is a zip with a ``constants.pkl`` and ``code/`` (what openai releases)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) and any(
        "/code/" in n or n.startswith("code/") for n in names)


def read_safetensors(path: "str | os.PathLike") -> tuple[dict, dict]:
    """(state_dict, metadata) of a safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(os.fspath(path)), metadata
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); is it truncated?") from None


def safetensors_numel(path: "str | os.PathLike") -> int:
    """How many numbers a safetensors file holds, from its header alone (nothing is read into memory); a
    :class:`CheckpointError` naming the file when the header is not a whole, consistent safetensors header (an empty
    or truncated file, offsets past its end, a header length of 2**62: raw ``SafetensorError`` tracebacks from
    whoever read it next)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is not a file; a model folder's weights file must be one")
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            names = f.keys()
            return sum(math.prod(f.get_slice(name).get_shape()) for name in names)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError) on bad files
        raise CheckpointError(f"{path} is not a readable safetensors file ({one_line(exc, 200)}); is it truncated? "
                              "Download or save it again") from None


def check_built_size(source: str, what: str, built: int, held: int) -> None:
    """An :class:`ArchitectureMismatchError` when a config (``what``: "its config", "its config.json") builds far more
    parameters (``built``, counted on the meta device) than the weights hold (``held``): refused before anything is
    allocated — a config claiming a huge vocabulary or tower allocated gigabytes before the weights were compared."""
    if built > 2 * held + (1 << 20):
        raise ArchitectureMismatchError(f"{source}: {what} builds a model of {built:,} parameters where the weights "
                                        f"hold {held:,}; the config does not describe these weights (nothing was "
                                        "allocated)")


def read_pickle(path: "str | os.PathLike", trust_pickle: bool = False) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not_a_pickle(exc):
            raise _not_a_checkpoint(path, exc) from None
        if not trust_pickle:
            raise UnsafePickleError(
                f"{path} is a pickle that needs more than tensors to load ({load_failure_reason(exc)}); "
                "loading it can run arbitrary code. If you trust its source, pass trust_pickle=True "
                "(CLI: --trust-pickle), or convert it once to safetensors") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (AttributeError, ImportError) as inner:
            raise CheckpointError(f"{path} is a pickle that refers to code that is not importable here "
                                  f"({load_failure_reason(inner)}); install the package that wrote it, or convert "
                                  "it to safetensors where it was written") from None
        except Exception as inner:  # noqa: BLE001 - a trusted load of a file that is no pickle at all
            raise _not_a_checkpoint(path, inner) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on non-checkpoints
        raise _not_a_checkpoint(path, exc) from None


def not_a_pickle(exc: BaseException) -> bool:
    """torch's weights-only refusal of bytes that are no pickle (garbage, another format), as opposed to a
    real pickle that asks for a global it does not allow."""
    text = str(exc)
    return "Unsupported operand" in text or "invalid load key" in text


def _not_a_checkpoint(path: "str | os.PathLike", exc: BaseException) -> CheckpointError:
    # torch's pickle reader on other bytes fails with a bare KeyError ('101') or IndexError: say what the file holds
    why = load_failure_reason(exc) if not isinstance(exc, (KeyError, IndexError)) else f"it starts with {_head(path)}"
    return CheckpointError(f"{path} is not a PyTorch checkpoint, safetensors file or TorchScript archive "
                           f"({why}); is it truncated or another format?")


def _head(path: "str | os.PathLike") -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return "unreadable bytes"
    return repr(head.decode("latin-1")) if head.isascii() else head.hex()


_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def load_failure_reason(exc: BaseException) -> str:
    """Why torch could not load a file, in a few words: the global a weights-only load refused, else the useful
    line of its message (200 characters at most)."""
    text = str(exc)
    named = _GLOBAL.search(text)  # torch's weights_only refusal names the global after a long preamble
    if named:
        return f"it asks for {named.group(1)}, which weights-only loading does not allow"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    starts = ("Unsupported operand", "invalid load key", "WeightsUnpickler error: Unsupported", "Unsupported global")
    useful = next((ln for ln in lines if ln.startswith(starts)), None)
    text = useful or (lines[0] if lines else type(exc).__name__)
    return text.split(" Please use")[0].split(" was not an allowed global")[0][:200]


def read_torchscript(path: "str | os.PathLike") -> dict:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return torch.jit.load(os.fspath(path), map_location="cpu").state_dict()
    except Exception as exc:
        raise CheckpointError(f"{path} looks like a TorchScript archive but cannot be loaded "
                              f"({load_failure_reason(exc)})") from None


def read_state_dict(path: "str | os.PathLike", trust_pickle: bool = False) -> tuple[dict, dict]:
    """Any weights file -> (flat state dict of tensors, metadata). Unwraps ``state_dict`` wrappers and
    ``module.`` prefixes. Metadata: safetensors metadata, or non-tensor entries of a wrapper dict."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a weights file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); was the download interrupted?")
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        sd, meta = read_safetensors(path)
        return strip_prefixes(sd), meta
    if is_torchscript(path):
        return strip_prefixes(read_torchscript(path)), {"format": "torchscript"}
    obj = read_pickle(path, trust_pickle)
    return unwrap(obj, path)


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100_000_000 and head[8:9] == b"{"


def unwrap(obj: Any, path: "str | os.PathLike" = "checkpoint") -> tuple[dict, dict]:
    import torch

    meta: dict = {}
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for _ in range(3):
        if isinstance(obj, dict) and not _is_state_dict(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            meta.update({k: v for k, v in obj.items() if not isinstance(v, (dict, torch.Tensor))})
            obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise CheckpointError(f"{path} holds no state dict of tensors (found {type(obj).__name__}"
                              + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else "") + ")")
    return strip_prefixes({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}), meta


def _is_state_dict(obj: dict) -> bool:
    import torch

    tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    return tensors > 0 and tensors >= len(obj) / 2


def strip_prefixes(sd: dict) -> dict:
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def state_dict_kind(sd: dict) -> str:
    """'openai' (OpenAI / open_clip CLIP layout), 'open_clip_custom' (open_clip CustomTextCLIP),
    'hf' (transformers CLIPModel-like), or 'unknown'."""
    keys = sd.keys()
    if "token_embedding.weight" in keys and ("visual.proj" in keys or "visual.layer1.0.conv1.weight" in keys
                                             or "visual.attnpool.c_proj.weight" in keys):
        return "openai"
    if any(k.startswith("text.") for k in keys) and any(k.startswith("visual.") for k in keys):
        return "open_clip_custom"
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return "hf"
    if any(k.startswith("visual.") for k in keys):
        return "open_clip_custom"
    return "unknown"


def load_into(model, sd: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the missing and unexpected keys."""
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(("attn_mask", "position_ids"))]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(("attn_mask", "position_ids"))]
    if missing or unexpected:
        raise ArchitectureMismatchError(
            f"{source} does not fit the architecture: {len(missing)} missing key(s) {show_keys(missing)}, "
            f"{len(unexpected)} unexpected key(s) {show_keys(unexpected)}; pick the model config that matches "
            "the checkpoint (model_name=…) or check the file")


def show_keys(keys: list[str], n: int = 6) -> str:
    return "[" + ", ".join(keys[:n]) + (", …" if len(keys) > n else "") + "]"


def sniff_folder(path: "str | os.PathLike") -> str:
    """Which backend reads a folder: 'open_clip' (open_clip hub folder), 'sentence_transformers',
    'transformers' (save_pretrained), 'onnx' (a clipzoo ONNX export), 'composite' (a compositional model
    clipzoo trained: clipzoo_composite.json), or 'clipzoo' (a folder clipzoo trained)."""
    path = Path(path)
    refuse_special_files(path)
    names = {p.name for p in path.iterdir()}
    if "clipzoo_composite.json" in names:
        return "composite"
    if "clipzoo_onnx.json" in names or names & {"image.onnx", "text.onnx"}:
        return "onnx"
    if "clipzoo.json" in names:
        return "clipzoo"
    if "open_clip_config.json" in names:
        return "open_clip"
    if "modules.json" in names:
        return "sentence_transformers"
    if "config.json" in names:
        return "transformers"
    raise CheckpointError(f"folder {path} is not a model folder clipzoo knows: expected open_clip_config.json "
                          "(open_clip hub), config.json (HF save_pretrained), modules.json "
                          "(sentence-transformers), clipzoo_onnx.json (ONNX export) or clipzoo_composite.json "
                          f"(composite model); found {sorted(names)[:10]}")


def refuse_special_files(folder: "str | os.PathLike") -> None:
    """A :class:`CheckpointError` naming the first fifo, socket or device directly inside a model folder: the library
    reading the folder's files would wait on it for ever (a fifo as config.json or modules.json hung the load)."""
    for entry in sorted(os.listdir(folder)):
        if special_file(os.path.join(folder, entry)):
            raise CheckpointError(f"{os.path.join(folder, entry)} {NOT_REGULAR}; a model folder holds files and "
                                  "folders only: replace it with the model's file")


def read_json_value(path: "str | os.PathLike") -> Any:
    """Any JSON value in a model's file: a :class:`CheckpointError` when the file is a fifo or device (reading it
    waited for ever), unreadable, not JSON, or nested too deeply for Python (a RecursionError traceback)."""
    if special_file(path):
        raise CheckpointError(f"{path} {NOT_REGULAR}; replace it with the model's JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path} as JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: its JSON nests too deeply (RecursionError), so its config cannot be built; "
                              "check the file") from None


def read_json(path: "str | os.PathLike") -> dict:
    """A model's JSON config file: :func:`read_json_value`'s errors, and a :class:`CheckpointError` when it is JSON but
    not an object (a list there was an AttributeError from whoever read a key of it)."""
    return json_object(read_json_value(path), str(path))


def json_object(data: Any, where: str) -> dict:
    """``data`` when it is a JSON object; a :class:`CheckpointError` saying what ``where`` holds instead."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} holds a JSON {type(data).__name__}, not an object of settings; is it the "
                              "model's config?")
    return data
