"""open_clip's SigLIP image towers are timm ViTs: read the HF ``SiglipVisionConfig`` off a timm model (built
on the meta device: no memory, no download), refusing every part HF's ``SiglipVisionTransformer`` lacks, and
find the timm model whose architecture equals an HF config.
"""
from __future__ import annotations

from ..errors import UnsupportedError

GELU_ACT = {None: "gelu", "none": "gelu", "tanh": "gelu_pytorch_tanh"}


def timm_trunk(name: str, source: str):
    """The timm ViT on the meta device (no memory, no download) to read what its weights do not say."""
    try:
        import timm
    except ImportError:
        raise UnsupportedError(f"{source}: reading the timm image tower {name!r} needs timm; "
                               "pip install timm") from None
    import torch

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0, global_pool="map")
    except Exception as exc:  # noqa: BLE001 - unknown names, incompatible kwargs
        raise UnsupportedError(f"{source}: timm cannot build {name!r} ({exc}); install a timm that has it") from None


def act_name(act, where: str, source: str) -> str:
    """HF's ``hidden_act`` for a torch / timm GELU module."""
    kind = type(act).__name__  # torch's nn.GELU, or timm's GELU / GELUTanh wrappers of F.gelu
    if kind == "GELU" and getattr(act, "approximate", "none") in GELU_ACT:
        return GELU_ACT[getattr(act, "approximate", "none")]
    if kind == "GELUTanh":
        return "gelu_pytorch_tanh"
    raise UnsupportedError(f"{source}: {where} activation {act!r} has no HF SigLIP hidden_act equivalent")


def _refuser(source: str):
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise UnsupportedError(f"{source}: the timm image tower has {what}, which HF's SiglipModel has no "
                                   "place for; convert it to open_clip, safetensors or onnx instead")

    return need


def _check_trunk_parts(trunk, need) -> None:
    """The parts outside the blocks: no class / register tokens, a biased conv patch embedding, SigLIP's head."""
    from torch import nn

    name = type(trunk).__name__
    need(name == "VisionTransformer", f"class {name} (not a plain timm VisionTransformer)")
    need(getattr(trunk, "cls_token", None) is None, "a class token")
    need(getattr(trunk, "reg_token", None) is None, "register tokens")
    need(not getattr(trunk, "dynamic_img_size", False), "dynamic image size")
    need(isinstance(trunk.norm_pre, nn.Identity), "a pre-norm (norm_pre)")
    need(isinstance(trunk.fc_norm, nn.Identity), "an fc_norm after pooling")
    need(isinstance(trunk.patch_embed.norm, nn.Identity) and trunk.patch_embed.proj.bias is not None,
         "a patch embedding other than a biased convolution")
    need(getattr(trunk, "attn_pool", None) is not None and trunk.global_pool == "map", "no MAP attention-pool head")
    pool = trunk.attn_pool
    need(pool.latent_len == 1 and pool.pos_embed is None and isinstance(pool.q_norm, nn.Identity)
         and isinstance(pool.q, nn.Linear) and pool.mlp is not None, "a MAP head other than SigLIP's")


def trunk_arch(trunk, source: str) -> dict:
    """The HF SiglipVisionConfig of a timm ViT, refusing every part SiglipVisionTransformer lacks."""
    from torch import nn

    need = _refuser(source)
    _check_trunk_parts(trunk, need)
    pool = trunk.attn_pool
    blocks = list(trunk.blocks)
    b0 = blocks[0]
    width = trunk.embed_dim
    for b in blocks:
        need(type(b).__name__ == "Block", f"blocks of class {type(b).__name__}")
        need(isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity), "layer scale")
        need(isinstance(b.attn.q_norm, nn.Identity) and isinstance(getattr(b.attn, "norm", nn.Identity()), nn.Identity),
             "attention q/k norms")
        need(b.attn.qkv.bias is not None, "attention without qkv bias")
    act = act_name(b0.mlp.act, "block MLP", source)
    need(act_name(pool.mlp.act, "MAP head MLP", source) == act, "a MAP-head activation unlike its blocks'")
    eps = {b.norm1.eps for b in blocks} | {b.norm2.eps for b in blocks} | {trunk.norm.eps, pool.norm.eps}
    need(len(eps) == 1, f"LayerNorms with different eps {sorted(eps)}")
    need(pool.num_heads == b0.attn.num_heads and pool.mlp.fc1.out_features == b0.mlp.fc1.out_features,
         "a MAP head with other heads / MLP width than its blocks")
    patch = trunk.patch_embed.proj.kernel_size
    grid = trunk.patch_embed.grid_size
    need(patch[0] == patch[1] and grid[0] == grid[1], "non-square patches or grid")
    need(trunk.pos_embed.shape[1] == grid[0] * grid[1], "position embeddings for other than the patches")
    return {"hidden_size": width, "intermediate_size": b0.mlp.fc1.out_features, "num_hidden_layers": len(blocks),
            "num_attention_heads": b0.attn.num_heads, "image_size": patch[0] * grid[0], "patch_size": patch[0],
            "hidden_act": act, "layer_norm_eps": eps.pop(), "num_channels": trunk.patch_embed.proj.in_channels}


def find_timm_siglip(vc, source: str) -> str:
    """The timm SigLIP ViT whose architecture equals an HF SiglipVisionConfig (candidates by name first)."""
    import timm

    want = {"hidden_size": vc.hidden_size, "intermediate_size": vc.intermediate_size,
            "num_hidden_layers": vc.num_hidden_layers, "num_attention_heads": vc.num_attention_heads,
            "image_size": vc.image_size, "patch_size": vc.patch_size, "hidden_act": vc.hidden_act,
            "layer_norm_eps": vc.layer_norm_eps, "num_channels": vc.num_channels}
    names = [n for n in timm.list_models("*siglip*") if f"patch{vc.patch_size}_" in n
             and n.endswith(f"_{vc.image_size}") and "gap" not in n]
    for name in names:
        try:
            if trunk_arch(timm_trunk(name, source), source) == want:
                return name
        except UnsupportedError:
            continue
    raise UnsupportedError(f"{source}: no timm SigLIP ViT has this image tower ({vc.num_hidden_layers} layers, width "
                           f"{vc.hidden_size}, patch {vc.patch_size}, image {vc.image_size}, {vc.hidden_act}); "
                           "open_clip builds its SigLIP image towers from timm, so pass timm_model_name= if one fits")
