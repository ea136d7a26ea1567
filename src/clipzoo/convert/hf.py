"""open_clip / OpenAI CLIP ⇄ transformers ``CLIPModel``, and open_clip SigLIP ⇄ ``SiglipModel``.

Every tensor is moved, never recomputed: ``in_proj`` (q|k|v stacked) is split in three, the two
projections are transposed, and nothing is cast (an fp16 OpenAI file gives fp16 HF weights), so
open_clip → HF → open_clip gives back bit-identical tensors. What HF's classes cannot express
(ModifiedResNet image towers, attentional pooling, layer scale, CoCa, …) is refused with
:class:`~clipzoo.errors.UnsupportedError` naming the part, rather than converted approximately.

The mapping (open_clip → HF ``CLIPModel``)::

    visual.class_embedding                    vision_model.embeddings.class_embedding
    visual.positional_embedding               vision_model.embeddings.position_embedding.weight
    visual.conv1.weight                       vision_model.embeddings.patch_embedding.weight
    visual.ln_pre / visual.ln_post            vision_model.pre_layrnorm / vision_model.post_layernorm
    visual.transformer.resblocks.N.*          vision_model.encoder.layers.N.*  (see _BLOCK)
    visual.proj  (width × embed)              visual_projection.weight  (embed × width, transposed)
    token_embedding / positional_embedding    text_model.embeddings.token_embedding / position_embedding
    transformer.resblocks.N.*                 text_model.encoder.layers.N.*
    ln_final                                  text_model.final_layer_norm
    text_projection  (width × embed)          text_projection.weight  (transposed)
    logit_scale                               logit_scale
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsupportedError

__all__ = [
    "OPENAI_MEAN", "OPENAI_STD", "infer_open_clip_config", "open_clip_to_hf_clip", "hf_clip_to_open_clip",
    "save_hf_clip", "open_clip_to_hf_siglip", "hf_siglip_to_open_clip", "save_hf_siglip", "is_siglip_config",
    "write_hf", "open_clip_form_of_hf",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
OPENAI_VOCAB = 49408
LN_EPS = 1e-5  # torch.nn.LayerNorm's default: open_clip's unless norm_kwargs says otherwise

# open_clip residual block → HF encoder layer (in_proj is split separately)
_BLOCK = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_RESNET_HINT = ("HF's CLIPModel has only ViT image towers, so a ModifiedResNet (RN50, RN101, RN50x4, …) has no "
                "HF form; convert it to safetensors or onnx instead (clipzoo convert SRC DST --to safetensors)")
# keys that change nothing in eval-mode outputs or only describe the tokenizer / training
_HARMLESS = {"patch_dropout", "output_tokens", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs",
             "timm_drop", "timm_drop_path", "pad_id"}


# ------------------------------------------------------------------------------------------ helpers
def _ignored(key: str) -> bool:
    return key.endswith(("attn_mask", "position_ids"))


def _clean(sd: dict) -> dict:
    """Plain tensors, no non-persistent buffers (``attn_mask``, ``position_ids``), no ``module.`` prefixes."""
    from ..checkpoints import strip_prefixes

    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and not _ignored(k)}
    return strip_prefixes(sd)


def _square(value, what: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UnsupportedError(f"{source}: {what} {tuple(value)} is not square; HF's CLIP and SigLIP configs "
                                   "take one size for both sides. Convert it to safetensors or onnx instead")
        value = value[0]
    return int(value)


def _eps(cfg: dict) -> float:
    return float((cfg.get("norm_kwargs") or {}).get("eps", LN_EPS))


def _check_options(cfg: dict, defaults: dict, where: str, source: str, allowed: set[str],
                   family: str = "CLIPModel") -> None:
    """Refuse every key of ``cfg`` that is neither known-harmless, nor mapped (``allowed``), nor at its default."""
    for key, value in cfg.items():
        if key in _HARMLESS or key in allowed:
            continue
        if key in defaults and value == defaults[key]:
            continue
        if key == "norm_kwargs" and set(value or {}) <= {"eps"}:
            continue
        want = f" (HF's form needs {defaults[key]!r})" if key in defaults else ""
        raise UnsupportedError(
            f"{source}: {where}.{key} = {value!r} has no equivalent in HF's {family}{want}; the model can be "
            "converted to safetensors or onnx, not to HF")


def _mlp_ratio(width: int, hidden: int) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:  # open_clip builds int(width * mlp_ratio)
        ratio = (hidden + 0.5) / width
    return ratio


def _text_pool_config(vocab_size: int, eos_token_id: int | None) -> dict:
    """open_clip text pooling that equals HF CLIP's: the first ``eos_token_id`` (argmax of ids when eos is
    the largest id, as OpenAI's tokenizer has it; HF's legacy ``eos_token_id == 2`` is a plain argmax)."""
    if eos_token_id is None or eos_token_id == 2 or eos_token_id == vocab_size - 1:
        return {}
    return {"pool_type": "eos", "eos_id": int(eos_token_id)}


# ------------------------------------------------------------------------------------------ CLIP
_VISION_DEFAULTS = {"head_width": 64, "mlp_ratio": 4.0, "ls_init_value": None, "attentional_pool": False,
                    "no_ln_pre": False, "pos_embed_type": "learnable", "final_ln_after_pool": False,
                    "pool_type": "tok", "act_kwargs": None, "norm_kwargs": None, "block_type": None,
                    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                    "scale_attn": False, "scale_fc": False, "attn_pooler_queries": 256, "attn_pooler_heads": 8}
_TEXT_DEFAULTS = {"mlp_ratio": 4.0, "ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
                  "final_ln_after_pool": False, "pool_type": "argmax", "proj_bias": False, "proj_type": "linear",
                  "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False,
                  "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                  "scale_fc": False, "eos_id": 2}


def infer_open_clip_config(state_dict: dict, quick_gelu: bool = True) -> dict:
    """The open_clip model config of a CLIP ViT state dict (OpenAI or open_clip layout), from tensor shapes
    as OpenAI's ``clip.build_model`` does: widths from shapes, layers by counting, heads = width // 64.

    The activation is not in the weights: ``quick_gelu=True`` (OpenAI's models) unless told otherwise.
    """
    sd = _clean(state_dict)
    _refuse_resnet(sd, "the state dict")
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
        cfg["vision_cfg"]["mlp_ratio"] = _mlp_ratio(width, v_mlp)
    if t_mlp != 4 * t_width:
        cfg["text_cfg"]["mlp_ratio"] = _mlp_ratio(t_width, t_mlp)
    return cfg


def _refuse_resnet(sd: dict, source: str) -> None:
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in sd):
        raise UnsupportedError(f"{source} has a ModifiedResNet image tower (visual.layer1…); {_RESNET_HINT}")


def _check_clip_config(cfg: dict, source: str) -> None:
    if "multimodal_cfg" in cfg:
        raise UnsupportedError(f"{source} is a CoCa model (multimodal_cfg: a captioning decoder); HF's CLIPModel has "
                               "no decoder. Convert it to open_clip, safetensors or onnx instead")
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        raise UnsupportedError(f"{source}: vision_cfg.layers = {vision['layers']} is a ModifiedResNet; {_RESNET_HINT}")
    if vision.get("timm_model_name"):
        raise UnsupportedError(f"{source}: vision_cfg.timm_model_name = {vision['timm_model_name']!r} is a timm "
                               "image tower, which HF's CLIPModel cannot hold (SigLIP's timm ViT converts to "
                               "SiglipModel with open_clip_to_hf_siglip)")
    if text.get("hf_model_name"):
        raise UnsupportedError(f"{source}: text_cfg.hf_model_name = {text['hf_model_name']!r} is a Hugging Face "
                               "text tower, not CLIP's causal transformer; HF's CLIPModel cannot hold it. "
                               "Convert it to safetensors or onnx instead")
    for key in cfg:
        if key not in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale",
                       "nonscalar_logit_scale", "cast_dtype", "init_logit_bias"):
            raise UnsupportedError(f"{source}: model config key {key!r} has no equivalent in HF's CLIPModel")
    if cfg.get("init_logit_bias") is not None:
        raise UnsupportedError(f"{source} has a sigmoid-loss logit bias (init_logit_bias) that HF's CLIPModel has no "
                               "parameter for; convert it to open_clip, safetensors or onnx instead")
    if cfg.get("nonscalar_logit_scale"):
        raise UnsupportedError(f"{source}: nonscalar_logit_scale has no equivalent in HF's CLIPModel")
    _check_options(vision, _VISION_DEFAULTS, "vision_cfg", source,
                   {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"})
    _check_options(text, _TEXT_DEFAULTS, "text_cfg", source,
                   {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pool_type", "eos_id"})
    if text.get("pool_type", "argmax") not in ("argmax", "eos"):
        raise UnsupportedError(f"{source}: text_cfg.pool_type = {text['pool_type']!r} has no equivalent in HF's "
                               "CLIPModel (it pools at the end token: 'argmax' or 'eos')")


def _standard_layout(sd: dict) -> dict:
    """CustomTextCLIP with CLIP's own text transformer keeps it under ``text.``: use CLIP's key names."""
    if not any(k.startswith("text.") for k in sd):
        return sd
    return {(k[len("text."):] if k.startswith("text.") else k): v for k, v in sd.items()}


def open_clip_to_hf_clip(state_dict: dict, model_cfg: dict | None = None, *, source: str = "the checkpoint"):
    """open_clip / OpenAI CLIP ViT weights (+ open_clip model config, inferred when ``None``) →
    ``(transformers.CLIPConfig, HF state dict)`` for ``CLIPModel``."""
    from transformers import CLIPConfig

    sd = _clean(state_dict)
    _refuse_resnet(sd, source)
    cfg = copy.deepcopy(model_cfg) if model_cfg is not None else infer_open_clip_config(sd)
    _check_clip_config(cfg, source)
    sd = _standard_layout(sd)
    vision, text = cfg["vision_cfg"], cfg.get("text_cfg", {})
    act = "quick_gelu" if cfg.get("quick_gelu", False) else "gelu"

    v_width = int(vision.get("width", 768))
    head_width = int(vision.get("head_width", 64))
    if v_width % head_width:
        raise UnsupportedError(f"{source}: vision width {v_width} is not a multiple of head_width {head_width}")
    t_width, t_heads = int(text.get("width", 512)), int(text.get("heads", 8))
    vocab = int(text.get("vocab_size", OPENAI_VOCAB))
    if text.get("pool_type", "argmax") == "eos":
        eos = int(text.get("eos_id", 2))
        if eos == 2 and vocab - 1 != 2:
            raise UnsupportedError(f"{source}: text_cfg.eos_id = 2 reads as HF CLIP's legacy argmax pooling; "
                                   "HF's CLIPModel cannot pool at the first id 2")
    else:  # argmax: HF's "first eos" equals it when eos is the largest id (OpenAI's tokenizer); else legacy 2
        eos = vocab - 1 if vocab == OPENAI_VOCAB else 2
    embed_dim = int(cfg["embed_dim"])
    text_config = {
        "vocab_size": vocab, "hidden_size": t_width, "num_attention_heads": t_heads,
        "num_hidden_layers": int(text.get("layers", 12)),
        "intermediate_size": int(t_width * float(text.get("mlp_ratio", 4.0))),
        "max_position_embeddings": int(text.get("context_length", 77)), "hidden_act": act,
        "layer_norm_eps": _eps(text), "projection_dim": embed_dim, "eos_token_id": eos,
        "bos_token_id": vocab - 2 if vocab == OPENAI_VOCAB else None,
        "pad_token_id": vocab - 1 if vocab == OPENAI_VOCAB else None,
    }
    vision_config = {
        "hidden_size": v_width, "num_attention_heads": v_width // head_width,
        "num_hidden_layers": int(vision.get("layers", 12)),
        "intermediate_size": int(v_width * float(vision.get("mlp_ratio", 4.0))),
        "image_size": _square(vision.get("image_size", 224), "image_size", source),
        "patch_size": _square(vision.get("patch_size", 16), "patch_size", source),
        "hidden_act": act, "layer_norm_eps": _eps(vision), "projection_dim": embed_dim, "num_channels": 3,
    }
    scale = sd.get("logit_scale")
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=embed_dim,
                        logit_scale_init_value=float(scale) if scale is not None else math.log(1 / 0.07))

    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, transpose: bool = False) -> None:
        if src not in sd:
            raise CheckpointError(f"{source} lacks {src!r}, which its config needs; is the config right for "
                                  "these weights?")
        t = sd[src]
        out[dst] = t.t().contiguous() if transpose else t
        used.add(src)

    def blocks(src_prefix: str, dst_prefix: str, n: int, width: int) -> None:
        for i in range(n):
            s, d = f"{src_prefix}.{i}.", f"{dst_prefix}.{i}."
            for a, b in _BLOCK.items():
                take(s + a, d + b)
            for kind in ("weight", "bias"):
                key = f"{s}attn.in_proj_{kind}"
                if key not in sd:
                    raise CheckpointError(f"{source} lacks {key!r}; is the config right for these weights?")
                q, k, v = sd[key].split(width, dim=0)  # views of the same storage: values move unchanged
                for name, part in zip("qkv", (q, k, v)):
                    out[f"{d}self_attn.{name}_proj.{kind}"] = part.contiguous()
                used.add(key)

    take("visual.class_embedding", "vision_model.embeddings.class_embedding")
    take("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight")
    take("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight")
    for kind in ("weight", "bias"):
        take(f"visual.ln_pre.{kind}", f"vision_model.pre_layrnorm.{kind}")
        take(f"visual.ln_post.{kind}", f"vision_model.post_layernorm.{kind}")
        take(f"ln_final.{kind}", f"text_model.final_layer_norm.{kind}")
    blocks("visual.transformer.resblocks", "vision_model.encoder.layers", vision_config["num_hidden_layers"], v_width)
    take("visual.proj", "visual_projection.weight", transpose=True)
    take("token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    take("positional_embedding", "text_model.embeddings.position_embedding.weight")
    blocks("transformer.resblocks", "text_model.encoder.layers", text_config["num_hidden_layers"], t_width)
    take("text_projection", "text_projection.weight", transpose=True)
    if "logit_scale" in sd:
        take("logit_scale", "logit_scale")
    else:
        out["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    left = sorted(set(sd) - used)
    if left:
        raise CheckpointError(f"{source} has {len(left)} tensor(s) HF's CLIPModel has no place for "
                              f"({', '.join(left[:6])}{', …' if len(left) > 6 else ''}); is the config right?")
    _check_shapes(config, out, source)
    return config, out


def _check_shapes(config, hf_sd: dict, source: str) -> None:
    """Build the HF model on the meta device and compare every shape, so that a wrong config fails here."""
    from transformers import CLIPModel, SiglipModel

    cls = SiglipModel if type(config).__name__ == "SiglipConfig" else CLIPModel
    with torch.device("meta"):
        model = cls(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if not _ignored(k)}
    got = {k: tuple(v.shape) for k, v in hf_sd.items()}
    bad = [f"{k} {got.get(k)} vs {want.get(k)}" for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if bad:
        raise CheckpointError(f"{source} does not fit the HF {cls.__name__} its config describes: "
                              + "; ".join(bad[:4]) + ("; …" if len(bad) > 4 else "") + ". Check the model config")


def _hf_parts(hf, hf_config, expect: str):
    """(state dict, config as a transformers config object) from a model, or a state dict + config."""
    import transformers

    if isinstance(hf, torch.nn.Module):
        hf_config = hf_config or hf.config
        sd = hf.state_dict()
    else:
        sd = hf
    if hf_config is None:
        raise UnsupportedError(f"an HF {expect} state dict needs its config (config.json) to convert")
    if isinstance(hf_config, (str, os.PathLike)):
        hf_config = json.loads(Path(hf_config).read_text())
    if isinstance(hf_config, dict):
        hf_config = getattr(transformers, expect.replace("Model", "Config"))(**hf_config)
    from ..checkpoints import strip_prefixes

    sd = strip_prefixes({k: v for k, v in sd.items() if not _ignored(k)})
    return sd, hf_config


def _gelu_flag(acts: set, source: str, family: str) -> bool:
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise UnsupportedError(f"{source}: hidden_act {sorted(acts)} has no open_clip {family} equivalent (open_clip's "
                               "CLIP towers share one activation: 'quick_gelu' or exact 'gelu')")
    return acts == {"quick_gelu"}


def hf_clip_to_open_clip(hf, hf_config=None, *, source: str = "the HF model") -> tuple[dict, dict]:
    """HF ``CLIPModel`` (a model, or a state dict + ``CLIPConfig`` / config.json dict or path) →
    ``(open_clip state dict, open_clip model config)`` for ``open_clip.CLIP``."""
    sd, config = _hf_parts(hf, hf_config, "CLIPModel")
    tc, vc = config.text_config, config.vision_config
    quick = _gelu_flag({tc.hidden_act, vc.hidden_act}, source, "CLIP")
    if vc.hidden_size % vc.num_attention_heads or tc.hidden_size % tc.num_attention_heads:
        raise UnsupportedError(f"{source}: hidden_size is not a multiple of num_attention_heads")
    if getattr(vc, "num_channels", 3) != 3:
        raise UnsupportedError(f"{source}: vision_config.num_channels = {vc.num_channels}; open_clip's ViT takes RGB")
    embed_dim = int(config.projection_dim)
    vision = {"image_size": int(vc.image_size), "layers": int(vc.num_hidden_layers), "width": int(vc.hidden_size),
              "patch_size": int(vc.patch_size)}
    if vc.hidden_size // vc.num_attention_heads != 64:
        vision["head_width"] = vc.hidden_size // vc.num_attention_heads
    if vc.intermediate_size != 4 * vc.hidden_size:
        vision["mlp_ratio"] = _mlp_ratio(vc.hidden_size, vc.intermediate_size)
    text = {"context_length": int(tc.max_position_embeddings), "vocab_size": int(tc.vocab_size),
            "width": int(tc.hidden_size), "heads": int(tc.num_attention_heads), "layers": int(tc.num_hidden_layers),
            **_text_pool_config(tc.vocab_size, tc.eos_token_id)}
    if tc.intermediate_size != 4 * tc.hidden_size:
        text["mlp_ratio"] = _mlp_ratio(tc.hidden_size, tc.intermediate_size)
    for part, c in ((vision, vc), (text, tc)):
        if c.layer_norm_eps != LN_EPS:
            part["norm_kwargs"] = {"eps": float(c.layer_norm_eps)}
    cfg = {"embed_dim": embed_dim, "quick_gelu": quick, "vision_cfg": vision, "text_cfg": text}

    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, transpose: bool = False) -> None:
        if src not in sd:
            raise CheckpointError(f"{source} lacks {src!r}; is it a CLIPModel with its own config?")
        out[dst] = sd[src].t().contiguous() if transpose else sd[src]
        used.add(src)

    def blocks(src_prefix: str, dst_prefix: str, n: int) -> None:
        for i in range(n):
            s, d = f"{src_prefix}.{i}.", f"{dst_prefix}.{i}."
            for kind in ("weight", "bias"):
                keys = [f"{s}self_attn.{x}_proj.{kind}" for x in "qkv"]
                missing = [k for k in keys if k not in sd]
                if missing:
                    raise CheckpointError(f"{source} lacks {missing[0]!r}")
                out[f"{d}attn.in_proj_{kind}"] = torch.cat([sd[k] for k in keys], dim=0)
                used.update(keys)
            for a, b in _BLOCK.items():
                take(s + b, d + a)

    take("vision_model.embeddings.class_embedding", "visual.class_embedding")
    take("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding")
    take("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight")
    for kind in ("weight", "bias"):
        take(f"vision_model.pre_layrnorm.{kind}", f"visual.ln_pre.{kind}")
    blocks("vision_model.encoder.layers", "visual.transformer.resblocks", vision["layers"])
    for kind in ("weight", "bias"):
        take(f"vision_model.post_layernorm.{kind}", f"visual.ln_post.{kind}")
    take("visual_projection.weight", "visual.proj", transpose=True)
    take("text_model.embeddings.token_embedding.weight", "token_embedding.weight")
    take("text_model.embeddings.position_embedding.weight", "positional_embedding")
    blocks("text_model.encoder.layers", "transformer.resblocks", text["layers"])
    for kind in ("weight", "bias"):
        take(f"text_model.final_layer_norm.{kind}", f"ln_final.{kind}")
    take("text_projection.weight", "text_projection", transpose=True)
    take("logit_scale", "logit_scale")
    left = sorted(set(sd) - used)
    if left:
        raise CheckpointError(f"{source} has {len(left)} tensor(s) open_clip's CLIP has no place for "
                              f"({', '.join(left[:6])}{', …' if len(left) > 6 else ''})")
    return out, cfg


def _write_weights(folder: Path, hf_sd: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in hf_sd.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def _image_processor(cls, image_size: int, mean, std, interpolation: str, resize_mode: str):
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}.get(interpolation)
    if resample is None:
        raise UnsupportedError(f"interpolation {interpolation!r} has no PIL resample for the HF image processor")
    common = {"image_mean": [float(x) for x in mean], "image_std": [float(x) for x in std], "resample": resample,
              "do_convert_rgb": True}
    if resize_mode == "shortest":
        return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                   do_center_crop=True, **common)
    if resize_mode == "squash":
        return cls(size={"height": image_size, "width": image_size}, do_center_crop=False, **common)
    raise UnsupportedError(f"resize_mode {resize_mode!r} (pad to square) has no HF image processor equivalent; "
                           "HF's CLIPImageProcessor resizes the shortest edge and crops, or squashes")


def save_hf_clip(folder: "str | os.PathLike", config, hf_state_dict: dict, image_size: int | None = None,
                 mean=OPENAI_MEAN, std=OPENAI_STD, context_length: int | None = None, *, tokenizer=None,
                 interpolation: str = "bicubic", resize_mode: str = "shortest") -> Path:
    """A complete ``save_pretrained`` folder: config.json, model.safetensors, the tokenizer (OpenAI's CLIP BPE
    built offline, unless ``tokenizer`` is given) and preprocessor_config.json (``CLIPImageProcessor``:
    shortest-edge resize + centre crop, bicubic, ``mean`` / ``std``)."""
    from transformers import CLIPImageProcessor

    from .tokenizer_files import clip_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_size = int(image_size or config.vision_config.image_size)
    context_length = int(context_length or config.text_config.max_position_embeddings)
    if tokenizer is None:
        if config.text_config.vocab_size != OPENAI_VOCAB:
            raise UnsupportedError(f"the text tower has {config.text_config.vocab_size} token ids, not OpenAI's "
                                   f"{OPENAI_VOCAB}: pass its tokenizer (tokenizer=…) to save an HF folder")
        tokenizer = clip_tokenizer(context_length)
    config.save_pretrained(folder)
    _write_weights(folder, hf_state_dict)
    tokenizer.model_max_length = context_length
    tokenizer.save_pretrained(folder)
    _image_processor(CLIPImageProcessor, image_size, mean, std, interpolation, resize_mode).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ SigLIP
# open_clip's SigLIP: a timm ViT (no class token, no ln_pre, MAP attention-pool head, no projection) + CLIP's
# text transformer without causal mask, pooled at the last token, projected with a bias — which is exactly
# HF's SiglipModel. timm's blocks use exact GELU (HF's hub SigLIPs say gelu_pytorch_tanh); whatever the
# source computes is what the converted config says, so outputs stay equal.
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
_SIGLIP_TEXT = {"no_causal_mask": True, "pool_type": "last", "proj_bias": True}
_GELU_ACT = {None: "gelu", "none": "gelu", "tanh": "gelu_pytorch_tanh"}


def is_siglip_config(model_cfg: dict) -> bool:
    """An open_clip config whose image tower is a timm SigLIP ViT with a MAP head."""
    vision = model_cfg.get("vision_cfg", {})
    return "siglip" in str(vision.get("timm_model_name", "")) and vision.get("timm_pool") == "map"


def _timm_trunk(name: str, source: str):
    """The timm ViT on the meta device (no memory, no download) to read what its weights do not say."""
    try:
        import timm
    except ImportError:
        raise UnsupportedError(f"{source}: reading the timm image tower {name!r} needs timm; pip install timm") from None
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0, global_pool="map")
    except Exception as exc:  # noqa: BLE001 - unknown names, incompatible kwargs
        raise UnsupportedError(f"{source}: timm cannot build {name!r} ({exc}); install a timm that has it") from None


def _act_name(act: torch.nn.Module, where: str, source: str) -> str:
    kind = type(act).__name__  # torch's nn.GELU, or timm's GELU / GELUTanh wrappers of F.gelu
    if kind == "GELU" and getattr(act, "approximate", "none") in _GELU_ACT:
        return _GELU_ACT[getattr(act, "approximate", "none")]
    if kind == "GELUTanh":
        return "gelu_pytorch_tanh"
    raise UnsupportedError(f"{source}: {where} activation {act!r} has no HF SigLIP hidden_act equivalent")


def _trunk_arch(trunk, source: str) -> dict:
    """The HF SiglipVisionConfig of a timm ViT, refusing every part SiglipVisionTransformer lacks."""
    from torch import nn

    name = type(trunk).__name__

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise UnsupportedError(f"{source}: the timm image tower has {what}, which HF's SiglipModel has no "
                                   "place for; convert it to open_clip, safetensors or onnx instead")

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
    blocks = list(trunk.blocks)
    b0 = blocks[0]
    width = trunk.embed_dim
    for b in blocks:
        need(type(b).__name__ == "Block", f"blocks of class {type(b).__name__}")
        need(isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity), "layer scale")
        need(isinstance(b.attn.q_norm, nn.Identity) and isinstance(getattr(b.attn, "norm", nn.Identity()), nn.Identity),
             "attention q/k norms")
        need(b.attn.qkv.bias is not None, "attention without qkv bias")
    act = _act_name(b0.mlp.act, "block MLP", source)
    need(_act_name(pool.mlp.act, "MAP head MLP", source) == act, "a MAP-head activation unlike its blocks'")
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


def open_clip_to_hf_siglip(state_dict: dict, model_cfg: dict, *, source: str = "the checkpoint"):
    """open_clip SigLIP (timm ``vit_*_siglip_*`` image tower with MAP head + non-causal text tower pooled at the
    last token) → ``(transformers.SiglipConfig, HF state dict)`` for ``SiglipModel``."""
    from transformers import SiglipConfig

    sd = _clean(state_dict)
    cfg = copy.deepcopy(model_cfg)
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
        if key not in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale",
                       "init_logit_bias", "cast_dtype"):
            raise UnsupportedError(f"{source}: model config key {key!r} has no equivalent in HF's SiglipModel")
    for key, value in _SIGLIP_TEXT.items():
        if text.get(key, _TEXT_DEFAULTS[key]) != value:
            raise UnsupportedError(f"{source}: text_cfg.{key} = {text.get(key, _TEXT_DEFAULTS[key])!r}; HF's "
                                   f"SiglipModel's text tower has {key} = {value!r}")
    act_kwargs = text.get("act_kwargs") or {}
    if set(act_kwargs) - {"approximate"}:
        raise UnsupportedError(f"{source}: text_cfg.act_kwargs = {act_kwargs!r} has no HF SigLIP equivalent")
    _check_options(text, _TEXT_DEFAULTS, "text_cfg", source, {"context_length", "vocab_size", "width", "heads",
                   "layers", "mlp_ratio", "act_kwargs", *_SIGLIP_TEXT}, family="SiglipModel")
    t_act = "quick_gelu" if cfg.get("quick_gelu") else _GELU_ACT.get(act_kwargs.get("approximate"))
    if t_act is None:
        raise UnsupportedError(f"{source}: text_cfg.act_kwargs = {act_kwargs!r} has no HF SigLIP equivalent")
    trunk_cfg = _trunk_arch(_timm_trunk(vision["timm_model_name"], source), source)
    embed_dim = int(cfg["embed_dim"])
    if embed_dim != trunk_cfg["hidden_size"]:
        raise UnsupportedError(f"{source}: embed_dim {embed_dim} is not the image tower width "
                               f"{trunk_cfg['hidden_size']}; HF's SiglipModel has no image projection")
    t_width = int(text.get("width", 512))
    text_config = {"vocab_size": int(text.get("vocab_size", 32000)), "hidden_size": t_width,
                   "intermediate_size": int(t_width * float(text.get("mlp_ratio", 4.0))),
                   "num_hidden_layers": int(text.get("layers", 12)), "num_attention_heads": int(text.get("heads", 8)),
                   "max_position_embeddings": int(text.get("context_length", 64)), "hidden_act": t_act,
                   "layer_norm_eps": _eps(text), "projection_size": embed_dim,
                   "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}  # the tokenizer's: save_hf_siglip
    config = SiglipConfig(text_config=text_config, vision_config=trunk_cfg)

    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, shape=None) -> None:
        if src not in sd:
            raise CheckpointError(f"{source} lacks {src!r}, which its config needs; is the config right?")
        out[dst] = sd[src] if shape is None else sd[src].reshape(shape)
        used.add(src)

    def split(src: str, dsts: list[str], width: int) -> None:
        if src not in sd:
            raise CheckpointError(f"{source} lacks {src!r}, which its config needs; is the config right?")
        for dst, part in zip(dsts, sd[src].split(width, dim=0)):
            out[dst] = part.contiguous()
        used.add(src)

    v, w = "visual.trunk.", trunk_cfg["hidden_size"]
    take(v + "pos_embed", "vision_model.embeddings.position_embedding.weight", (-1, w))
    for kind in ("weight", "bias"):
        take(f"{v}patch_embed.proj.{kind}", f"vision_model.embeddings.patch_embedding.{kind}")
        take(f"{v}norm.{kind}", f"vision_model.post_layernorm.{kind}")
        for i in range(trunk_cfg["num_hidden_layers"]):
            s, d = f"{v}blocks.{i}.", f"vision_model.encoder.layers.{i}."
            split(f"{s}attn.qkv.{kind}", [f"{d}self_attn.{x}_proj.{kind}" for x in "qkv"], w)
            for a, b in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                take(f"{s}{a}.{kind}", f"{d}{b}.{kind}")
        p, h = f"{v}attn_pool.", "vision_model.head."
        for key in (f"{p}q.{kind}", f"{p}kv.{kind}"):
            if key not in sd:
                raise CheckpointError(f"{source} lacks {key!r}, which its config needs")
        out[f"{h}attention.in_proj_{kind}"] = torch.cat([sd[f"{p}q.{kind}"], sd[f"{p}kv.{kind}"]], dim=0)
        used.update({f"{p}q.{kind}", f"{p}kv.{kind}"})
        for a, b in (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                     ("mlp.fc2", "mlp.fc2")):
            take(f"{p}{a}.{kind}", f"{h}{b}.{kind}")
        take(f"text.ln_final.{kind}", f"text_model.final_layer_norm.{kind}")
        take(f"text.text_projection.{kind}", f"text_model.head.{kind}")
        for i in range(text_config["num_hidden_layers"]):
            s, d = f"text.transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
            split(f"{s}attn.in_proj_{kind}", [f"{d}self_attn.{x}_proj.{kind}" for x in "qkv"], t_width)
            for a, b in _BLOCK.items():
                if a.endswith(kind):
                    take(s + a, d + b)
    take(v + "attn_pool.latent", "vision_model.head.probe")
    take("text.token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    take("text.positional_embedding", "text_model.embeddings.position_embedding.weight")
    take("logit_scale", "logit_scale", (1,))
    take("logit_bias", "logit_bias", (1,))
    left = sorted(set(sd) - used)
    if left:
        raise CheckpointError(f"{source} has {len(left)} tensor(s) HF's SiglipModel has no place for "
                              f"({', '.join(left[:6])}{', …' if len(left) > 6 else ''}); is the config right?")
    _check_shapes(config, out, source)
    return config, out


def _find_timm_siglip(vc, source: str) -> str:
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
            if _trunk_arch(_timm_trunk(name, source), source) == want:
                return name
        except UnsupportedError:
            continue
    raise UnsupportedError(f"{source}: no timm SigLIP ViT has this image tower ({vc.num_hidden_layers} layers, width "
                           f"{vc.hidden_size}, patch {vc.patch_size}, image {vc.image_size}, {vc.hidden_act}); "
                           "open_clip builds its SigLIP image towers from timm, so pass timm_model_name= if one fits")


def hf_siglip_to_open_clip(hf, hf_config=None, *, timm_model_name: str | None = None,
                           source: str = "the HF model") -> tuple[dict, dict]:
    """HF ``SiglipModel`` → ``(open_clip state dict, open_clip model config)`` for ``open_clip.CustomTextCLIP``
    (image tower: the timm SigLIP ViT of the same architecture, found by name or given)."""
    sd, config = _hf_parts(hf, hf_config, "SiglipModel")
    tc, vc = config.text_config, config.vision_config
    if not getattr(vc, "vision_use_head", True):
        raise UnsupportedError(f"{source}: vision_use_head = False (no MAP head); open_clip's SigLIP pools with it")
    name = timm_model_name or _find_timm_siglip(vc, source)
    arch = _trunk_arch(_timm_trunk(name, source), source)
    if arch["hidden_act"] != vc.hidden_act or arch["num_hidden_layers"] != vc.num_hidden_layers \
            or arch["hidden_size"] != vc.hidden_size:
        raise UnsupportedError(f"{source}: timm {name!r} is not this image tower ({arch} vs the HF config)")
    act = {"gelu": {}, "gelu_pytorch_tanh": {"act_kwargs": {"approximate": "tanh"}}, "quick_gelu": {}}.get(tc.hidden_act)
    if act is None:
        raise UnsupportedError(f"{source}: text hidden_act {tc.hidden_act!r} has no open_clip equivalent")
    embed_dim = int(vc.hidden_size)
    if tc.projection_size != embed_dim:
        raise UnsupportedError(f"{source}: text projection_size {tc.projection_size} is not the image width {embed_dim}")
    text = {"context_length": int(tc.max_position_embeddings), "vocab_size": int(tc.vocab_size),
            "width": int(tc.hidden_size), "heads": int(tc.num_attention_heads), "layers": int(tc.num_hidden_layers),
            **_SIGLIP_TEXT, "norm_kwargs": {"eps": float(tc.layer_norm_eps)}, **act}
    if tc.intermediate_size != 4 * tc.hidden_size:
        text["mlp_ratio"] = _mlp_ratio(tc.hidden_size, tc.intermediate_size)
    cfg = {"embed_dim": embed_dim, "init_logit_bias": float(sd["logit_bias"].reshape(())) if "logit_bias" in sd else -10.0,
           "custom_text": True, "quick_gelu": tc.hidden_act == "quick_gelu",
           "vision_cfg": {"image_size": int(vc.image_size), "timm_model_name": name, "timm_model_pretrained": False,
                          "timm_pool": "map", "timm_proj": "none"},
           "text_cfg": text}

    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, shape=None) -> None:
        if src not in sd:
            raise CheckpointError(f"{source} lacks {src!r}; is it a SiglipModel with its own config?")
        out[dst] = sd[src] if shape is None else sd[src].reshape(shape)
        used.add(src)

    def cat(srcs: list[str], dst: str) -> None:
        missing = [k for k in srcs if k not in sd]
        if missing:
            raise CheckpointError(f"{source} lacks {missing[0]!r}")
        out[dst] = torch.cat([sd[k] for k in srcs], dim=0)
        used.update(srcs)

    v, w = "visual.trunk.", embed_dim
    take("vision_model.embeddings.position_embedding.weight", v + "pos_embed", (1, -1, w))
    take("vision_model.head.probe", v + "attn_pool.latent")
    for kind in ("weight", "bias"):
        take(f"vision_model.embeddings.patch_embedding.{kind}", f"{v}patch_embed.proj.{kind}")
        take(f"vision_model.post_layernorm.{kind}", f"{v}norm.{kind}")
        for i in range(vc.num_hidden_layers):
            s, d = f"vision_model.encoder.layers.{i}.", f"{v}blocks.{i}."
            cat([f"{s}self_attn.{x}_proj.{kind}" for x in "qkv"], f"{d}attn.qkv.{kind}")
            for a, b in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                take(f"{s}{b}.{kind}", f"{d}{a}.{kind}")
        h, p = "vision_model.head.", f"{v}attn_pool."
        key = f"{h}attention.in_proj_{kind}"
        if key not in sd:
            raise CheckpointError(f"{source} lacks {key!r}")
        out[f"{p}q.{kind}"], out[f"{p}kv.{kind}"] = (t.contiguous() for t in sd[key].split([w, 2 * w], dim=0))
        used.add(key)
        for a, b in (("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"),
                     ("mlp.fc2", "mlp.fc2")):
            take(f"{h}{b}.{kind}", f"{p}{a}.{kind}")
        take(f"text_model.final_layer_norm.{kind}", f"text.ln_final.{kind}")
        take(f"text_model.head.{kind}", f"text.text_projection.{kind}")
        for i in range(tc.num_hidden_layers):
            s, d = f"text_model.encoder.layers.{i}.", f"text.transformer.resblocks.{i}."
            cat([f"{s}self_attn.{x}_proj.{kind}" for x in "qkv"], f"{d}attn.in_proj_{kind}")
            for a, b in _BLOCK.items():
                if a.endswith(kind):
                    take(s + b, d + a)
    take("text_model.embeddings.token_embedding.weight", "text.token_embedding.weight")
    take("text_model.embeddings.position_embedding.weight", "text.positional_embedding")
    take("logit_scale", "logit_scale", ())
    take("logit_bias", "logit_bias", ())
    left = sorted(set(sd) - used)
    if left:
        raise CheckpointError(f"{source} has {len(left)} tensor(s) open_clip's SigLIP has no place for "
                              f"({', '.join(left[:6])}{', …' if len(left) > 6 else ''})")
    return out, cfg


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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_size = int(image_size or config.vision_config.image_size)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, key, getattr(tokenizer, key, None))
    config.save_pretrained(folder)
    _write_weights(folder, hf_state_dict)
    tokenizer.model_max_length = int(config.text_config.max_position_embeddings)
    tokenizer.save_pretrained(folder)
    if resize_mode != "squash":
        raise UnsupportedError(f"resize_mode {resize_mode!r}: HF's SiglipImageProcessor only squashes to size")
    _image_processor(SiglipImageProcessor, image_size, mean, std, interpolation, "squash").save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ clipzoo convert
def write_hf(form, dst: "str | os.PathLike", tokenizer=None) -> Path:
    """``clipzoo convert … --to hf``: an :class:`~clipzoo.convert.targets.OpenClipForm` as a save_pretrained folder."""
    pre = form.preprocess_cfg or {}
    size = pre.get("size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    if is_siglip_config(form.model_cfg):
        config, sd = open_clip_to_hf_siglip(form.state_dict, form.model_cfg, source=form.source or "the model")
        name = form.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
        if tokenizer is None and name:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(name)
            except Exception as exc:  # noqa: BLE001 - offline, missing repo
                raise UnsupportedError(f"{form.source}: its tokenizer {name!r} cannot be loaded ({exc}); it is "
                                       "needed for the HF folder: download it once, or convert to safetensors") from None
        return save_hf_siglip(dst, config, sd, tokenizer, size, pre.get("mean", SIGLIP_MEAN),
                              pre.get("std", SIGLIP_STD), interpolation=pre.get("interpolation", "bicubic"),
                              resize_mode=pre.get("resize_mode", "squash"))
    config, sd = open_clip_to_hf_clip(form.state_dict, form.model_cfg or None, source=form.source or "the model")
    return save_hf_clip(dst, config, sd, size, pre.get("mean", OPENAI_MEAN), pre.get("std", OPENAI_STD),
                        tokenizer=tokenizer, interpolation=pre.get("interpolation", "bicubic"),
                        resize_mode=pre.get("resize_mode", "shortest"))


def open_clip_form_of_hf(comparator):
    """The open_clip form (weights, model config, preprocessing) of a loaded HF CLIPModel / SiglipModel."""
    from .targets import OpenClipForm

    model, alias = comparator.model, comparator.card.alias
    kind = type(model).__name__
    if kind == "CLIPModel":
        sd, cfg = hf_clip_to_open_clip(model, source=alias)
    elif kind == "SiglipModel":
        sd, cfg = hf_siglip_to_open_clip(model, source=alias)
    else:
        raise UnsupportedError(f"{alias} is an HF {kind}, which has no open_clip form (only CLIPModel and SiglipModel "
                               "do); convert it to onnx instead")
    ip = getattr(comparator, "image_processor", None)
    pre: dict[str, Any] = {}
    if ip is not None:
        size, crop = getattr(ip, "size", None) or {}, getattr(ip, "crop_size", None) or {}
        center = bool(getattr(ip, "do_center_crop", False))
        side = (crop.get("height") if center else None) or size.get("height") or size.get("shortest_edge")
        pre = {"size": side, "mean": list(ip.image_mean), "std": list(ip.image_std),
               "interpolation": {3: "bicubic", 2: "bilinear", 0: "nearest", 1: "lanczos"}.get(int(ip.resample), "bicubic"),
               "resize_mode": "shortest" if "shortest_edge" in size else "squash"}
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    return OpenClipForm(sd, cfg, pre, alias)
