"""How big a model is, without its weights: parameters per tower and weight memory per precision.

The model is built on the meta device (``torch.device("meta")``): every module and parameter has its
real shape but no storage, so even a 1B-parameter model is "built" in a fraction of a second and no
checkpoint is downloaded. The numbers are therefore computed, never typed in.

Where the architecture comes from:

- open_clip cards (OpenAI's names included): ``open_clip.get_model_config(model_name)``;
- transformers cards and ``hf-hub:`` ids: the repo's ``config.json`` in the local Hugging Face cache
  (a clear :class:`~clipzoo.errors.ModelNotCachedError` when it is not cached; nothing is downloaded);
- local folders: ``open_clip_config.json`` (open_clip hub folder) or ``config.json`` (``save_pretrained``);
- local files: the open_clip config embedded in a safetensors file, or ``model_name=``; otherwise the
  tensors in the file are counted by shape (safetensors and ``torch.load`` pickles are read on the meta
  device, so no weight data is loaded).
"""
from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import BACKENDS, get_backend
from .backends.open_clip_plan import config_model_cfg, embedded_config
from .cards import ModelCard
from .checkpoints import is_torchscript, read_json, read_pickle, read_torchscript, sniff_folder, strip_prefixes, unwrap
from .errors import CheckpointError, ModelNotCachedError, UnknownModelError, UnsupportedError
from .models.jax_params import read_params
from .packing import with_files
from .registry import REGISTRY

TOWERS = ("image", "audio", "text", "decoder", "other")
BYTES_PER_PARAMETER = {"fp32": 4, "fp16": 2}

# First component of a parameter name -> tower. Names not listed count as "other" (logit scale/bias, …).
_TOWER_OF_PREFIX = {
    # open_clip CLIP / CustomTextCLIP / CoCa
    "visual": "image", "transformer": "text", "token_embedding": "text", "positional_embedding": "text",
    "ln_final": "text", "text_projection": "text", "text": "text", "text_decoder": "decoder",
    # transformers CLIPModel / SiglipModel / ChineseCLIPModel / AltCLIPModel
    "vision_model": "image", "visual_projection": "image", "text_model": "text",
    # SLIP (image_mlp, its SimCLR head, counts as "other")
    "image_projection": "image",
    # CLOOB
    "image_encoder": "image", "text_encoder": "text",
    # open_clip_jax parameter trees (its two projections, Dense_0 / Dense_1, count as "other")
    "image_model": "image",
    # transformers ClapModel
    "audio_model": "audio", "audio_projection": "audio",
    # transformers Blip2ForImageTextRetrieval (its shared Q-Former and ITM head count as "other")
    "query_tokens": "image", "vision_projection": "image", "embeddings": "text",
}
_NOT_PARAMETERS = ("running_mean", "running_var", "num_batches_tracked", "attn_mask", "position_ids")


def tower_of(name: str) -> str:
    """The tower a parameter belongs to, from its dotted name (``visual.conv1.weight`` -> ``image``)."""
    return _TOWER_OF_PREFIX.get(name.split(".", 1)[0], "other")


@dataclass
class ModelSummary:
    """Parameter counts per tower and the memory their weights take at each precision.

    ``memory(precision)`` counts weights only (``parameters × bytes per element``), not activations.
    """

    model: str
    built_from: str
    parameters: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parameters.values())

    def memory(self, precision: str = "fp32", tower: str | None = None) -> int:
        n = self.total if tower is None else self.parameters.get(tower, 0)
        return n * BYTES_PER_PARAMETER[precision]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "built_from": self.built_from,
            "parameters": {**self.parameters, "total": self.total},
            "memory_bytes": {p: {**{t: self.memory(p, t) for t in self.parameters}, "total": self.memory(p)}
                             for p in BYTES_PER_PARAMETER},
        }


def count_by_tower(named_shapes: Iterable[tuple[str, int]]) -> dict[str, int]:
    counts = {t: 0 for t in TOWERS}
    for name, numel in named_shapes:
        counts[tower_of(name)] += int(numel)
    shown = ("text",) if counts["audio"] else ("image", "text")  # an audio–text model has no image row
    return {t: n for t, n in counts.items() if n or t in shown}


def summarize_module(module, model: str = "", built_from: str = "") -> ModelSummary:
    """Count a module's parameters per tower (shared parameters once, as ``module.parameters()`` does)."""
    return ModelSummary(model=model, built_from=built_from,
                        parameters=count_by_tower((n, p.numel()) for n, p in module.named_parameters()))


def summarize(spec: "str | ModelCard | os.PathLike", *, model_name: str | None = None,
              cache_dir: "str | os.PathLike | None" = None, trust_pickle: bool = False) -> ModelSummary:
    """Parameters per tower and weight memory of any model spec ``clipzoo.load`` takes, without its weights.

    Raises :class:`~clipzoo.errors.ModelNotCachedError` for a hub model whose config is not cached,
    :class:`~clipzoo.errors.UnsupportedError` for a kind of model that cannot be summarised yet.
    """
    card = with_files(REGISTRY.resolve(spec), cache_dir)  # the embedded model: its folder, unpacked on first use
    name = card.alias if card.source.path is None else card.source.path
    model_name = model_name or card.config.get("model_name")
    src = card.source

    if card.backend == "open_clip" and card.source.path is None:
        model_name = model_name or (src.open_clip[0] if src.open_clip else None)
        if not model_name:
            raise UnsupportedError(f"{card.alias} names no open_clip model config; pass model_name=")
        return _from_open_clip_name(model_name, name)
    meta_model = getattr(get_backend(card.backend), "meta_model", None) if card.backend in BACKENDS else None
    built = meta_model(card, cache_dir=cache_dir) if meta_model else None  # SLIP, KELIP, CLIP-fa, CLOOB
    if built is not None:
        return summarize_module(built, name, f"{card.backend} architecture of {card.alias} built on the meta device")
    if card.backend == "transformers" and src.hf_repo:
        return _from_hf_config_dir(_cached_hub_dir(src.hf_repo, "config.json", cache_dir), name,
                                   card.config.get("hf_class"), f"config.json of hub repo {src.hf_repo!r}")
    if src.path:
        return _from_local(Path(src.path), name, model_name, trust_pickle)
    if card.backend == "auto" and src.hf_repo:
        return _from_hub_repo(src.hf_repo, name, model_name, cache_dir)
    if card.backend == "sentence_transformers":
        raise UnsupportedError(f"no parameter summary for sentence-transformers model {card.alias} yet "
                               "(it pairs several towers); load it and count model.parameters() instead")
    raise UnsupportedError(f"no parameter summary for {card.alias} (backend {card.backend!r}) yet")


# ------------------------------------------------------------------ open_clip
def open_clip_meta_model(model_cfg: dict, cache_dir=None):
    """An open_clip model (CLIP, CustomTextCLIP or CoCa, as open_clip's factory picks) on the meta device.

    Image towers from timm and text towers from HF are built untrained; an HF text tower needs its
    ``config.json`` in the local Hugging Face cache.
    """
    import torch
    from open_clip.coca_model import CoCa
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    vision_cfg, text_cfg = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    hf_text = "hf_model_name" in text_cfg
    if hf_text:  # point open_clip at the cached config folder, so nothing touches the network
        repo = text_cfg["hf_model_name"]
        if not os.path.isdir(repo):
            text_cfg["hf_model_name"] = str(_cached_hub_dir(
                repo, "config.json", cache_dir, what=f"the text tower {repo!r} of this open_clip model"))
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or hf_text
    model_class = (CoCa if "multimodal_cfg" in cfg else CustomTextCLIP) if custom_text else CLIP
    with torch.device("meta"):
        return model_class(**cfg)


def _from_open_clip_name(model_name: str, name: str) -> ModelSummary:
    import open_clip

    cfg = open_clip.get_model_config(model_name.replace("/", "-"))
    if cfg is None:
        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=5, cutoff=0.5)
        raise UnknownModelError(f"open_clip has no model config {model_name!r} (closest: "
                                f"{', '.join(close) or 'none'}); see open_clip.list_models()")
    model = open_clip_meta_model(cfg)
    return summarize_module(model, name, f"open_clip config {model_name!r} built on the meta device")


# ------------------------------------------------------------------ transformers
def hf_meta_model(config_dir: "str | os.PathLike", hf_class: str | None = None):
    """A transformers model built from a folder's ``config.json`` on the meta device."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(config_dir))
    model_class = getattr(transformers, hf_class) if hf_class else transformers.AutoModel
    with torch.device("meta"):
        if hf_class:
            return model_class._from_config(config)
        return model_class.from_config(config)


def _from_hf_config_dir(config_dir: Path, name: str, hf_class: str | None, described: str) -> ModelSummary:
    model = hf_meta_model(config_dir, hf_class)
    return summarize_module(model, name, f"{described} ({type(model).__name__}) built on the meta device")


def _cached_hub_dir(repo: str, filename: str, cache_dir=None, what: str | None = None) -> Path:
    """The snapshot folder holding ``filename`` of a hub repo in the local cache; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=None if cache_dir is None else str(cache_dir))
    if isinstance(found, str) and os.path.isfile(found):
        return Path(found).parent
    err = ModelNotCachedError(
        f"{filename} of hub repo {repo!r}{' (' + what + ')' if what else ''} is not in the local Hugging Face "
        "cache, so its size cannot be computed offline; fetch it once where the hub is reachable "
        f"(`hf download {repo} {filename}`) or set HF_HOME to a cache that holds it")
    err.missing_file = True
    raise err


def _from_hub_repo(repo: str, name: str, model_name: str | None, cache_dir) -> ModelSummary:
    try:
        folder = _cached_hub_dir(repo, "open_clip_config.json", cache_dir)
    except ModelNotCachedError:
        folder = None
    if folder is not None:
        cfg = _folder_model_cfg(folder / "open_clip_config.json")
        return summarize_module(open_clip_meta_model(cfg, cache_dir), name,
                                f"open_clip_config.json of hub repo {repo!r} built on the meta device")
    try:
        folder = _cached_hub_dir(repo, "config.json", cache_dir)
    except ModelNotCachedError:
        raise ModelNotCachedError(
            f"neither open_clip_config.json nor config.json of hub repo {repo!r} is in the local Hugging Face "
            "cache, so its size cannot be computed offline; fetch the repo once where the hub is reachable "
            "or set HF_HOME to a cache that holds it") from None
    return _from_hf_config_dir(folder, name, None, f"config.json of hub repo {repo!r}")


# ------------------------------------------------------------------ local files and folders
def _from_local(path: Path, name: str, model_name: str | None, trust_pickle: bool) -> ModelSummary:
    if path.is_dir():
        kind = sniff_folder(path)
        if kind == "open_clip":
            cfg = _folder_model_cfg(path / "open_clip_config.json")
            return summarize_module(open_clip_meta_model(cfg), name,
                                    "open_clip_config.json built on the meta device")
        if kind == "transformers":
            return _from_hf_config_dir(path, name, None, "config.json")
        weights = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        if not weights:
            raise UnsupportedError(f"no parameter summary for the {kind} folder {path} (no weight files found)")
        counts: dict[str, int] = {}
        for w in weights:
            for tower, n in _count_file(w, trust_pickle).items():
                counts[tower] = counts.get(tower, 0) + n
        return ModelSummary(name, f"tensor shapes in {len(weights)} weight file(s) of the {kind} folder", counts)
    if model_name:
        return _from_open_clip_name(model_name, name)
    if path.suffix == ".pkl":  # open_clip_jax parameters (the jax backend's files), read as numpy arrays
        return ModelSummary(name, "array shapes in the open_clip_jax parameter file", _count_jax(path, trust_pickle))
    if path.suffix == ".safetensors":
        cfg = _safetensors_open_clip_config(path)
        if cfg is not None:
            return summarize_module(open_clip_meta_model(cfg), name,
                                    "open_clip config embedded in the safetensors file, built on the meta device")
    return ModelSummary(name, "tensor shapes in the checkpoint file", _count_file(path, trust_pickle))


def _safetensors_open_clip_config(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors' own error type on a garbage header
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); is it truncated?") from None
    raw = meta.get("open_clip_config")
    if not raw:
        return None
    return embedded_config(raw, str(path))["model_cfg"]  # not JSON, a list, no model_cfg: load's one-line errors


def _folder_model_cfg(path: Path) -> dict:
    """``model_cfg`` of an open_clip folder's config file, checked as loading checks it (a KeyError before)."""
    return config_model_cfg(_read_json(path), path)


def _count_jax(path: Path, trust_pickle: bool) -> dict[str, int]:
    counts: dict[str, int] = {}

    def walk(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
                tower = tower_of(f"{prefix}{key}")
                counts[tower] = counts.get(tower, 0) + int(value.size)

    walk(read_params(path, trust_pickle)["params"], "")
    return counts


def _count_file(path: Path, trust_pickle: bool = False) -> dict[str, int]:
    """Parameters per tower from the tensor shapes of one weights file, without reading the weight data
    (safetensors headers; pickles mapped to the meta device; TorchScript read on CPU)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
        shapes = strip_prefixes(shapes)
        named = [(k, math.prod(s)) for k, (s, dtype) in shapes.items()
                 if dtype.startswith(("F", "BF")) and not k.endswith(_NOT_PARAMETERS)]
        return count_by_tower(named)
    if is_torchscript(path):
        sd = read_torchscript(path)
    else:
        sd, _ = unwrap(_load_meta_pickle(path, trust_pickle), path)
    return count_by_tower((k, v.numel()) for k, v in sd.items()
                          if v.is_floating_point() and not k.endswith(_NOT_PARAMETERS))


def _load_meta_pickle(path: Path, trust_pickle: bool):
    """A pickle's tensors mapped to the meta device (shapes only); anything else goes through
    :func:`clipzoo.checkpoints.read_pickle`, which refuses unsafe pickles and names a bad file."""
    import torch

    try:
        return torch.load(path, map_location="meta", weights_only=True)
    except Exception:  # noqa: BLE001 - an unsafe pickle, or not a checkpoint: let read_pickle say which
        return read_pickle(path, trust_pickle)


def _read_json(path: Path) -> dict:
    return read_json(path)


def format_count(n: int) -> str:
    """``151277313`` -> ``"151.28 M"``."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def format_bytes(n: int) -> str:
    """``605109252`` -> ``"577.1 MiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover
