"""Conversion both ways between an open_clip CLIP state dict (torch) and open_clip_jax's parameter tree.

Image towers: open_clip's ViT (OpenAI's layout included) <-> open_clip_jax's ViT; open_clip's timm ConvNeXt
trunk + head (``visual.trunk.*``, ``visual.head.proj`` or ``visual.head.mlp``) <-> its ConvNeXt; open_clip's
``ModifiedResNet`` <-> clipzoo's JAX ResNet (:mod:`clipzoo.models.jax_resnet`), whose BatchNorm running
averages are the ``batch_stats`` collection (``{'params': …, 'batch_stats': …}``; torch's
``num_batches_tracked`` counters are dropped going to JAX and written as 0 coming back).

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

from ..constants import OPENAI_MEAN, OPENAI_STD
from ..errors import CheckpointError, ClipzooError
from ..models.jax_config import (
    TIMM_CONVNEXTS,
    ConvNeXtConfig,
    JaxClipConfig,
    TowerConfig,
    check_shapes,
    get_config,
    get_path,
    write_config_file,
)
from ..models.jax_resnet_config import RESNET_REDUCTION, ResNetConfig, batchnorm_paths, conv_paths
from .form import OpenClipForm

DEFAULT_TEMPERATURE = 100.0  # open_clip_jax's softmax_temp
OPEN_CLIP_VIT_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
OPEN_CLIP_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
OPEN_CLIP_TIMM_KEYS = {"timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias",
                       "timm_drop", "timm_drop_path", "image_size"}


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


def _conv(w):
    return w.transpose(2, 3, 1, 0)  # torch (out, in, kh, kw) -> flax (kh, kw, in, out)


def _unconv(k):
    return k.transpose(3, 2, 0, 1)


def _vit_plan(cfg: JaxClipConfig) -> list[Entry]:
    v = "image_model"
    out: list[Entry] = [
        ("visual.conv1.weight", {f"{v}/PatchEmbed_0/Conv_0/kernel": _conv}, _unconv),
        ("visual.class_embedding", {f"{v}/ClsToken_0/cls_token": _same}, _same),
        ("visual.positional_embedding", {f"{v}/PosEmbed_0/pos_embed": _same}, _same),
        *_ln("visual.ln_pre", f"{v}/LayerNorm_0"),
        *_ln("visual.ln_post", f"{v}/LayerNorm_1"),
        ("visual.proj", {"Dense_0/kernel": _same}, _same),
    ]
    for i in range(cfg.image.depth):
        out += _block_plan(f"visual.transformer.resblocks.{i}.", f"{v}/Transformer_0/TransformerBlock_{i}", cfg.image)
    return out


def _convnext_plan(c: ConvNeXtConfig) -> list[Entry]:
    """timm's ConvNeXt as open_clip wraps it (``visual.trunk``; ``visual.head``) <-> open_clip_jax's ConvNeXt."""
    v, tk = "image_model", "visual.trunk."
    out: list[Entry] = [
        (f"{tk}stem.0.weight", {f"{v}/PatchEmbed_0/Conv_0/kernel": _conv}, _unconv),
        (f"{tk}stem.0.bias", {f"{v}/PatchEmbed_0/Conv_0/bias": _same}, _same),
        *_ln(f"{tk}stem.1", f"{v}/PatchEmbed_0/LayerNorm_0"),
    ]
    for i, depth in enumerate(c.depths):
        stage, key = f"{v}/ConvNeXtStage_{i}", f"{tk}stages.{i}."
        if i:
            out += [*_ln(f"{key}downsample.0", f"{stage}/PatchEmbed_0/LayerNorm_0"),
                    (f"{key}downsample.1.weight", {f"{stage}/PatchEmbed_0/Conv_0/kernel": _conv}, _unconv),
                    (f"{key}downsample.1.bias", {f"{stage}/PatchEmbed_0/Conv_0/bias": _same}, _same)]
        for j in range(depth):
            b, p = f"{key}blocks.{j}.", f"{stage}/ConvNeXtBlock_{j}"
            out += [(f"{b}conv_dw.weight", {f"{p}/Conv_0/kernel": _conv}, _unconv),
                    (f"{b}conv_dw.bias", {f"{p}/Conv_0/bias": _same}, _same),
                    *_ln(f"{b}norm", f"{p}/LayerNorm_0"),
                    *_dense(f"{b}mlp.fc1", f"{p}/MLP_0/Dense_0"),
                    *_dense(f"{b}mlp.fc2", f"{p}/MLP_0/Dense_1"),
                    (f"{b}gamma", {f"{p}/lambda": _same}, _same)]
    out += _ln(f"{tk}head.norm", f"{v}/LayerNorm_0")
    if c.head_hidden_dim:  # open_clip's "mlp" head: fc1 (bias) + GELU is the tower's Dense_0, fc2 the projection
        return out + [*_dense("visual.head.mlp.fc1", f"{v}/Dense_0"),
                      ("visual.head.mlp.fc2.weight", {"Dense_0/kernel": lambda t: t.T}, lambda k: k.T)]
    return out + [("visual.head.proj.weight", {"Dense_0/kernel": lambda t: t.T}, lambda k: k.T)]


STATS = "batch_stats:"  # a plan path in the batch_stats collection, not in params


def _torch_key(path: str) -> str:
    """``image_model/layer1_0/downsample_bn`` -> ``visual.layer1.0.downsample.1`` (open_clip's names)."""
    parts = path.replace("image_model/", "visual/").replace("downsample_conv", "downsample/0") \
        .replace("downsample_bn", "downsample/1").split("/")
    return ".".join(p.replace("_", ".") if p.startswith("layer") else p for p in parts)


def _resnet_plan(c: ResNetConfig) -> list[Entry]:
    """open_clip's ModifiedResNet (``visual.*``) <-> the JAX ResNet: convs transposed, BatchNorm scale/bias
    in ``params`` and running mean/var in ``batch_stats``, the attention pool's linears transposed."""
    out: list[Entry] = [(f"{_torch_key(p)}.weight", {f"{p}/kernel": _conv}, _unconv) for p in conv_paths(c)]
    for p in batchnorm_paths(c):
        key = _torch_key(p)
        out += [(f"{key}.weight", {f"{p}/scale": _same}, _same), (f"{key}.bias", {f"{p}/bias": _same}, _same),
                (f"{key}.running_mean", {f"{STATS}{p}/mean": _same}, _same),
                (f"{key}.running_var", {f"{STATS}{p}/var": _same}, _same)]
    pool = "image_model/attnpool"
    out.append(("visual.attnpool.positional_embedding", {f"{pool}/positional_embedding": _same}, _same))
    for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
        out += _dense(f"visual.attnpool.{name}", f"{pool}/{name}")
    return out


def plan(model: "str | dict | JaxClipConfig") -> list[Entry]:
    """The conversion table of config ``model`` (``logit_scale`` / ``temp`` handled apart)."""
    cfg = get_config(model)
    t = "text_model"
    out = _convnext_plan(cfg.image) if isinstance(cfg.image, ConvNeXtConfig) else \
        _resnet_plan(cfg.image) if isinstance(cfg.image, ResNetConfig) else _vit_plan(cfg)
    out += [
        ("token_embedding.weight", {f"{t}/Embed_0/embedding": _same}, _same),
        ("positional_embedding", {f"{t}/PosEmbed_0/pos_embed": _same}, _same),
        *_ln("ln_final", f"{t}/LayerNorm_0"),
        ("text_projection", {"Dense_1/kernel": _same}, _same),
    ]
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
    """An open_clip ViT / ConvNeXt CLIP state dict -> ``{'params': …}`` (numpy arrays) in open_clip_jax's tree."""
    cfg = get_config(model)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    sd.pop("attn_mask", None)
    sd = {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}
    entries = plan(cfg)
    wanted = {e[0] for e in entries} | {"logit_scale"}
    missing, extra = sorted(wanted - set(sd)), sorted(set(sd) - wanted)
    if missing or extra:
        what = (f"missing {', '.join(missing[:4])}" if missing else "") + \
               ("; " if missing and extra else "") + (f"unexpected {', '.join(extra[:4])}" if extra else "")
        kind = "ConvNeXt" if cfg.is_convnext else "ResNet" if cfg.is_resnet else "ViT"
        raise CheckpointError(f"this state dict is not an open_clip {kind} CLIP of config {cfg.name!r} ({what}); "
                              "the JAX engine converts plain open_clip ViT CLIPs (class token, ln_pre, no "
                              "attention pooling), timm ConvNeXt CLIPs and ModifiedResNet CLIPs — name the "
                              "matching config with model=")
    params: dict = {}
    stats: dict = {}
    for key, targets, _ in entries:
        array = _to_numpy(sd[key])
        for path, fn in targets.items():
            tree = stats if path.startswith(STATS) else params
            _put(tree, path.removeprefix(STATS), _np().ascontiguousarray(fn(array)))
    params["temp"] = _to_numpy(sd["logit_scale"]).reshape(())
    check_shapes(params, cfg)
    return {"params": params, "batch_stats": stats} if stats else {"params": params}


def jax_to_open_clip(variables: Mapping[str, Any], model: "str | dict | JaxClipConfig") -> dict:
    """``{'params': …}`` in open_clip_jax's tree -> an open_clip state dict (torch tensors, contiguous)."""
    import torch

    cfg = get_config(model)
    params = variables.get("params", variables) if isinstance(variables, Mapping) else None
    if not isinstance(params, Mapping):
        raise CheckpointError("JAX parameters must be a mapping {'params': {...}}")
    check_shapes(params, cfg)
    stats = variables.get("batch_stats") if cfg.is_resnet else {}
    if not isinstance(stats, Mapping):
        raise CheckpointError(f"JAX parameters of the ResNet config {cfg.name!r} need their BatchNorm "
                              "running averages: {'params': {...}, 'batch_stats': {...}}")
    out = {}
    for key, targets, back in plan(cfg):
        arrays = [_to_numpy(get_path(stats, path.removeprefix(STATS)) if path.startswith(STATS)
                            else get_path(params, path)) for path in targets]
        out[key] = torch.from_numpy(_np().array(back(*arrays), order="C"))  # a writable copy
        if key.endswith(".running_var"):
            out[key[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
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
    text = {"context_length": context_length, "vocab_size": cfg.vocab_size, "width": t.embed_dim,
            "heads": t.n_heads, "layers": t.depth}
    if isinstance(i, ConvNeXtConfig):
        return {"embed_dim": cfg.proj_dim, "quick_gelu": cfg.act == "quick_gelu",
                "vision_cfg": _timm_vision_cfg(cfg, i, image_size), "text_cfg": text}
    if isinstance(i, ResNetConfig):
        return {"embed_dim": cfg.proj_dim, "quick_gelu": cfg.act == "quick_gelu", "text_cfg": text,
                "vision_cfg": {"image_size": image_size, "layers": list(i.layers), "width": i.width,
                               "head_width": i.embed_dim // i.heads}}
    return {"embed_dim": cfg.proj_dim, "quick_gelu": cfg.act == "quick_gelu",
            "vision_cfg": {"image_size": image_size, "layers": i.depth, "width": i.embed_dim,
                           "patch_size": i.patch_size, "head_width": i.head_dim},
            "text_cfg": text}


def _timm_vision_cfg(cfg: JaxClipConfig, c: ConvNeXtConfig, image_size: int) -> dict:
    if not c.timm_name:
        raise ClipzooError(f"JAX config {cfg.name!r}: no timm ConvNeXt has depths {list(c.depths)} and out_dims "
                           f"{list(c.out_dims)}; name the timm model that builds it as image_model.timm_model_name")
    if c.head_hidden_dim and c.head_hidden_dim != 2 * cfg.proj_dim:
        raise ClipzooError(f"JAX config {cfg.name!r}: open_clip's mlp head is 2 x proj_dim = {2 * cfg.proj_dim} "
                           f"wide, not head_hidden_dim {c.head_hidden_dim}")
    return {"timm_model_name": c.timm_name, "timm_model_pretrained": False, "timm_pool": "",
            "timm_proj": "mlp" if c.head_hidden_dim else "linear", "timm_drop": 0.0, "timm_drop_path": 0.1,
            "image_size": image_size}


def config_from_open_clip(model_cfg: Mapping[str, Any], state_dict: "Mapping[str, Any] | None" = None
                          ) -> JaxClipConfig:
    """The JAX config of an open_clip ViT or timm-ConvNeXt model config (its ``vision_cfg`` / ``text_cfg``);
    a ConvNeXt none of whose shapes timm names (TIMM_CONVNEXTS) reads its stages from ``state_dict``."""
    vision, text = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    odd = {f"text_cfg.{k}" for k in set(text) - OPEN_CLIP_TEXT_KEYS}
    if "timm_model_name" in vision:
        image = _convnext_image(vision, int(model_cfg["embed_dim"]), state_dict, odd)
    elif isinstance(vision.get("layers"), (list, tuple)):  # open_clip's ModifiedResNet
        odd |= set(vision) - {"image_size", "layers", "width", "head_width"}
        width = int(vision.get("width", 64))
        image = {"layers": list(vision["layers"]), "width": width,
                 "heads": width * RESNET_REDUCTION // int(vision.get("head_width", 64))}
    else:
        odd |= set(vision) - OPEN_CLIP_VIT_KEYS
        if odd or isinstance(vision.get("layers"), (list, tuple)) or float(vision.get("mlp_ratio", 4)) != 4:
            raise ClipzooError(f"this open_clip config is not a plain ViT CLIP the JAX engine implements "
                               f"(unsupported: {', '.join(sorted(odd)) or 'ResNet tower or mlp_ratio'})")
        width = int(vision.get("width", 768))
        image = {"depth": int(vision.get("layers", 12)), "embed_dim": width,
                 "n_heads": width // int(vision.get("head_width", 64)), "patch_size": int(vision.get("patch_size", 16))}
    if odd or float(text.get("mlp_ratio", 4)) != 4:
        raise ClipzooError(f"this open_clip config has a text tower the JAX engine does not implement "
                           f"(unsupported: {', '.join(sorted(odd)) or 'mlp_ratio'})")
    raw = {"image_model": image,
           "text_model": {"depth": int(text.get("layers", 12)), "embed_dim": int(text.get("width", 512)),
                          "n_heads": int(text.get("heads", 8)), "vocab_size": int(text.get("vocab_size", 49408))},
           "proj_dim": int(model_cfg["embed_dim"]), "act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"}
    return get_config(raw)


def _convnext_image(vision: dict, embed_dim: int, state_dict, odd: set) -> dict:
    name = str(vision["timm_model_name"])
    problems = sorted(set(vision) - OPEN_CLIP_TIMM_KEYS)
    if vision.get("timm_pool", "avg") not in ("", "avg"):
        problems.append(f"timm_pool {vision['timm_pool']!r}")
    if vision.get("timm_proj", "linear") not in ("linear", "mlp") or vision.get("timm_proj_bias"):
        problems.append(f"timm_proj {vision.get('timm_proj')!r} (bias {bool(vision.get('timm_proj_bias'))})")
    shapes = TIMM_CONVNEXTS.get(name) or (_convnext_stages(state_dict) if state_dict is not None else None)
    if problems or odd or shapes is None:
        raise ClipzooError(f"this open_clip timm config is not a ConvNeXt CLIP the JAX engine implements "
                           f"(unsupported: {', '.join(problems + sorted(odd)) or f'timm model {name!r}'})")
    image: dict[str, Any] = {"depths": list(shapes[0]), "out_dims": list(shapes[1])}
    if vision.get("timm_proj", "linear") == "mlp":
        image["head_hidden_dim"] = 2 * embed_dim
    if name not in TIMM_CONVNEXTS:
        image["timm_model_name"] = name
    return image


def _convnext_stages(state_dict: Mapping[str, Any]) -> "tuple[tuple[int, ...], tuple[int, ...]] | None":
    """``(depths, out_dims)`` of the timm ConvNeXt trunk in an open_clip state dict (None if there is none)."""
    depths: dict[int, int] = {}
    dims: dict[int, int] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[:3] == ["visual", "trunk", "stages"] and len(parts) == 8 and parts[4] == "blocks" \
                and parts[6:] == ["conv_dw", "weight"]:
            i, j = int(parts[3]), int(parts[5])
            depths[i] = max(depths.get(i, 0), j + 1)
            dims[i] = int(value.shape[0])
    if not depths or sorted(depths) != list(range(len(depths))):
        return None
    return tuple(depths[i] for i in sorted(depths)), tuple(dims[i] for i in sorted(dims))


# ------------------------------------------------------------------------------------------- files
def write_params(path: "str | os.PathLike", variables: Mapping[str, Any]) -> None:
    """Write ``{'params': …}`` as open_clip_jax's ``.pkl`` (a pickled dict of numpy arrays)."""
    params = variables.get("params", variables)
    tree = {"params": _numpy_tree(params)}
    if isinstance(variables.get("batch_stats"), Mapping):  # a ResNet's BatchNorm running averages
        tree["batch_stats"] = _numpy_tree(variables["batch_stats"])
    with open(path, "wb") as fh:
        pickle.dump(tree, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _numpy_tree(tree: Mapping[str, Any]) -> dict:
    return {k: _numpy_tree(v) if isinstance(v, Mapping) else _np().asarray(_to_numpy(v)) for k, v in tree.items()}


def write_params_with_config(path: "str | os.PathLike", variables: Mapping[str, Any], cfg: JaxClipConfig,
                             image_size: int, context_length: int) -> None:
    """The ``.pkl`` and, next to it, the config file that lets ``clipzoo.load(path)`` rebuild the model."""
    write_params(path, variables)
    write_config_file(path, cfg, image_size, context_length)


# ------------------------------------------------------------------------------------------- forms
def jax_form(form: OpenClipForm) -> tuple[JaxClipConfig, dict]:
    """``(config, {'params': …})`` of a model in its open_clip form."""
    cfg = config_from_open_clip(form.model_cfg, form.state_dict)
    return cfg, open_clip_to_jax(form.state_dict, cfg)


def open_clip_form_of_jax(comparator) -> OpenClipForm:
    """The open_clip form of a loaded JAX comparator (:mod:`clipzoo.backends.jax`): its parameters moved to
    open_clip's keys, the open_clip config of its JAX config, open_clip_jax's eval preprocessing."""
    towers = comparator.model
    params = _numpy_tree(towers.variables["params"])
    params["temp"] = _np().asarray(math.log(float(comparator.logit_params()[0])), dtype=_np().float32)
    stats = towers.variables.get("batch_stats")  # a ResNet's BatchNorm running averages
    state_dict = jax_to_open_clip({"params": params, **({"batch_stats": _numpy_tree(stats)} if stats else {})},
                                  towers.cfg)
    model_cfg = open_clip_config(towers.cfg, comparator.image_size, comparator.context_length)
    preprocess = {"size": comparator.image_size, "mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    return OpenClipForm(state_dict, model_cfg, preprocess, comparator.card.alias)
