"""Conversion both ways between an open_clip ViT CLIP state dict (torch) and open_clip_jax's parameter tree.

>>> variables = open_clip_to_jax(model.state_dict(), "vit-base-patch32")   # {'params': {...}} of numpy arrays
>>> state_dict = jax_to_open_clip(variables, "vit-base-patch32")          # open_clip keys, torch tensors

Every tensor is moved by a transpose and/or a reshape only, so a round trip is bit-identical. The plan is
one table (:func:`plan`) read in both directions. open_clip's ``logit_scale`` (a log) is open_clip_jax's
optional ``temp`` (its model multiplies image features by ``exp(temp)``); a tree without ``temp`` converts
to ``log(100)``, the temperature open_clip_jax's ``CLIPInference`` applies. Neither direction needs JAX.
"""
from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import CheckpointError, ClipzooError
from ..models.jax_config import JaxClipConfig, TowerConfig, check_shapes, get_config, get_path

DEFAULT_TEMPERATURE = 100.0  # open_clip_jax's softmax_temp
OPEN_CLIP_VIT_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
OPEN_CLIP_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}


def _np():  # numpy and torch are imported where used (heavy packages; see scripts/check_layout.py)
    import numpy

    return numpy


# ------------------------------------------------------------------------------------------- the plan
# An entry: (open_clip key, {jax path: (to_jax, from_jax)}) — to_jax maps the torch array to each jax array;
# from_jax maps the jax arrays (in the same order) back to the torch array.
Entry = tuple[str, dict[str, Callable], Callable]


def _same(a):
    return a


def _block_plan(prefix: str, path: str, tower: TowerConfig) -> list[Entry]:
    h, hd, w = tower.n_heads, tower.head_dim, tower.embed_dim
    att = f"{path}/MultiHeadAttention_0"
    qkv = {f"{att}/{n}/kernel": (lambda t, i=i: t[i * w:(i + 1) * w].T.reshape(w, h, hd))
           for i, n in enumerate(("query", "key", "value"))}
    qkv_b = {f"{att}/{n}/bias": (lambda t, i=i: t[i * w:(i + 1) * w].reshape(h, hd))
             for i, n in enumerate(("query", "key", "value"))}
    cat = _np_cat
    return [
        *_ln(f"{prefix}ln_1", f"{path}/LayerNorm_0"),
        (f"{prefix}attn.in_proj_weight", qkv, lambda q, k, v: cat([a.reshape(w, w).T for a in (q, k, v)])),
        (f"{prefix}attn.in_proj_bias", qkv_b, lambda q, k, v: cat([a.reshape(w) for a in (q, k, v)])),
        (f"{prefix}attn.out_proj.weight", {f"{att}/out/kernel": lambda t: t.T.reshape(h, hd, w)},
         lambda k: k.reshape(w, w).T),
        (f"{prefix}attn.out_proj.bias", {f"{att}/out/bias": _same}, _same),
        *_ln(f"{prefix}ln_2", f"{path}/LayerNorm_1"),
        *_dense(f"{prefix}mlp.c_fc", f"{path}/MLP_0/Dense_0"),
        *_dense(f"{prefix}mlp.c_proj", f"{path}/MLP_0/Dense_1"),
    ]


def _np_cat(parts):
    return _np().concatenate(parts, axis=0)


def _ln(key: str, path: str) -> list[Entry]:
    return [(f"{key}.weight", {f"{path}/scale": _same}, _same), (f"{key}.bias", {f"{path}/bias": _same}, _same)]


def _dense(key: str, path: str) -> list[Entry]:
    return [(f"{key}.weight", {f"{path}/kernel": lambda t: t.T}, lambda k: k.T),
            (f"{key}.bias", {f"{path}/bias": _same}, _same)]


def plan(model: "str | dict | JaxClipConfig") -> list[Entry]:
    """The conversion table of config ``model`` (``logit_scale`` / ``temp`` handled apart)."""
    cfg = get_config(model)
    v, t = "image_model", "text_model"
    out: list[Entry] = [
        ("visual.conv1.weight", {f"{v}/PatchEmbed_0/Conv_0/kernel": lambda w: w.transpose(2, 3, 1, 0)},
         lambda k: k.transpose(3, 2, 0, 1)),
        ("visual.class_embedding", {f"{v}/ClsToken_0/cls_token": _same}, _same),
        ("visual.positional_embedding", {f"{v}/PosEmbed_0/pos_embed": _same}, _same),
        *_ln("visual.ln_pre", f"{v}/LayerNorm_0"),
        *_ln("visual.ln_post", f"{v}/LayerNorm_1"),
        ("visual.proj", {"Dense_0/kernel": _same}, _same),
        ("token_embedding.weight", {f"{t}/Embed_0/embedding": _same}, _same),
        ("positional_embedding", {f"{t}/PosEmbed_0/pos_embed": _same}, _same),
        *_ln("ln_final", f"{t}/LayerNorm_0"),
        ("text_projection", {"Dense_1/kernel": _same}, _same),
    ]
    for i in range(cfg.image.depth):
        out += _block_plan(f"visual.transformer.resblocks.{i}.", f"{v}/Transformer_0/TransformerBlock_{i}", cfg.image)
    for i in range(cfg.text.depth):
        out += _block_plan(f"transformer.resblocks.{i}.", f"{t}/Transformer_0/TransformerBlock_{i}", cfg.text)
    return out


# ------------------------------------------------------------------------------------------- directions
def _to_numpy(value) -> Any:
    numpy = _np()
    if hasattr(value, "detach"):  # a torch tensor; bf16 has no numpy dtype
        import torch

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return numpy.asarray(value)


def open_clip_to_jax(state_dict: Mapping[str, Any], model: "str | dict | JaxClipConfig") -> dict:
    """An open_clip ViT CLIP state dict -> ``{'params': …}`` (numpy arrays) in open_clip_jax's tree."""
    cfg = get_config(model)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    sd.pop("attn_mask", None)
    entries = plan(cfg)
    wanted = {e[0] for e in entries} | {"logit_scale"}
    missing, extra = sorted(wanted - set(sd)), sorted(set(sd) - wanted)
    if missing or extra:
        what = (f"missing {', '.join(missing[:4])}" if missing else "") + \
               ("; " if missing and extra else "") + (f"unexpected {', '.join(extra[:4])}" if extra else "")
        raise CheckpointError(f"this state dict is not an open_clip ViT CLIP of config {cfg.name!r} ({what}); "
                              "the JAX engine converts plain open_clip ViT CLIPs (class token, ln_pre, no "
                              "attention pooling) — name the matching config with model=")
    params: dict = {}
    for key, targets, _ in entries:
        array = _to_numpy(sd[key])
        for path, fn in targets.items():
            _put(params, path, _np().ascontiguousarray(fn(array)))
    params["temp"] = _to_numpy(sd["logit_scale"]).reshape(())
    check_shapes(params, cfg)
    return {"params": params}


def jax_to_open_clip(variables: Mapping[str, Any], model: "str | dict | JaxClipConfig") -> dict:
    """``{'params': …}`` in open_clip_jax's tree -> an open_clip state dict (torch tensors, contiguous)."""
    import torch

    cfg = get_config(model)
    params = variables.get("params", variables) if isinstance(variables, Mapping) else None
    if not isinstance(params, Mapping):
        raise CheckpointError("JAX parameters must be a mapping {'params': {...}}")
    check_shapes(params, cfg)
    out = {}
    for key, targets, back in plan(cfg):
        arrays = [_to_numpy(get_path(params, path)) for path in targets]
        out[key] = torch.from_numpy(_np().array(back(*arrays), order="C"))  # a writable copy
    temp = params.get("temp")
    scale = _to_numpy(temp).reshape(()) if temp is not None else _np().asarray(math.log(DEFAULT_TEMPERATURE),
                                                                                dtype=_np().float32)
    out["logit_scale"] = torch.from_numpy(_np().array(scale))
    return out


def _put(tree: dict, path: str, value) -> None:
    *heads, last = path.split("/")
    for h in heads:
        tree = tree.setdefault(h, {})
    tree[last] = value


# ------------------------------------------------------------------------------------------- configs
def open_clip_config(model: "str | dict | JaxClipConfig", image_size: int, context_length: int) -> dict:
    """The open_clip model config (``open_clip.CLIP(**cfg)``) of a JAX config at these sizes."""
    cfg = get_config(model)
    i, t = cfg.image, cfg.text
    return {"embed_dim": cfg.proj_dim, "quick_gelu": cfg.act == "quick_gelu",
            "vision_cfg": {"image_size": image_size, "layers": i.depth, "width": i.embed_dim,
                           "patch_size": i.patch_size, "head_width": i.head_dim},
            "text_cfg": {"context_length": context_length, "vocab_size": cfg.vocab_size, "width": t.embed_dim,
                         "heads": t.n_heads, "layers": t.depth}}


def config_from_open_clip(model_cfg: Mapping[str, Any]) -> JaxClipConfig:
    """The JAX config of an open_clip ViT model config (its ``vision_cfg`` / ``text_cfg``)."""
    vision, text = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    odd = sorted((set(vision) - OPEN_CLIP_VIT_KEYS) | {f"text_cfg.{k}" for k in set(text) - OPEN_CLIP_TEXT_KEYS})
    if odd or isinstance(vision.get("layers"), (list, tuple)) or float(vision.get("mlp_ratio", 4)) != 4 \
            or float(text.get("mlp_ratio", 4)) != 4:
        raise ClipzooError(f"this open_clip config is not a plain ViT CLIP the JAX engine implements "
                           f"(unsupported: {', '.join(odd) or 'ResNet tower or mlp_ratio'})")
    width = int(vision.get("width", 768))
    raw = {"image_model": {"depth": int(vision.get("layers", 12)), "embed_dim": width,
                           "n_heads": width // int(vision.get("head_width", 64)),
                           "patch_size": int(vision.get("patch_size", 16))},
           "text_model": {"depth": int(text.get("layers", 12)), "embed_dim": int(text.get("width", 512)),
                          "n_heads": int(text.get("heads", 8)), "vocab_size": int(text.get("vocab_size", 49408))},
           "proj_dim": int(model_cfg["embed_dim"]), "act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"}
    return get_config(raw)


# ------------------------------------------------------------------------------------------- files
def write_params(path: "str | os.PathLike", variables: Mapping[str, Any]) -> None:
    """Write ``{'params': …}`` as open_clip_jax's ``.pkl`` (a pickled dict of numpy arrays)."""
    params = variables.get("params", variables)
    tree = {"params": _numpy_tree(params)}
    with open(path, "wb") as fh:
        pickle.dump(tree, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _numpy_tree(tree: Mapping[str, Any]) -> dict:
    return {k: _numpy_tree(v) if isinstance(v, Mapping) else _np().asarray(_to_numpy(v)) for k, v in tree.items()}
