"""Plans for the open_clip backend: from a card, the model config, the preprocessing config and the weights.

A *plan* says what to build and what to load into it: the model config (open_clip's dict), the
preprocessing config, and where the weights are (a state dict read safely by :mod:`clipzoo.checkpoints`,
or none for untrained weights). :mod:`clipzoo.backends.open_clip` builds the model from it.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..cards import ModelCard
from ..checkpoints import json_object, read_json, read_state_dict, sniff_folder, state_dict_kind
from ..constants import OPENAI_MEAN, OPENAI_STD
from ..download import download_url, hub_file, sha256_in_url
from ..errors import ArchitectureMismatchError, CheckpointError, DownloadError, ModelNotCachedError, UnknownModelError
from .long_clip import fold_positions

WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


@dataclass
class Plan:
    """What to build and what to load into it."""

    model_cfg: dict | None
    preprocess_cfg: dict = field(default_factory=dict)
    state_dict: dict | None = None
    source: str = ""
    model_name: str | None = None
    tokenizer_dir: str | None = None  # an open_clip hub folder holding HF tokenizer files
    openai_tokenizer: bool = False    # OpenAI's own BPE tokenizer (OpenAI releases), token for token


# --------------------------------------------------------------------------- plans
def make_plan(card: ModelCard, *, cache_dir=None, trust_pickle=False, model_name=None,
              model_config=None) -> Plan:
    src = card.source
    if src.open_clip or card.config.get("openai"):
        name, tag = src.open_clip or (card.config["model_name"], "openai")
        return _plan_open_clip_pair(card, name, tag, cache_dir, trust_pickle)
    if src.path and os.path.isdir(src.path):
        return _plan_hub_folder(Path(src.path), trust_pickle)
    if src.path:
        return _plan_file(Path(src.path), trust_pickle, model_name, model_config)
    if src.hf_repo:
        if src.hf_file:  # a single weights file in a repo, with a named config
            path = hub_file(src.hf_repo, src.hf_file, cache_dir)
            return _plan_file(path, trust_pickle, model_name, model_config)
        config_path = hub_file(src.hf_repo, "open_clip_config.json", cache_dir)
        return _plan_hub_folder(config_path.parent, trust_pickle, repo=src.hf_repo, cache_dir=cache_dir)
    if src.url:
        path = download_url(src.url, src.sha256, cache_dir)
        return _plan_file(path, trust_pickle, model_name, model_config)
    raise CheckpointError(f"{card.alias} has no weights source; register it with a path, url or hf_repo")


def embedded_config(text: str, path: str) -> dict:
    """The open_clip config a safetensors file carries in its metadata; a :class:`CheckpointError` when it is not
    JSON or holds no ``model_cfg`` object (a JSONDecodeError, a TypeError before)."""
    where = f"{path}'s metadata 'open_clip_config'"
    try:
        data = json_object(json.loads(text), where)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where} is not JSON ({exc})") from None
    if not isinstance(data.get("model_cfg"), dict):
        raise CheckpointError(f"{where} has no 'model_cfg' object; write the config with clipzoo convert")
    checked_model_cfg(data["model_cfg"], where)
    return data


def _builtin_config(name: str) -> dict:
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise UnknownModelError(f"open_clip has no model config {name!r}; see open_clip.list_models() "
                                "or `clipzoo models --backend open_clip`")
    return copy.deepcopy(cfg)


def checked_model_cfg(cfg: object, where: str) -> dict:
    """An open_clip model config as open_clip reads it — a table whose tower configs are tables — else a
    CheckpointError (a string or a null there was an AttributeError deep in the preprocessing set-up)."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: model_cfg must be a table of settings, got {type(cfg).__name__} "
                              f"{str(cfg)[:60]!r}")
    for key in ("vision_cfg", "text_cfg", "preprocess_cfg"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise CheckpointError(f"{where}: model_cfg.{key} must be a table of settings, got {cfg[key]!r}")
    return cfg


def config_model_cfg(config: dict, path: "str | os.PathLike") -> dict:
    """The checked ``model_cfg`` of an ``open_clip_config.json`` read from ``path``."""
    model_cfg = config.get("model_cfg")
    if not model_cfg:
        raise CheckpointError(f"{path} has no 'model_cfg'")
    return checked_model_cfg(model_cfg, str(path))


def _preprocess_from(pretrained_cfg: dict | None, model_cfg: dict | None) -> dict:
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    base = {}
    if model_cfg:
        base = merge_preprocess_dict(PreprocessCfg(), model_cfg.get("preprocess_cfg", {}))
        base["size"] = model_cfg.get("vision_cfg", {}).get("image_size", base["size"])
    return merge_preprocess_dict(base or PreprocessCfg(), pretrained_cfg or {})


def _plan_open_clip_pair(card, name, tag, cache_dir, trust_pickle) -> Plan:
    from open_clip.pretrained import get_pretrained_cfg

    cfg = _builtin_config(name)
    if not tag:
        return Plan(cfg, _preprocess_from(None, cfg), None, f"open_clip:{name}", model_name=name)
    pcfg = get_pretrained_cfg(name, tag)
    if not pcfg:
        raise UnknownModelError(f"open_clip has no pretrained {name}/{tag}")
    if pcfg.get("quick_gelu"):
        cfg["quick_gelu"] = True
    path = _fetch_pretrained(card, pcfg, cache_dir)
    sd, _ = read_state_dict(path, trust_pickle)
    return Plan(cfg, _preprocess_from(pcfg, cfg), sd, str(path), model_name=name, openai_tokenizer=tag == "openai")


def _fetch_pretrained(card: ModelCard, pcfg: dict, cache_dir) -> Path:
    """Weights of an open_clip pretrained tag: its hub repo first, then its URL (verified when the
    URL carries the SHA256, as OpenAI's do)."""
    errors = []
    repo = (pcfg.get("hf_hub") or "").strip()
    if repo:
        parts = repo.split("/")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
        for name in ([filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            try:
                return hub_file(repo_id, name, cache_dir)
            except ModelNotCachedError as exc:
                errors.append(str(exc))
                if not getattr(exc, "missing_file", False):
                    break  # the hub is unreachable: asking for the next file would only wait again
    url = pcfg.get("url") or card.source.url
    if url:
        sha = card.source.sha256 or sha256_in_url(url)
        try:
            return download_url(url, sha, cache_dir)
        except DownloadError as exc:
            if not errors:
                raise
            errors.append(str(exc))
    raise ModelNotCachedError(f"cannot fetch the weights of {card.alias} from any of its sources — "
                              + " — and ".join(errors))


def _plan_hub_folder(folder: Path, trust_pickle: bool, repo: str | None = None, cache_dir=None) -> Plan:
    kind = sniff_folder(folder) if repo is None else "open_clip"
    if kind != "open_clip":
        raise CheckpointError(f"{folder} is a {kind} folder, not an open_clip one")
    config = read_json(folder / "open_clip_config.json")
    model_cfg = config_model_cfg(config, folder / "open_clip_config.json")
    weights = None
    for name in WEIGHT_FILES:
        if repo is not None:
            try:
                weights = hub_file(repo, name, cache_dir)
                break
            except ModelNotCachedError as exc:
                if not getattr(exc, "missing_file", False):
                    raise
        elif (folder / name).is_file():
            weights = folder / name
            break
    if weights is None:
        raise CheckpointError(f"open_clip folder {repo or folder} has no weights file (looked for "
                              f"{', '.join(WEIGHT_FILES[:4])}, …)")
    sd, _ = read_state_dict(weights, trust_pickle)
    tok_dir = str(weights.parent) if (weights.parent / "tokenizer_config.json").exists() else None
    return Plan(copy.deepcopy(model_cfg), _preprocess_from(config.get("preprocess_cfg"), model_cfg), sd,
                str(weights), tokenizer_dir=tok_dir)


def _plan_file(path: Path, trust_pickle: bool, model_name: str | None, model_config: dict | None) -> Plan:
    sd, meta = read_state_dict(path, trust_pickle)
    embedded = meta.get("open_clip_config") or meta.get("clipzoo_open_clip_config")
    if model_config is not None:
        cfg, pre = copy.deepcopy(model_config), _preprocess_from(None, model_config)
    elif model_name:
        cfg = _builtin_config(model_name)
        pre = _preprocess_from(None, cfg)
    elif embedded:
        data = embedded_config(embedded, str(path))
        cfg = data["model_cfg"]
        pre = _preprocess_from(data.get("preprocess_cfg"), cfg)
        model_name = data.get("model_name")
    elif "batch_in_epoch" in meta:  # a clipzoo training checkpoint that carries no config (composite, adapters)
        raise CheckpointError(f"{path} is a clipzoo training checkpoint (step {meta.get('step')}) without the "
                              "model config loading needs (a model with towers or adapters, or a checkpoint of an "
                              "older clipzoo); load the run's model/ folder, or resume the run with --resume")
    else:
        kind = state_dict_kind(sd)
        sd = fold_positions(sd) if kind == "openai" else sd  # Long-CLIP's two 248-row position tables
        if kind == "openai":
            if meta.get("format") != "torchscript":
                warnings.warn(f"{path}: architecture inferred from tensor shapes in OpenAI's layout with "
                              "QuickGELU, as openai's build_model does; if it was trained with an open_clip "
                              "config using GELU, pass model_name=… (CLI: --model-name)", stacklevel=3)
            cfg = openai_config(sd, str(path))
            pre = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest",
                   "size": cfg["vision_cfg"]["image_size"]}
            return Plan(cfg, pre, sd, str(path), openai_tokenizer=True)
        if kind == "hf":
            raise CheckpointError(f"{path} holds HF transformers weights without their config; load the "
                                  "save_pretrained folder (with config.json) instead")
        raise CheckpointError(f"cannot tell the architecture of {path} from its weights ({kind} layout); "
                              "pass model_name=… (an open_clip config such as 'ViT-B-32'; CLI: --model-name)")
    return Plan(cfg, pre, sd, str(path), model_name=model_name)


def openai_config(sd: dict, source: str = "checkpoint") -> dict:
    """The open_clip config of an OpenAI-layout state dict, read from tensor shapes as openai's
    ``build_model`` does (QuickGELU, 64-wide heads). Unlike ``build_model`` it keeps the weights'
    own precision: nothing is rounded to fp16."""
    try:
        if "visual.proj" in sd:
            width = sd["visual.conv1.weight"].shape[0]
            layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
            patch = sd["visual.conv1.weight"].shape[-1]
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"layers": layers, "width": width, "patch_size": patch, "image_size": patch * grid}
        else:
            counts = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}")}) for b in (1, 2, 3, 4)]
            out = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"layers": counts, "width": sd["visual.layer1.0.conv1.weight"].shape[0], "image_size": out * 32}
        width = sd["ln_final.weight"].shape[0]
        text = {"context_length": sd["positional_embedding"].shape[0],
                "vocab_size": sd["token_embedding.weight"].shape[0],
                "width": width, "heads": width // 64,
                "layers": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks")})}
        return {"embed_dim": sd["text_projection"].shape[1], "quick_gelu": True, "vision_cfg": vision, "text_cfg": text}
    except (KeyError, IndexError) as exc:
        raise ArchitectureMismatchError(f"{source} looks like an OpenAI CLIP checkpoint but lacks {exc}") from None
