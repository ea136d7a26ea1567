"""What OpenAI's ``clip.build_model`` can rebuild: ``--to openai`` refuses every other option, one line naming each.

OpenAI's code rebuilds a model from tensor shapes alone: a ViT (class token, ``ln_pre``, 64-wide heads, MLP ratio
4, LayerNorm eps 1e-5, pooled at the class token) or a ModifiedResNet, and the causal text transformer (width // 64
heads, pooled at the largest token id), all with QuickGELU, and OpenAI's tokenizer. So the check is an allow-list:
any open_clip option not at the value OpenAI's code builds is refused (a text tower without its causal mask, pooled
at the last token, or with another LayerNorm eps loaded into ``clip.load`` with no error and features up to 2.9 off).
"""
from __future__ import annotations

from typing import Any

from ..constants import OPENAI_VOCAB_SIZE
from ..errors import UnsupportedError
from .form import OpenClipForm

LN_EPS = 1e-5
# what OpenAI's code builds, for every open_clip option it does not read from the shapes
COMMON = {"ls_init_value": None, "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False,
          "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
          "scale_fc": False, "mlp_ratio": 4.0}
VISION = {**COMMON, "head_width": 64, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
          "final_ln_after_pool": False, "pool_type": "tok", "timm_model_name": None}
TEXT = {**COMMON, "context_length": 77, "vocab_size": OPENAI_VOCAB_SIZE, "hf_tokenizer_name": None,
        "tokenizer_mode": None, "tokenizer_kwargs": None, "embed_cls": False, "no_causal_mask": False,
        "final_ln_after_pool": False, "pool_type": "argmax", "proj_bias": False, "proj_type": "linear",
        "hf_model_name": None}
MODEL = {"custom_text": False, "multimodal_cfg": None, "nonscalar_logit_scale": False}
# read from the shapes (sizes), or changing nothing in eval-mode outputs
READ = {"vision_cfg": {"layers", "width", "image_size", "patch_size", "patch_dropout", "output_tokens",
                       "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool", "timm_proj",
                       "timm_proj_bias", "timm_drop", "timm_drop_path"},
        "text_cfg": {"width", "layers", "pad_id", "eos_id", "output_tokens", "hf_model_pretrained",
                     "hf_proj_type", "hf_pooler_type"},
        "": {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "cast_dtype", "output_dict",
             "init_logit_bias"}}  # a logit bias is refused by its tensor


def _same(value: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) == want
    return value == want or (want is None and value in ({}, "")) or (want is False and value is None)


def _square(value: Any) -> "int | None":
    """A square size as one int (``[32, 32]`` → 32); None for a non-square one."""
    if isinstance(value, (list, tuple)):
        return int(value[0]) if len(value) == 2 and value[0] == value[1] else None
    return int(value)


def _options(cfg: dict, defaults: dict, where: str) -> list[str]:
    problems = []
    for key, value in cfg.items():
        if key in READ[where]:
            continue
        if key == "norm_kwargs" and set(value or {}) <= {"eps"} and float((value or {}).get("eps", LN_EPS)) == LN_EPS:
            continue
        if key in defaults and _same(value, defaults[key]):
            continue
        shown = f"{where}.{key}" if where else key
        want = ("" if key not in defaults else " (OpenAI's code builds eps 1e-05)" if key == "norm_kwargs"
                else " (OpenAI's code has none)" if defaults[key] is None
                else f" (OpenAI's code builds {defaults[key]!r})")
        problems.append(f"{shown} = {value!r}{want}")
    return problems


def _shapes_read(vision: dict, text: dict, own_tokenizer: bool) -> list[str]:
    """What OpenAI's code infers from shapes otherwise: heads, MLP ratio, square sizes, the tokenizer's."""
    problems = []
    width = int(text.get("width", 512))
    if int(text.get("heads", 8)) != max(1, width // 64):
        problems.append(f"its text tower has {text.get('heads')} heads where OpenAI's code infers width // 64 = "
                        f"{width // 64}")
    if int(vision.get("head_width", 64)) != 64:  # OpenAI's code infers width // 64 heads (width * 32 // 64 for a
        problems.append(f"its image tower's heads are {vision.get('head_width')} wide where OpenAI's code infers "
                        "64")  # ResNet's attention pool): other widths loaded with features 0.19 off
    for side, tower in (("image", vision), ("text", text)):
        if float(tower.get("mlp_ratio", 4.0)) != 4.0:
            problems.append(f"its {side} tower's MLP ratio is {tower.get('mlp_ratio')} where OpenAI's code builds 4")
    vocab, context = int(text.get("vocab_size", OPENAI_VOCAB_SIZE)), int(text.get("context_length", 77))
    if not own_tokenizer and (vocab != OPENAI_VOCAB_SIZE or context != 77):  # else said once, naming the tokenizer
        problems.append("its tokenizer is not OpenAI's (vocabulary 49408, context 77)")
    for key in ("image_size", "patch_size"):
        if vision.get(key) is not None and _square(vision[key]) is None:
            problems.append(f"vision_cfg.{key} = {vision[key]!r} is not square (OpenAI's code builds square images "
                            "and patches)")
    return problems


def check_openai_compatible(form: OpenClipForm) -> None:
    """Refuse, in one line naming each, every option of ``form`` that OpenAI's ``clip.build_model`` would rebuild
    otherwise (it reads only the shapes) — or that ``clip.load`` cannot load."""
    cfg = form.model_cfg
    vision, text = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
    problems = []
    if not cfg.get("quick_gelu", False):
        problems.append("it uses GELU (OpenAI's code always builds QuickGELU)")
    if form.state_dict.get("logit_bias") is not None:
        problems.append("it has a SigLIP logit bias")
    if form.tokenizer is not None:
        problems.append(f"its tokenizer ({type(form.tokenizer).__name__}) is not OpenAI's")
    problems += _shapes_read(vision, text, form.tokenizer is not None)
    shape_keys = {"heads", "head_width", "mlp_ratio", "vocab_size", "context_length"}
    problems += _options({k: v for k, v in cfg.items() if k not in READ[""]}, MODEL, "")
    problems += _options({k: v for k, v in vision.items() if k not in shape_keys}, VISION, "vision_cfg")
    problems += _options({k: v for k, v in text.items() if k not in shape_keys}, TEXT, "text_cfg")
    if problems:
        raise UnsupportedError(f"{form.source} cannot be written in OpenAI's format: " + "; ".join(problems)
                               + ". Convert it to open_clip, hf or safetensors instead")
