"""``runtime="onnx"``: the model exported once to ONNX (cached in ``cache_dir``/onnx) and run in ONNX Runtime.

The export is keyed by the card, the load options and (for local files) the file's size and mtime, so a
cached export loads without building the PyTorch model at all. An exported folder loads as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends import get_backend
from ..backends.onnx_format import FORMAT_VERSION, META_FILE, read_meta, require_onnxruntime
from ..cards import ModelCard
from ..constants import default_cache_dir
from ..errors import UnsupportedError
from ..files import build_folder_once
from ..registry import local_card
from . import onnx_columns, onnx_export, onnx_vision

FP32_NAMES = ("fp32", "float32", "torch.float32")
EXPORT_REVISION = 5  # 2: text graphs of causal towers take any length (onnx_columns); 3: fused ViT image graphs
# (onnx_vision); 4: ViT patch embedding as a MatMul, LayerNorms unfused, static int8 QAttention; 5: the portable
# ViT export in standard ops block by block (vit="standard"); keys the export cache


def apply(card: ModelCard, build: Callable[..., Any], *, device: str, precision: str, cache_dir,
          load_kwargs: dict) -> Any:
    """The ONNX Runtime comparator of ``card`` (exported now when the cache has no export of it yet)."""
    folder = exported_folder(card, build, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs)
    return load_exported(folder, device=device, cache_dir=cache_dir)


def load_exported(folder: Path, *, device: str, cache_dir):
    """An exported folder, loaded by the onnx backend as an unregistered local model; a text graph that takes
    any length runs each row at its own length (:mod:`clipzoo.runtime.onnx_columns`)."""
    comparator = get_backend("onnx").load(local_card(str(folder)).replace(backend="onnx"), device=device,
                                          cache_dir=cache_dir)
    onnx_columns.install(comparator)
    return comparator


def cache_folder(card: ModelCard, cache_dir=None, load_kwargs: dict | None = None, *, portable: bool = False) -> Path:
    """Where ``clipzoo.load(spec, runtime="onnx")`` keeps the export of ``card``: keyed by the card's
    identity and source, the load options, and (for local files) the file's size and mtime; ``portable``: the
    export without ONNX Runtime's contrib ops (:func:`exported_folder`)."""
    key: dict[str, Any] = {"card": card.to_dict(), "kwargs": load_kwargs or {}, "format": FORMAT_VERSION,
                           "export": EXPORT_REVISION}
    if portable:
        key["portable"] = True
    path = card.source.path
    if path and os.path.exists(path):
        st = os.stat(path)
        key["stat"] = [st.st_size, st.st_mtime_ns]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{card.architecture}-{card.publisher}-{os.path.basename(card.id)}")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "onnx" / f"{slug.strip('_')[:80]}-{digest}"


def exported_folder(card: ModelCard, build: Callable[..., Any], *, precision: str = "fp32", cache_dir=None,
                    load_kwargs: dict | None = None, portable: bool = False) -> Path:
    """The cached ONNX export of ``card`` (``build(device="cpu", precision="fp32")`` exported now if it is not
    there yet); an exported folder (backend ``"onnx"``) is returned as it is. The ONNX Runtime runtimes' export
    fuses a ViT image tower into ONNX Runtime's contrib ops (:mod:`.onnx_vision`); ``portable=True`` (what
    another engine reads: ``openvino-int8``) has standard ops only — the shared folder when the model has no tower
    to fuse (any image tower but an open_clip ViT), else one of its own with the ViT written out block by block
    in standard ops (``vit="standard"``)."""
    if card.backend == "onnx":
        return Path(card.source.path)
    if str(precision) not in FP32_NAMES:
        raise UnsupportedError(f"ONNX runtimes run exported fp32 graphs; load with precision='fp32', not {precision!r}")
    require_onnxruntime()
    folder = cache_folder(card, cache_dir, load_kwargs)
    if (folder / META_FILE).is_file() and not (portable and has_fused_graph(folder)):
        return folder
    own = cache_folder(card, cache_dir, load_kwargs, portable=True)
    if portable and (own / META_FILE).is_file():
        return own
    comparator = build(device="cpu", precision="fp32")
    if portable and onnx_vision.vit_visual(comparator) is not None:  # a ViT: its standard-ops graph apart
        folder = own
    vit = "standard" if folder == own else "contrib"
    build_folder_once(folder, lambda tmp: onnx_export.export_onnx(comparator, tmp, vit=vit), META_FILE)
    return folder


def has_fused_graph(folder: Path) -> bool:
    """Whether the export in ``folder`` has a graph with ONNX Runtime's fused contrib ops."""
    return any(g.get("fused") for g in read_meta(folder).get("graphs", {}).values())
