"""open_clip / OpenAI CLIP ViT ⇄ transformers ``CLIPModel``.

Every tensor is moved, never recomputed: ``in_proj`` (q|k|v stacked) is split in three, the two
projections are transposed, and nothing is cast (an fp16 OpenAI state dict gives fp16 HF weights; ``clipzoo
convert`` loads its source in fp32 first, so what it writes is fp32), so open_clip → HF → open_clip gives back
bit-identical tensors. What HF's class cannot express
(ModifiedResNet image towers, attentional pooling, layer scale, CoCa, …) is refused with
:class:`~clipzoo.errors.UnsupportedError` naming the part, rather than converted approximately.

The mapping (open_clip → HF ``CLIPModel``)::

    visual.class_embedding                    vision_model.embeddings.class_embedding
    visual.positional_embedding               vision_model.embeddings.position_embedding.weight
    visual.conv1.weight                       vision_model.embeddings.patch_embedding.weight
    visual.ln_pre / visual.ln_post            vision_model.pre_layrnorm / vision_model.post_layernorm
    visual.transformer.resblocks.N.*          vision_model.encoder.layers.N.*  (see hf_common.BLOCK)
    visual.proj  (width × embed)              visual_projection.weight  (embed × width, transposed)
    token_embedding / positional_embedding    text_model.embeddings.token_embedding / position_embedding
    transformer.resblocks.N.*                 text_model.encoder.layers.N.*
    ln_final                                  text_model.final_layer_norm
    text_projection  (width × embed)          text_projection.weight  (transposed)
    logit_scale                               logit_scale
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

from ..constants import OPENAI_MEAN, OPENAI_STD, OPENAI_VOCAB_SIZE
from ..errors import CheckpointError, UnsupportedError
from .hf_common import (
    BLOCK,
    LN_EPS,
    TEXT_DEFAULTS,
    TensorMap,
    check_options,
    check_shapes,
    clean,
    eps,
    hf_parts,
    image_processor,
    mlp_ratio,
    square,
    write_weights,
)
from .tokenizer_files import clip_tokenizer

RESNET_HINT = ("HF's CLIPModel has only ViT image towers, so a ModifiedResNet (RN50, RN101, RN50x4, …) has no "
               "HF form; convert it to safetensors or onnx instead (clipzoo convert SRC DST --to safetensors)")
VISION_DEFAULTS = {"head_width": 64, "mlp_ratio": 4.0, "ls_init_value": None, "attentional_pool": False,
                   "no_ln_pre": False, "pos_embed_type": "learnable", "final_ln_after_pool": False,
                   "pool_type": "tok", "act_kwargs": None, "norm_kwargs": None, "block_type": None,
                   "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                   "scale_attn": False, "scale_fc": False, "attn_pooler_queries": 256, "attn_pooler_heads": 8}
MODEL_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale",
              "nonscalar_logit_scale", "cast_dtype", "init_logit_bias")


def _norm(prefix_oc: str, prefix_hf: str) -> tuple[tuple[str, str, bool], ...]:
    return tuple((f"{prefix_oc}.{k}", f"{prefix_hf}.{k}", False) for k in ("weight", "bias"))


# per tower: (open_clip key, HF key, transposed) before the residual blocks, the blocks' key prefixes, and
# the keys after them — in the order the tensors are moved
LAYOUT = (
    ("vision",
     (("visual.class_embedding", "vision_model.embeddings.class_embedding", False),
      ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", False),
      ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", False),
      *_norm("visual.ln_pre", "vision_model.pre_layrnorm")),
     ("visual.transformer.resblocks", "vision_model.encoder.layers"),
     (*_norm("visual.ln_post", "vision_model.post_layernorm"),
      ("visual.proj", "visual_projection.weight", True))),
    ("text",
     (("token_embedding.weight", "text_model.embeddings.token_embedding.weight", False),
      ("positional_embedding", "text_model.embeddings.position_embedding.weight", False)),
     ("transformer.resblocks", "text_model.encoder.layers"),
     (*_norm("ln_final", "text_model.final_layer_norm"),
      ("text_projection", "text_projection.weight", True))),
)


# ------------------------------------------------------------------------------------------ open_clip config
def infer_open_clip_config(state_dict: dict, quick_gelu: bool = True) -> dict:
    """The open_clip model config of a CLIP ViT state dict (OpenAI or open_clip layout), from tensor shapes
    as OpenAI's ``clip.build_model`` does: widths from shapes, layers by counting, heads = width // 64.

    The activation is not in the weights: ``quick_gelu=True`` (OpenAI's models) unless told otherwise.
    """
    sd = clean(state_dict)
    refuse_resnet(sd, "the state dict")
    try:
        vw = sd["visual.conv1.weight"]
        width, patch = vw.shape[0], vw.shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        v_layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        t_width = sd["ln_final.weight"].shape[0]
        t_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        t_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        cfg = {
            "embed_dim": int(sd["text_projection"].shape[1]),
            "quick_gelu": bool(quick_gelu),
            "vision_cfg": {"image_size": int(patch * grid), "layers": v_layers, "width": int(width),
                           "patch_size": int(patch)},
            "text_cfg": {"context_length": int(sd["positional_embedding"].shape[0]),
                         "vocab_size": int(sd["token_embedding.weight"].shape[0]), "width": int(t_width),
                         "heads": max(1, int(t_width) // 64), "layers": t_layers},
        }
    except KeyError as exc:
        raise CheckpointError(f"the state dict is not an OpenAI / open_clip CLIP ViT (no {exc.args[0]!r}); pass "
                              "its open_clip model config (model_cfg=…) or check the file") from None
    if width % 64:
        cfg["vision_cfg"]["head_width"] = int(width)  # OpenAI's rule needs width // 64 heads; keep one head
    if v_mlp != 4 * width:
        cfg["vision_cfg"]["mlp_ratio"] = mlp_ratio(width, v_mlp)
    if t_mlp != 4 * t_width:
        cfg["text_cfg"]["mlp_ratio"] = mlp_ratio(t_width, t_mlp)
    return cfg


def refuse_resnet(sd: dict, source: str) -> None:
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in sd):
        raise UnsupportedError(f"{source} has a ModifiedResNet image tower (visual.layer1…); {RESNET_HINT}")


def check_clip_config(cfg: dict, source: str) -> None:
    """Refuse every part of an open_clip config that HF's CLIPModel cannot hold."""
    if "multimodal_cfg" in cfg:
        raise UnsupportedError(f"{source} is a CoCa model (multimodal_cfg: a captioning decoder); HF's CLIPModel has "
                               "no decoder. Convert it to open_clip, safetensors or onnx instead")
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        raise UnsupportedError(f"{source}: vision_cfg.layers = {vision['layers']} is a ModifiedResNet; {RESNET_HINT}")
    if vision.get("timm_model_name"):
        raise UnsupportedError(f"{source}: vision_cfg.timm_model_name = {vision['timm_model_name']!r} is a timm "
                               "image tower, which HF's CLIPModel cannot hold (SigLIP's timm ViT converts to "
                               "SiglipModel with open_clip_to_hf_siglip)")
    if text.get("hf_model_name"):
        raise UnsupportedError(f"{source}: text_cfg.hf_model_name = {text['hf_model_name']!r} is a Hugging Face "
                               "text tower, not CLIP's causal transformer; HF's CLIPModel cannot hold it. "
                               "Convert it to safetensors or onnx instead")
    for key in cfg:
        if key not in MODEL_KEYS:
            raise UnsupportedError(f"{source}: model config key {key!r} has no equivalent in HF's CLIPModel")
    if cfg.get("init_logit_bias") is not None:
        raise UnsupportedError(f"{source} has a sigmoid-loss logit bias (init_logit_bias) that HF's CLIPModel has no "
                               "parameter for; convert it to open_clip, safetensors or onnx instead")
    if cfg.get("nonscalar_logit_scale"):
        raise UnsupportedError(f"{source}: nonscalar_logit_scale has no equivalent in HF's CLIPModel")
    check_options(vision, VISION_DEFAULTS, "vision_cfg", source,
                  {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"})
    check_options(text, TEXT_DEFAULTS, "text_cfg", source,
                  {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pool_type", "eos_id"})
    if text.get("pool_type", "argmax") not in ("argmax", "eos"):
        raise UnsupportedError(f"{source}: text_cfg.pool_type = {text['pool_type']!r} has no equivalent in HF's "
                               "CLIPModel (it pools at the end token: 'argmax' or 'eos')")


def standard_layout(sd: dict) -> dict:
    """CustomTextCLIP with CLIP's own text transformer keeps it under ``text.``: use CLIP's key names."""
    if not any(k.startswith("text.") for k in sd):
        return sd
    return {(k[len("text."):] if k.startswith("text.") else k): v for k, v in sd.items()}


def _text_eos(text: dict, vocab: int, source: str) -> int:
    """HF's ``eos_token_id`` that pools where open_clip's text tower does."""
    if text.get("pool_type", "argmax") == "eos":
        eos = int(text.get("eos_id", 2))
        if eos == 2 and vocab - 1 != 2:
            raise UnsupportedError(f"{source}: text_cfg.eos_id = 2 reads as HF CLIP's legacy argmax pooling; "
                                   "HF's CLIPModel cannot pool at the first id 2")
        return eos
    # argmax: HF's "first eos" equals it when eos is the largest id (OpenAI's tokenizer); else legacy 2
    return vocab - 1 if vocab == OPENAI_VOCAB_SIZE else 2


def hf_clip_config(cfg: dict, sd: dict, source: str):
    """The ``transformers.CLIPConfig`` of a checked open_clip CLIP config (logit scale from ``sd``)."""
    from transformers import CLIPConfig

    vision, text = cfg["vision_cfg"], cfg.get("text_cfg", {})
    act = "quick_gelu" if cfg.get("quick_gelu", False) else "gelu"
    v_width = int(vision.get("width", 768))
    head_width = int(vision.get("head_width", 64))
    if v_width % head_width:
        raise UnsupportedError(f"{source}: vision width {v_width} is not a multiple of head_width {head_width}")
    t_width = int(text.get("width", 512))
    vocab = int(text.get("vocab_size", OPENAI_VOCAB_SIZE))
    embed_dim = int(cfg["embed_dim"])
    text_config = {
        "vocab_size": vocab, "hidden_size": t_width, "num_attention_heads": int(text.get("heads", 8)),
        "num_hidden_layers": int(text.get("layers", 12)),
        "intermediate_size": int(t_width * float(text.get("mlp_ratio", 4.0))),
        "max_position_embeddings": int(text.get("context_length", 77)), "hidden_act": act,
        "layer_norm_eps": eps(text), "projection_dim": embed_dim, "eos_token_id": _text_eos(text, vocab, source),
        "bos_token_id": vocab - 2 if vocab == OPENAI_VOCAB_SIZE else None,
        "pad_token_id": vocab - 1 if vocab == OPENAI_VOCAB_SIZE else None,
    }
    vision_config = {
        "hidden_size": v_width, "num_attention_heads": v_width // head_width,
        "num_hidden_layers": int(vision.get("layers", 12)),
        "intermediate_size": int(v_width * float(vision.get("mlp_ratio", 4.0))),
        "image_size": square(vision.get("image_size", 224), "image_size", source),
        "patch_size": square(vision.get("patch_size", 16), "patch_size", source),
        "hidden_act": act, "layer_norm_eps": eps(vision), "projection_dim": embed_dim, "num_channels": 3,
    }
    scale = sd.get("logit_scale")
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=embed_dim,
                      logit_scale_init_value=float(scale) if scale is not None else math.log(1 / 0.07))


# ------------------------------------------------------------------------------------------ open_clip → HF
def open_clip_to_hf_clip(state_dict: dict, model_cfg: dict | None = None, *, source: str = "the checkpoint"):
    """open_clip / OpenAI CLIP ViT weights (+ open_clip model config, inferred when ``None``) →
    ``(transformers.CLIPConfig, HF state dict)`` for ``CLIPModel``."""
    import torch

    sd = clean(state_dict)
    refuse_resnet(sd, source)
    cfg = copy.deepcopy(model_cfg) if model_cfg is not None else infer_open_clip_config(sd)
    check_clip_config(cfg, source)
    sd = standard_layout(sd)
    config = hf_clip_config(cfg, sd, source)
    m = TensorMap(sd, source, ", which its config needs; is the config right for these weights?")
    towers = {"vision": config.vision_config, "text": config.text_config}
    for tower, before, (oc, hf), after in LAYOUT:
        for src, dst, transpose in before:
            m.take(src, dst, transpose=transpose)
        c = towers[tower]
        for i in range(c.num_hidden_layers):
            s, d = f"{oc}.{i}.", f"{hf}.{i}."
            for a, b in BLOCK.items():
                m.take(s + a, d + b)
            for kind in ("weight", "bias"):
                m.split(f"{s}attn.in_proj_{kind}", [f"{d}self_attn.{x}_proj.{kind}" for x in "qkv"], c.hidden_size,
                        lacks="; is the config right for these weights?")
        for src, dst, transpose in after:
            m.take(src, dst, transpose=transpose)
    if "logit_scale" in sd:
        m.take("logit_scale", "logit_scale")
    else:
        m.out["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    out = m.refuse_leftovers("HF's CLIPModel", "; is the config right?")
    check_shapes(config, out, source)
    return config, out


# ------------------------------------------------------------------------------------------ HF → open_clip
def _gelu_flag(acts: set, source: str, family: str) -> bool:
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise UnsupportedError(f"{source}: hidden_act {sorted(acts)} has no open_clip {family} equivalent (open_clip's "
                               "CLIP towers share one activation: 'quick_gelu' or exact 'gelu')")
    return acts == {"quick_gelu"}


def _text_pool_config(vocab_size: int, eos_token_id: int | None) -> dict:
    """open_clip text pooling that equals HF CLIP's: the first ``eos_token_id`` (argmax of ids when eos is
    the largest id, as OpenAI's tokenizer has it; HF's legacy ``eos_token_id == 2`` is a plain argmax)."""
    if eos_token_id is None or eos_token_id == 2 or eos_token_id == vocab_size - 1:
        return {}
    return {"pool_type": "eos", "eos_id": int(eos_token_id)}


def open_clip_clip_config(config, source: str) -> dict:
    """The open_clip model config of an HF ``CLIPConfig``."""
    tc, vc = config.text_config, config.vision_config
    quick = _gelu_flag({tc.hidden_act, vc.hidden_act}, source, "CLIP")
    if vc.hidden_size % vc.num_attention_heads or tc.hidden_size % tc.num_attention_heads:
        raise UnsupportedError(f"{source}: hidden_size is not a multiple of num_attention_heads")
    if getattr(vc, "num_channels", 3) != 3:
        raise UnsupportedError(f"{source}: vision_config.num_channels = {vc.num_channels}; open_clip's ViT takes RGB")
    vision = {"image_size": int(vc.image_size), "layers": int(vc.num_hidden_layers), "width": int(vc.hidden_size),
              "patch_size": int(vc.patch_size)}
    if vc.hidden_size // vc.num_attention_heads != 64:
        vision["head_width"] = vc.hidden_size // vc.num_attention_heads
    if vc.intermediate_size != 4 * vc.hidden_size:
        vision["mlp_ratio"] = mlp_ratio(vc.hidden_size, vc.intermediate_size)
    text = {"context_length": int(tc.max_position_embeddings), "vocab_size": int(tc.vocab_size),
            "width": int(tc.hidden_size), "heads": int(tc.num_attention_heads), "layers": int(tc.num_hidden_layers),
            **_text_pool_config(tc.vocab_size, tc.eos_token_id)}
    if tc.intermediate_size != 4 * tc.hidden_size:
        text["mlp_ratio"] = mlp_ratio(tc.hidden_size, tc.intermediate_size)
    for part, c in ((vision, vc), (text, tc)):
        if c.layer_norm_eps != LN_EPS:
            part["norm_kwargs"] = {"eps": float(c.layer_norm_eps)}
    return {"embed_dim": int(config.projection_dim), "quick_gelu": quick, "vision_cfg": vision, "text_cfg": text}


def hf_clip_to_open_clip(hf, hf_config=None, *, source: str = "the HF model") -> tuple[dict, dict]:
    """HF ``CLIPModel`` (a model, or a state dict + ``CLIPConfig`` / config.json dict or path) →
    ``(open_clip state dict, open_clip model config)`` for ``open_clip.CLIP``."""
    sd, config = hf_parts(hf, hf_config, "CLIPModel")
    cfg = open_clip_clip_config(config, source)
    m = TensorMap(sd, source, "; is it a CLIPModel with its own config?")
    layers = {"vision": cfg["vision_cfg"]["layers"], "text": cfg["text_cfg"]["layers"]}
    for tower, before, (oc, hf_prefix), after in LAYOUT:
        for src, dst, transpose in before:
            m.take(dst, src, transpose=transpose)
        for i in range(layers[tower]):
            s, d = f"{hf_prefix}.{i}.", f"{oc}.{i}."
            for kind in ("weight", "bias"):
                m.cat([f"{s}self_attn.{x}_proj.{kind}" for x in "qkv"], f"{d}attn.in_proj_{kind}", lacks="")
            for a, b in BLOCK.items():
                m.take(s + b, d + a)
        for src, dst, transpose in after:
            m.take(dst, src, transpose=transpose)
    m.take("logit_scale", "logit_scale")
    return m.refuse_leftovers("open_clip's CLIP"), cfg


# ------------------------------------------------------------------------------------------ HF folder
def save_hf_clip(folder: "str | os.PathLike", config, hf_state_dict: dict, image_size: int | None = None,
                 mean=OPENAI_MEAN, std=OPENAI_STD, context_length: int | None = None, *, tokenizer=None,
                 interpolation: str = "bicubic", resize_mode: str = "shortest") -> Path:
    """A complete ``save_pretrained`` folder: config.json, model.safetensors, the tokenizer (OpenAI's CLIP BPE
    built offline, unless ``tokenizer`` is given) and preprocessor_config.json (``CLIPImageProcessor``:
    shortest-edge resize + centre crop, bicubic, ``mean`` / ``std``)."""
    from transformers import CLIPImageProcessor

    image_size = int(image_size or config.vision_config.image_size)
    context_length = int(context_length or config.text_config.max_position_embeddings)
    if tokenizer is None:
        if config.text_config.vocab_size != OPENAI_VOCAB_SIZE:
            raise UnsupportedError(f"the text tower has {config.text_config.vocab_size} token ids, not OpenAI's "
                                   f"{OPENAI_VOCAB_SIZE}: pass its tokenizer (tokenizer=…) to save an HF folder")
        tokenizer = clip_tokenizer(context_length)
    processor = image_processor(CLIPImageProcessor, image_size, mean, std, interpolation, resize_mode)
    folder = Path(folder)  # written only once every refusal above has had its say
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    write_weights(folder, hf_state_dict)
    tokenizer.model_max_length = context_length
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
