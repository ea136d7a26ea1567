"""open_clip backend: every open_clip architecture, OpenAI's checkpoints, open_clip files and hub folders.

How a card becomes a model:
1. a *plan*: the model config (open_clip's dict), the preprocessing config, and where the weights are
   (a state dict read safely by :mod:`clipzoo.checkpoints`, or none for untrained weights);
2. the model is built from the config, exactly as ``open_clip.create_model`` builds it;
3. the weights go through open_clip's own conversions (old layouts, position-embedding resizing) and
   are loaded strictly, with an error naming missing and unexpected keys.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cards import ModelCard
from ..checkpoints import load_into, read_json, read_state_dict, sniff_folder, state_dict_kind
from ..comparator import Comparator, resolve_dtype
from ..download import download_url, hub_file
from ..errors import (
    ArchitectureMismatchError,
    CheckpointError,
    ClipzooError,
    DownloadError,
    ModelNotCachedError,
    UnknownModelError,
)
from ..inputs import too_long_error

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
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


class OpenClipComparator(Comparator):
    """A Comparator over an open_clip ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` module."""

    def __init__(self, card: ModelCard, model: torch.nn.Module, *, transform, tokenizer, precision: str,
                 model_name: str | None, model_config: dict | None, preprocess_config: dict):
        visual = model.visual
        size = getattr(visual, "image_size", None) or preprocess_config.get("size")
        if isinstance(size, (list, tuple)):
            size = tuple(size) if size[0] != size[-1] else int(size[0])
        embed_dim = _embed_dim(model, model_config)
        super().__init__(card, model, transform=transform, embed_dim=embed_dim, image_size=size,
                         context_length=getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77))
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.model_config = model_config
        self.preprocess_config = preprocess_config
        self.precision = precision
        self._input_dtype = resolve_dtype(precision) if precision in ("fp16", "bf16", "fp32") else torch.float32
        self.probability = "sigmoid" if getattr(model, "logit_bias", None) is not None else "softmax"

    @property
    def dtype(self) -> torch.dtype:
        return self._input_dtype

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=False)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if _trimmable(self.model):
            return encode_text_padding_free(self.model, tokens)
        return self.model.encode_text(tokens, normalize=False)

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        return tokenize_checked(self.tokenizer, texts, self.context_length, truncate)

    def logit_params(self):
        scale = self.model.logit_scale.exp().reshape(())
        bias = getattr(self.model, "logit_bias", None)
        return scale, (None if bias is None else bias.reshape(()))


def _tracing() -> bool:
    """Exporting (TorchScript / ONNX) or compiling: the graph must keep the whole context, whose length
    may not depend on the example's tokens."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or compiling())


def _trimmable(model) -> bool:
    """An open_clip ``CLIP`` whose text tower is causal and pools at the end-of-text token: its features
    do not depend on the padding after the longest text of a batch, so that padding need not be computed."""
    import open_clip

    return (type(model) is open_clip.CLIP and getattr(model, "text_pool_type", None) in ("argmax", "eos")
            and isinstance(getattr(model, "attn_mask", None), torch.Tensor)
            and getattr(model, "positional_embedding", None) is not None)


def encode_text_padding_free(model, text: torch.Tensor) -> torch.Tensor:
    """Raw text features of a :func:`_trimmable` model: :func:`_encode_text_trimmed`, except while exporting
    or compiling, where open_clip's own (class) ``encode_text`` keeps the whole context."""
    if _tracing():
        return type(model).encode_text(model, text)
    return _encode_text_trimmed(model, text)


def _encode_text_trimmed(model, text: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(text)`` computed on the columns up to the batch's last end-of-text token.

    The causal mask lets position i attend to positions ≤ i only, and pooling reads the end-of-text
    position, so the columns after the longest text never reach the features: dropping them gives the same
    features (to float rounding, ~1e-7) for a fraction of the work — a 10-token caption in a 77-token
    context costs ~1/7. open_clip's own ``encode_text`` always runs the whole context.
    """
    from open_clip.transformer import text_global_pool

    if model.text_pool_type == "argmax":
        ends = text.argmax(dim=-1)
    else:
        ends = (text == model.text_eos_id).int().argmax(dim=-1)
    n = int(ends.max()) + 1 if text.numel() else text.shape[1]
    text = text[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def tokenize_checked(tokenizer, texts, context_length: int, truncate: bool = False) -> torch.Tensor:
    """Token ids from an open_clip-style tokenizer; a text longer than the context raises
    :class:`BadTextError` naming it unless ``truncate``."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not truncate:
        for text in texts:
            n = token_count(tokenizer, text)
            if n is not None and n > context_length:
                raise too_long_error(text, n, context_length)
    return tokenizer(texts)


def token_count(tokenizer, text: str) -> int | None:
    """Tokens a text needs, special tokens included; None when the tokenizer gives no way to count."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip SimpleTokenizer
        return len(tokenizer.encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None:
        clean = getattr(tokenizer, "clean_fn", None)
        ids = inner(clean(text) if clean else text, truncation=False)["input_ids"]
        return len(ids)
    return None


def _embed_dim(model, cfg) -> int:
    if cfg and "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    return int(getattr(model.visual, "output_dim", 0) or model.visual.proj.shape[1])


# --------------------------------------------------------------------------- entry point
def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, model_name: str | None = None, model_config: dict | None = None,
         **kwargs: Any) -> OpenClipComparator:
    import open_clip

    if kwargs:
        raise ClipzooError(f"unknown option(s) for an open_clip model: {', '.join(sorted(kwargs))}")
    resolve_dtype(precision)
    plan = make_plan(card, cache_dir=cache_dir, trust_pickle=trust_pickle,
                     model_name=model_name or card.config.get("model_name"), model_config=model_config)
    model = build(plan, precision)
    if plan.state_dict is not None:
        load_weights(model, plan.state_dict, plan.source)
    elif plan.state_dict is None:
        warnings.warn(f"{card.alias}: no pretrained weights; the model has random (untrained) weights", stacklevel=2)
    from open_clip.factory import _set_model_device_and_precision

    is_timm = "timm_model_name" in (plan.model_cfg or {}).get("vision_cfg", {})
    model.eval()
    _set_model_device_and_precision(model, torch.device(device), precision, is_timm)
    model.eval()
    preprocess_cfg = dict(plan.preprocess_cfg)
    preprocess_cfg.setdefault("size", model.visual.image_size)
    open_clip.set_model_preprocess_cfg(model, preprocess_cfg)
    transform = open_clip.image_transform(preprocess_cfg["size"], is_train=False,
                                          mean=preprocess_cfg.get("mean"), std=preprocess_cfg.get("std"),
                                          interpolation=preprocess_cfg.get("interpolation"),
                                          resize_mode=preprocess_cfg.get("resize_mode"),
                                          fill_color=preprocess_cfg.get("fill_color", 0))
    tokenizer = make_tokenizer(plan, cache_dir)
    return OpenClipComparator(card, model, transform=transform, tokenizer=tokenizer, precision=precision,
                              model_name=plan.model_name, model_config=plan.model_cfg,
                              preprocess_config=preprocess_cfg)


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


def _builtin_config(name: str) -> dict:
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise UnknownModelError(f"open_clip has no model config {name!r}; see open_clip.list_models() "
                                "or `clipzoo models --backend open_clip`")
    return copy.deepcopy(cfg)


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
        sha = card.source.sha256 or _sha_in_url(url)
        try:
            return download_url(url, sha, cache_dir)
        except DownloadError as exc:
            if not errors:
                raise
            errors.append(str(exc))
    raise ModelNotCachedError(f"cannot fetch the weights of {card.alias} from any of its sources — "
                              + " — and ".join(errors))


def _sha_in_url(url: str) -> str | None:
    parts = url.split("/")
    if len(parts) >= 2 and len(parts[-2]) == 64 and all(c in "0123456789abcdef" for c in parts[-2]):
        return parts[-2]
    return None


def _plan_hub_folder(folder: Path, trust_pickle: bool, repo: str | None = None, cache_dir=None) -> Plan:
    kind = sniff_folder(folder) if repo is None else "open_clip"
    if kind != "open_clip":
        raise CheckpointError(f"{folder} is a {kind} folder, not an open_clip one")
    config = read_json(folder / "open_clip_config.json")
    model_cfg = config.get("model_cfg")
    if not model_cfg:
        raise CheckpointError(f"{folder / 'open_clip_config.json'} has no 'model_cfg'")
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
        data = json.loads(embedded)
        cfg = data["model_cfg"]
        pre = _preprocess_from(data.get("preprocess_cfg"), cfg)
        model_name = data.get("model_name")
    else:
        kind = state_dict_kind(sd)
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
        text = {"context_length": sd["positional_embedding"].shape[0], "vocab_size": sd["token_embedding.weight"].shape[0],
                "width": width, "heads": width // 64,
                "layers": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks")})}
        return {"embed_dim": sd["text_projection"].shape[1], "quick_gelu": True, "vision_cfg": vision, "text_cfg": text}
    except (KeyError, IndexError) as exc:
        raise ArchitectureMismatchError(f"{source} looks like an OpenAI CLIP checkpoint but lacks {exc}") from None


# --------------------------------------------------------------------------- building
def build(plan: Plan, precision: str = "fp32") -> torch.nn.Module:
    """Build the module of a plan, as ``open_clip.create_model`` would (weights loaded separately)."""
    from open_clip import CLIP, CoCa, CustomTextCLIP, get_cast_dtype

    cfg = copy.deepcopy(plan.model_cfg)
    vision_cfg, text_cfg = cfg.setdefault("vision_cfg", {}), cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    is_hf_text = "hf_model_name" in text_cfg
    if is_hf_text:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or is_hf_text
    cls = CoCa if "multimodal_cfg" in cfg else CustomTextCLIP if custom_text else CLIP
    try:
        return cls(**cfg, cast_dtype=get_cast_dtype(precision))
    except OSError as exc:  # an HF text tower whose config is not cached
        raise ModelNotCachedError(f"building {plan.model_name or plan.source} needs the HF config of "
                                  f"{text_cfg.get('hf_model_name')!r}, which is not cached ({exc})") from None


def load_weights(model: torch.nn.Module, sd: dict, source: str) -> None:
    """open_clip's conversions (third-party layouts, old text layout, scalar/1-d logit params,
    position-embedding resizing), then a strict load with a clear mismatch error."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    sd = dict(sd)
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    try:
        sd = convert_state_dict(model, sd)
    except Exception:  # noqa: BLE001 - a failed detection leaves the dict as it is
        pass
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for name in ("logit_scale", "logit_bias"):
        param = getattr(model, name, None)
        if name in sd and param is not None and param.ndim != sd[name].ndim:
            sd[name] = sd[name].reshape(param.shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None and "logit_scale" in sd:
        sd["logit_bias"] = torch.zeros_like(sd["logit_scale"])
    try:
        resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
    except Exception:  # noqa: BLE001 - a shape problem is reported by the strict load below
        pass
    try:
        load_into(model, sd, source)
    except RuntimeError as exc:
        if isinstance(exc, ClipzooError):
            raise
        raise ArchitectureMismatchError(f"{source} does not fit the architecture: {_size_mismatch(exc)}; "
                                        "pick the model config that matches the checkpoint (model_name=…)") from None


def _size_mismatch(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
    return "; ".join(lines[:4]) + (" …" if len(lines) > 4 else "") if lines else str(exc).splitlines()[0]


def make_tokenizer(plan: Plan, cache_dir=None):
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    from ..tokenizers import OpenAITokenizer

    text_cfg = (plan.model_cfg or {}).get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    if plan.openai_tokenizer:
        return OpenAITokenizer(context_length=context_length)
    try:
        if plan.model_name and open_clip.get_model_config(plan.model_name) is not None:
            return open_clip.get_tokenizer(plan.model_name, cache_dir=cache_dir)
        kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
        if text_cfg.get("hf_tokenizer_name"):
            return HFTokenizer(plan.tokenizer_dir or text_cfg["hf_tokenizer_name"], context_length=context_length,
                               cache_dir=cache_dir, tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
        return SimpleTokenizer(context_length=context_length, **kwargs)
    except OSError as exc:
        raise ModelNotCachedError(f"the tokenizer of {plan.model_name or plan.source} is not cached and the hub "
                                  f"cannot be reached ({str(exc).splitlines()[0]})") from None
