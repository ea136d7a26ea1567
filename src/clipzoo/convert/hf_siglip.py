"""open_clip SigLIP ⇄ transformers ``SiglipModel``.

open_clip's SigLIP: a timm ViT (no class token, no ln_pre, MAP attention-pool head, no projection) + CLIP's
text transformer without causal mask, pooled at the last token, projected with a bias — which is exactly
HF's SiglipModel. timm's blocks use exact GELU (HF's hub SigLIPs say gelu_pytorch_tanh); whatever the
source computes is what the converted config says, so outputs stay equal. As for CLIP, every tensor is
moved, never recomputed (``qkv`` split in three, the MAP head's ``q`` and ``kv`` stacked into ``in_proj``).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from ..constants import SIGLIP_MEAN, SIGLIP_STD
from ..errors import UnsupportedError
from .hf_common import (
    BLOCK,
    TEXT_DEFAULTS,
    TensorMap,
    check_options,
    check_shapes,
    clean,
    eps,
    hf_parts,
    image_processor,
    mlp_ratio,
    write_weights,
)
from .hf_siglip_timm import GELU_ACT, find_timm_siglip, timm_trunk, trunk_arch

SIGLIP_TEXT = {"no_causal_mask": True, "pool_type": "last", "proj_bias": True}
MODEL_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale",
              "init_logit_bias", "cast_dtype")
# HF text hidden_act -> open_clip text_cfg keys
TEXT_ACT_KWARGS = {"gelu": {}, "gelu_pytorch_tanh": {"act_kwargs": {"approximate": "tanh"}}, "quick_gelu": {}}
TRUNK = "visual.trunk."
# key tables, open_clip (under visual.trunk. / text.) ⇄ HF; each name gets .weight and .bias
VISION_BLOCK = (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))
MAP_HEAD = (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))
VISION_PARTS = ((TRUNK + "patch_embed.proj", "vision_model.embeddings.patch_embedding"),
                (TRUNK + "norm", "vision_model.post_layernorm"))
TEXT_HEAD = (("text.ln_final", "text_model.final_layer_norm"), ("text.text_projection", "text_model.head"))
TEXT_EMBED = (("text.token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
              ("text.positional_embedding", "text_model.embeddings.position_embedding.weight"))


def is_siglip_config(model_cfg: dict) -> bool:
    """An open_clip config whose image tower is a timm SigLIP ViT with a MAP head."""
    vision = model_cfg.get("vision_cfg", {})
    return "siglip" in str(vision.get("timm_model_name", "")) and vision.get("timm_pool") == "map"


# ------------------------------------------------------------------------------------------ open_clip → HF
def check_siglip_config(cfg: dict, source: str) -> str:
    """Refuse every part of an open_clip SigLIP config that HF's SiglipModel cannot hold; returns the text
    tower's HF ``hidden_act``."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "multimodal_cfg" in cfg:
        raise UnsupportedError(f"{source} is a CoCa model (multimodal_cfg); HF's SiglipModel has no decoder")
    if not vision.get("timm_model_name"):
        raise UnsupportedError(f"{source}: HF's SiglipModel needs open_clip's timm SigLIP image tower "
                               "(vision_cfg.timm_model_name); a CLIP ViT converts to CLIPModel instead")
    if vision.get("timm_pool") != "map" or vision.get("timm_proj") != "none":
        raise UnsupportedError(f"{source}: vision_cfg.timm_pool = {vision.get('timm_pool')!r}, timm_proj = "
                               f"{vision.get('timm_proj')!r}: HF's SiglipModel needs the MAP head ('map') and no "
                               "projection ('none')")
    if text.get("hf_model_name"):
        raise UnsupportedError(f"{source}: text_cfg.hf_model_name = {text['hf_model_name']!r} is a Hugging Face "
                               "text tower; HF's SiglipModel has SigLIP's own")
    for key in cfg:
        if key not in MODEL_KEYS:
            raise UnsupportedError(f"{source}: model config key {key!r} has no equivalent in HF's SiglipModel")
    for key, value in SIGLIP_TEXT.items():
        if text.get(key, TEXT_DEFAULTS[key]) != value:
            raise UnsupportedError(f"{source}: text_cfg.{key} = {text.get(key, TEXT_DEFAULTS[key])!r}; HF's "
                                   f"SiglipModel's text tower has {key} = {value!r}")
    act_kwargs = text.get("act_kwargs") or {}
    if set(act_kwargs) - {"approximate"}:
        raise UnsupportedError(f"{source}: text_cfg.act_kwargs = {act_kwargs!r} has no HF SigLIP equivalent")
    check_options(text, TEXT_DEFAULTS, "text_cfg", source, {"context_length", "vocab_size", "width", "heads",
                  "layers", "mlp_ratio", "act_kwargs", *SIGLIP_TEXT}, family="SiglipModel")
    t_act = "quick_gelu" if cfg.get("quick_gelu") else GELU_ACT.get(act_kwargs.get("approximate"))
    if t_act is None:
        raise UnsupportedError(f"{source}: text_cfg.act_kwargs = {act_kwargs!r} has no HF SigLIP equivalent")
    return t_act


def hf_siglip_config(cfg: dict, source: str):
    """The ``transformers.SiglipConfig`` of an open_clip SigLIP config (image tower read off timm)."""
    from transformers import SiglipConfig

    t_act = check_siglip_config(cfg, source)
    text = cfg.get("text_cfg", {})
    trunk_cfg = trunk_arch(timm_trunk(cfg["vision_cfg"]["timm_model_name"], source), source)
    embed_dim = int(cfg["embed_dim"])
    if embed_dim != trunk_cfg["hidden_size"]:
        raise UnsupportedError(f"{source}: embed_dim {embed_dim} is not the image tower width "
                               f"{trunk_cfg['hidden_size']}; HF's SiglipModel has no image projection")
    t_width = int(text.get("width", 512))
    text_config = {"vocab_size": int(text.get("vocab_size", 32000)), "hidden_size": t_width,
                   "intermediate_size": int(t_width * float(text.get("mlp_ratio", 4.0))),
                   "num_hidden_layers": int(text.get("layers", 12)), "num_attention_heads": int(text.get("heads", 8)),
                   "max_position_embeddings": int(text.get("context_length", 64)), "hidden_act": t_act,
                   "layer_norm_eps": eps(text), "projection_size": embed_dim,
                   "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}  # the tokenizer's: save_hf_siglip
    return SiglipConfig(text_config=text_config, vision_config=trunk_cfg)


def open_clip_to_hf_siglip(state_dict: dict, model_cfg: dict, *, source: str = "the checkpoint"):
    """open_clip SigLIP (timm ``vit_*_siglip_*`` image tower with MAP head + non-causal text tower pooled at the
    last token) → ``(transformers.SiglipConfig, HF state dict)`` for ``SiglipModel``."""
    sd = clean(state_dict)
    config = hf_siglip_config(copy.deepcopy(model_cfg), source)
    vc, tc = config.vision_config, config.text_config
    m = TensorMap(sd, source, ", which its config needs; is the config right?")
    w = vc.hidden_size
    m.take(TRUNK + "pos_embed", "vision_model.embeddings.position_embedding.weight", shape=(-1, w))
    for kind in ("weight", "bias"):
        for a, b in VISION_PARTS:
            m.take(f"{a}.{kind}", f"{b}.{kind}")
        for i in range(vc.num_hidden_layers):
            s, d = f"{TRUNK}blocks.{i}.", f"vision_model.encoder.layers.{i}."
            m.split(f"{s}attn.qkv.{kind}", [f"{d}self_attn.{x}_proj.{kind}" for x in "qkv"], w)
            for a, b in VISION_BLOCK:
                m.take(f"{s}{a}.{kind}", f"{d}{b}.{kind}")
        p, h = f"{TRUNK}attn_pool.", "vision_model.head."
        m.cat([f"{p}q.{kind}", f"{p}kv.{kind}"], f"{h}attention.in_proj_{kind}", lacks=", which its config needs")
        for a, b in MAP_HEAD:
            m.take(f"{p}{a}.{kind}", f"{h}{b}.{kind}")
        for a, b in TEXT_HEAD:
            m.take(f"{a}.{kind}", f"{b}.{kind}")
        for i in range(tc.num_hidden_layers):
            s, d = f"text.transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
            m.split(f"{s}attn.in_proj_{kind}", [f"{d}self_attn.{x}_proj.{kind}" for x in "qkv"], tc.hidden_size)
            for a, b in BLOCK.items():
                if a.endswith(kind):
                    m.take(s + a, d + b)
    m.take(TRUNK + "attn_pool.latent", "vision_model.head.probe")
    for a, b in TEXT_EMBED:
        m.take(a, b)
    m.take("logit_scale", "logit_scale", shape=(1,))
    m.take("logit_bias", "logit_bias", shape=(1,))
    out = m.refuse_leftovers("HF's SiglipModel", "; is the config right?")
    check_shapes(config, out, source)
    return config, out


# ------------------------------------------------------------------------------------------ HF → open_clip
def open_clip_siglip_config(sd: dict, config, timm_model_name: str | None, source: str) -> dict:
    """The open_clip model config of an HF ``SiglipConfig`` (its image tower: a timm SigLIP ViT)."""
    tc, vc = config.text_config, config.vision_config
    if not getattr(vc, "vision_use_head", True):
        raise UnsupportedError(f"{source}: vision_use_head = False (no MAP head); open_clip's SigLIP pools with it")
    name = timm_model_name or find_timm_siglip(vc, source)
    arch = trunk_arch(timm_trunk(name, source), source)
    if arch["hidden_act"] != vc.hidden_act or arch["num_hidden_layers"] != vc.num_hidden_layers \
            or arch["hidden_size"] != vc.hidden_size:
        raise UnsupportedError(f"{source}: timm {name!r} is not this image tower ({arch} vs the HF config)")
    act = TEXT_ACT_KWARGS.get(tc.hidden_act)
    if act is None:
        raise UnsupportedError(f"{source}: text hidden_act {tc.hidden_act!r} has no open_clip equivalent")
    embed_dim = int(vc.hidden_size)
    if tc.projection_size != embed_dim:
        raise UnsupportedError(f"{source}: text projection_size {tc.projection_size} is not the image width "
                               f"{embed_dim}")
    text = {"context_length": int(tc.max_position_embeddings), "vocab_size": int(tc.vocab_size),
            "width": int(tc.hidden_size), "heads": int(tc.num_attention_heads), "layers": int(tc.num_hidden_layers),
            **SIGLIP_TEXT, "norm_kwargs": {"eps": float(tc.layer_norm_eps)}, **act}
    if tc.intermediate_size != 4 * tc.hidden_size:
        text["mlp_ratio"] = mlp_ratio(tc.hidden_size, tc.intermediate_size)
    return {"embed_dim": embed_dim,
            "init_logit_bias": float(sd["logit_bias"].reshape(())) if "logit_bias" in sd else -10.0,
            "custom_text": True, "quick_gelu": tc.hidden_act == "quick_gelu",
            "vision_cfg": {"image_size": int(vc.image_size), "timm_model_name": name, "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": text}


def hf_siglip_to_open_clip(hf, hf_config=None, *, timm_model_name: str | None = None,
                           source: str = "the HF model") -> tuple[dict, dict]:
    """HF ``SiglipModel`` → ``(open_clip state dict, open_clip model config)`` for ``open_clip.CustomTextCLIP``
    (image tower: the timm SigLIP ViT of the same architecture, found by name or given)."""
    sd, config = hf_parts(hf, hf_config, "SiglipModel")
    cfg = open_clip_siglip_config(sd, config, timm_model_name, source)
    tc, vc = config.text_config, config.vision_config
    m = TensorMap(sd, source, "; is it a SiglipModel with its own config?")
    w = cfg["embed_dim"]
    m.take("vision_model.embeddings.position_embedding.weight", TRUNK + "pos_embed", shape=(1, -1, w))
    m.take("vision_model.head.probe", TRUNK + "attn_pool.latent")
    for kind in ("weight", "bias"):
        for a, b in VISION_PARTS:
            m.take(f"{b}.{kind}", f"{a}.{kind}")
        for i in range(vc.num_hidden_layers):
            s, d = f"vision_model.encoder.layers.{i}.", f"{TRUNK}blocks.{i}."
            m.cat([f"{s}self_attn.{x}_proj.{kind}" for x in "qkv"], f"{d}attn.qkv.{kind}", lacks="")
            for a, b in VISION_BLOCK:
                m.take(f"{s}{b}.{kind}", f"{d}{a}.{kind}")
        h, p = "vision_model.head.", f"{TRUNK}attn_pool."
        m.split(f"{h}attention.in_proj_{kind}", [f"{p}q.{kind}", f"{p}kv.{kind}"], [w, 2 * w], lacks="")
        for a, b in MAP_HEAD:
            m.take(f"{h}{b}.{kind}", f"{p}{a}.{kind}")
        for a, b in TEXT_HEAD:
            m.take(f"{b}.{kind}", f"{a}.{kind}")
        for i in range(tc.num_hidden_layers):
            s, d = f"text_model.encoder.layers.{i}.", f"text.transformer.resblocks.{i}."
            m.cat([f"{s}self_attn.{x}_proj.{kind}" for x in "qkv"], f"{d}attn.in_proj_{kind}", lacks="")
            for a, b in BLOCK.items():
                if a.endswith(kind):
                    m.take(s + b, d + a)
    for a, b in TEXT_EMBED:
        m.take(b, a)
    m.take("logit_scale", "logit_scale", shape=())
    m.take("logit_bias", "logit_bias", shape=())
    return m.refuse_leftovers("open_clip's SigLIP"), cfg


# ------------------------------------------------------------------------------------------ HF folder
def save_hf_siglip(folder: "str | os.PathLike", config, hf_state_dict: dict, tokenizer, image_size: int | None = None,
                   mean=SIGLIP_MEAN, std=SIGLIP_STD, *, interpolation: str = "bicubic",
                   resize_mode: str = "squash") -> Path:
    """A complete ``save_pretrained`` folder for ``SiglipModel``: config.json, model.safetensors, ``tokenizer``
    (SigLIP's sentencepiece tokenizers cannot be built offline: pass the model's own) and
    preprocessor_config.json (``SiglipImageProcessor``: squash to the image size, as open_clip's SigLIPs do)."""
    from transformers import SiglipImageProcessor

    if tokenizer is None:
        raise UnsupportedError("a SigLIP HF folder needs the model's tokenizer (tokenizer=…): SigLIP's sentencepiece "
                               "vocabulary cannot be rebuilt offline")
    if resize_mode != "squash":  # refused before anything is written
        raise UnsupportedError(f"resize_mode {resize_mode!r}: HF's SiglipImageProcessor only squashes to size")
    image_size = int(image_size or config.vision_config.image_size)
    processor = image_processor(SiglipImageProcessor, image_size, mean, std, interpolation, "squash")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key, None))
    config.save_pretrained(folder)
    write_weights(folder, hf_state_dict)
    tokenizer.model_max_length = int(config.text_config.max_position_embeddings)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
