"""``runtime="onnx"``: the model exported once to ONNX (cached in ``cache_dir``/onnx) and run in ONNX Runtime.

The export is keyed by the card, the load options and (for local files) a fingerprint of the files
(:func:`clipzoo.files.model_fingerprint`: weights rewritten in place inside a model folder key a new export), so a
cached export loads without building the PyTorch model at all. An exported folder loads as it is; what the int8
runtimes derive from it goes to the cache (:func:`derived_base`), never beside it. A cache entry that does not load
(a truncated graph, a damaged description) is removed and exported again (:func:`load_or_rebuild`); a write that
fails (a full disk, ``ulimit -f``) is one line naming the folder (:func:`build_entry`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends import get_backend
from ..backends.onnx_format import FORMAT_VERSION, META_FILE, read_meta, require_onnxruntime
from ..cards import ModelCard
from ..constants import default_cache_dir
from ..errors import CheckpointError, ClipzooError, UnsupportedError, one_line, warn_user, write_refused
from ..files import build_folder_once, model_fingerprint
from ..registry import local_card
from . import onnx_columns, onnx_export, onnx_vision

FP32_NAMES = ("fp32", "float32", "torch.float32")
EXPORT_REVISION = 6  # 2: text graphs of causal towers take any length (onnx_columns); 3: fused ViT image graphs
# (onnx_vision); 4: ViT patch embedding as a MatMul, LayerNorms unfused, static int8 QAttention; 5: the portable
# ViT export in standard ops block by block (vit="standard"); 6: the embedded model's tokenizer is open_clip's (was
# OpenAI's at fp32); keys the export cache


def apply(card: ModelCard, build: Callable[..., Any], *, device: str, precision: str, cache_dir,
          load_kwargs: dict) -> Any:
    """The ONNX Runtime comparator of ``card`` (exported now when the cache has no export of it yet)."""
    return load_or_rebuild(card, cache_dir, load_kwargs, lambda: load_exported(exported_folder(
        card, build, precision=precision, cache_dir=cache_dir, load_kwargs=load_kwargs), device=device,
        cache_dir=cache_dir))


def load_exported(folder: Path, *, device: str, cache_dir):
    """An exported folder, loaded by the onnx backend as an unregistered local model; a text graph that takes
    any length runs each row at its own length (:mod:`clipzoo.runtime.onnx_columns`)."""
    comparator = get_backend("onnx").load(local_card(str(folder)).replace(backend="onnx"), device=device,
                                          cache_dir=cache_dir)
    onnx_columns.install(comparator)
    return comparator


def refuse_export(card: ModelCard, runtime: str, instead: str) -> None:
    """A one-line refusal of a PyTorch runtime (``torch-int8``, ``compile``) for an exported model (backend
    ``"onnx"``): its graphs run in ONNX Runtime, with no PyTorch modules to quantise or compile."""
    if card.backend == "onnx":
        raise UnsupportedError(f"an ONNX export runs in ONNX Runtime, not under runtime {runtime!r} (a PyTorch "
                               f"runtime): {card.source.path or card.alias}; use runtime={instead!r}")


def cache_folder(card: ModelCard, cache_dir=None, load_kwargs: dict | None = None, *, portable: bool = False) -> Path:
    """Where ``clipzoo.load(spec, runtime="onnx")`` keeps the export of ``card``: keyed by the card's
    identity and source, the load options, and (for local files) :func:`source_fingerprint`; ``portable``: the
    export without ONNX Runtime's contrib ops (:func:`exported_folder`)."""
    key: dict[str, Any] = {"card": card.to_dict(), "kwargs": load_kwargs or {}, "format": FORMAT_VERSION,
                           "export": EXPORT_REVISION}
    if portable:
        key["portable"] = True
    fingerprint = source_fingerprint(card, cache_dir)
    if fingerprint:
        key["files"] = fingerprint
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{card.architecture}-{card.publisher}-{os.path.basename(card.id)}")
    return onnx_root(cache_dir) / f"{slug.strip('_')[:80]}-{digest}"


DERIVED_NAME = re.compile(r"-int8[a-z0-9-]*")  # -int8, -int8r7, -int8s-<digest>: never a builder's .tmp-/.stale- folder


def onnx_root(cache_dir=None) -> Path:
    return cache_root(cache_dir) / "onnx"


def source_fingerprint(card: ModelCard, cache_dir=None) -> str | None:
    """The fingerprint of a local model's files (name, size, first and last MiB of each; the cache left out, should
    it lie inside the model's folder); None for a registry model. A folder's own size and mtime do not change when a
    file inside it is rewritten: keyed by them, a model folder whose weights were overwritten in place kept its old
    export (silently other embeddings)."""
    path = card.source.path
    if not path or not os.path.exists(path):
        return None
    return model_fingerprint(os.path.abspath(path), exclude=cache_root(cache_dir))


def cache_root(cache_dir=None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir()


def derived_base(card: ModelCard, folder: Path, cache_dir=None) -> Path:
    """The path whose name the int8 runtimes extend for what they derive from the export ``folder`` (``<base>-int8``,
    ``<base>-int8s-…``): the export itself when it is a cache entry; for a user's exported folder (backend
    ``"onnx"``), a name in ``cache_dir``/onnx keyed by the fingerprint of its files — never beside the user's folder,
    whose parent may be read-only or not theirs to fill."""
    if card.backend != "onnx":
        return folder
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"export-{folder.name}").strip("_")[:80]
    fingerprint = model_fingerprint(folder.resolve(), exclude=cache_root(cache_dir)) or ""
    return onnx_root(cache_dir) / f"{slug}-{fingerprint[:16]}"


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
    return build_entry(folder, lambda tmp: onnx_export.export_onnx(comparator, tmp, vit=vit))


def build_entry(folder: Path, build: Callable[[Path], object]) -> Path:
    """The cache entry ``folder`` built by ``build(tmp)`` (:func:`clipzoo.files.build_folder_once`: nothing partial is
    left); a write the file system refuses (a full disk, a file size limit, a read-only cache) is one line naming the
    folder, at once — not an exporter failure to retry with another exporter."""
    try:
        return build_folder_once(folder, build, META_FILE)
    except OSError as exc:
        raise write_error(folder, exc) from None


def write_error(folder: Path, exc: OSError) -> ClipzooError:
    """The one line of a cache write the file system refused (:func:`clipzoo.errors.write_refused`)."""
    return write_refused(folder, exc, elsewhere=" (or pass another cache_dir)")


def load_or_rebuild(card: ModelCard, cache_dir, load_kwargs: dict | None, run: Callable[[], Any]) -> Any:
    """``run()``: find (or build) ``card``'s cache entries and load one. When that fails on a damaged entry (a
    truncated or empty graph, a damaged description: a crash or a full disk while it was written, a hand edit), the
    model's entries are removed and ``run()`` builds them anew, once; a folder that still does not load — or a
    user's own export, which cannot be exported again — is a one-line :class:`CheckpointError` naming it."""
    try:
        return run()
    except Exception as exc:
        if not damaged(exc):
            raise
        entries = cache_entries(card, cache_dir, load_kwargs)
        if not entries and card.backend == "onnx":  # nothing of ours to build anew: the user's export itself
            raise not_loading(card, cache_dir, exc) from None
        if not entries:  # the first export itself failed: its own error, not a damaged entry
            raise
        warn_user(f"a cached ONNX export of {card.alias} does not load ({why(exc)}); removing "
                  f"{', '.join(map(str, entries))} and exporting again")
        for entry in entries:
            shutil.rmtree(entry, ignore_errors=True)
    try:
        return run()
    except Exception as exc:
        if not damaged(exc):
            raise
        raise not_loading(card, cache_dir, exc) from None


def not_loading(card: ModelCard, cache_dir, exc: Exception) -> CheckpointError:
    if card.backend == "onnx":
        return CheckpointError(f"ONNX export {card.source.path} does not load ({why(exc)}); export the model again")
    return CheckpointError(f"the ONNX export of {card.alias} does not load even written anew ({why(exc)}); delete "
                           f"{onnx_root(cache_dir)} and rerun, or use runtime='eager'")


def damaged(exc: Exception) -> bool:
    """Whether ``exc`` can come of a damaged cache entry: a bad description (:class:`CheckpointError`, or its
    fields of the wrong type) or a graph ONNX / ONNX Runtime cannot parse — not a user's error (a bad option, a
    missing package), a full disk nor an interrupted run."""
    if isinstance(exc, CheckpointError):
        return True
    return not isinstance(exc, (ClipzooError, OSError, ImportError, MemoryError))


def why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {one_line(exc, 200)}" if str(exc).strip() else type(exc).__name__


def cache_entries(card: ModelCard, cache_dir, load_kwargs: dict | None) -> list[Path]:
    """The cache folders of ``card``'s exports (the ONNX Runtime one, the portable one) and of everything derived
    from them (``-int8``, ``-int8r7``, ``-int8s-…``); for a user's export, only what was derived from it."""
    if card.backend == "onnx":
        bases = [derived_base(card, Path(card.source.path), cache_dir)]
    else:
        bases = [cache_folder(card, cache_dir, load_kwargs, portable=p) for p in (False, True)]
    found = [b for b in bases if b.is_dir()]
    found += [p for b in bases if b.parent.is_dir() for p in sorted(b.parent.glob(f"{b.name}-int8*"))
              if p.is_dir() and DERIVED_NAME.fullmatch(p.name[len(b.name):])]
    return found


def has_fused_graph(folder: Path) -> bool:
    """Whether the export in ``folder`` has a graph with ONNX Runtime's fused contrib ops."""
    return any(g.get("fused") for g in read_meta(folder).get("graphs", {}).values())
