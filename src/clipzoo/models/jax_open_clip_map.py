"""The parameter map between an open_clip CLIP state dict (torch) and open_clip_jax's parameter tree, both ways.

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
to ``log(DEFAULT_TEMPERATURE)``, the temperature open_clip_jax's ``CLIPInference`` applies. Neither direction
needs JAX. It lives in ``models`` so that the conversion (:mod:`clipzoo.convert.jax`) and the JAX trainer's
``init: torch`` (:mod:`clipzoo.train.jax.state`) share it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import CheckpointError, ClipzooError
from .jax_config import ConvNeXtConfig, JaxClipConfig, TowerConfig, check_shapes, get_config, get_path
from .jax_resnet_config import ResNetConfig, batchnorm_paths, conv_paths

__all__ = ["DEFAULT_TEMPERATURE", "Entry", "plan", "open_clip_to_jax", "jax_to_open_clip", "open_clip_config",
           "to_numpy", "put_path"]

DEFAULT_TEMPERATURE = 100.0  # open_clip_jax's softmax_temp


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


def _transformer_plan(prefix: str, path: str, tower: TowerConfig) -> list[Entry]:
    """Every residual block of a tower: open_clip's ``{prefix}transformer.resblocks.{i}.`` <->
    ``{path}/TransformerBlock_{i}``."""
    return [entry for i in range(tower.depth)
            for entry in _block_plan(f"{prefix}transformer.resblocks.{i}.", f"{path}/TransformerBlock_{i}", tower)]


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
    return out + _transformer_plan("visual.", f"{v}/Transformer_0", cfg.image)


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
    return out + _transformer_plan("", f"{t}/Transformer_0", cfg.text)


# ------------------------------------------------------------------------------------------- directions
def to_numpy(value) -> Any:
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
        array = to_numpy(sd[key])
        for path, fn in targets.items():
            tree = stats if path.startswith(STATS) else params
            put_path(tree, path.removeprefix(STATS), _np().ascontiguousarray(fn(array)))
    params["temp"] = to_numpy(sd["logit_scale"]).reshape(())
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
        arrays = [to_numpy(get_path(stats, path.removeprefix(STATS)) if path.startswith(STATS)
                            else get_path(params, path)) for path in targets]
        out[key] = torch.from_numpy(_np().array(back(*arrays), order="C"))  # a writable copy
        if key.endswith(".running_var"):
            out[key[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    temp = params.get("temp")
    scale = to_numpy(temp).reshape(()) if temp is not None else _np().asarray(math.log(DEFAULT_TEMPERATURE),
                                                                                dtype=_np().float32)
    out["logit_scale"] = torch.from_numpy(_np().array(scale))
    return out


def put_path(tree: dict, path: str, value) -> None:
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
