"""Configurations of the MindSpore CLIP (:mod:`clipzoo.models.mindspore_clip`): MindSpore-CLIP's model names.

Torch- and MindSpore-free, so that configs can be listed and conversion plans made without the ``mindspore``
extra. A config is open_clip's model-config JSON (``embed_dim``, ``quick_gelu``, ``vision_cfg``,
``text_cfg``) — the same dict :class:`clipzoo.convert.form.OpenClipForm` carries — restricted to what
MindSpore-CLIP implements: OpenAI's ModifiedResNet or ViT image tower and the causal text transformer.

Names: open_clip's config names that MindSpore-CLIP's ``open_clip`` lists (``RN50``, ``ViT-B-32-quickgelu``, …),
OpenAI's model names as its ``clip.available_models()`` spells them (``ViT-B/32``, ``ViT-L/14@336px``, …; always
QuickGELU), and two tiny configs per family for tests (``tiny-RN``, ``tiny-ViT``; ``-quickgelu`` variants).
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError, ClipzooError, warn_user

DEFAULT_VOCAB_SIZE = 49408
DEFAULT_CONTEXT_LENGTH = 77
# the .ckpt entry (a string: the open_clip model config as JSON) that clipzoo writes beside the weights; MindSpore's
# load_checkpoint returns it as a str and load_param_into_net skips it, so MindSpore-CLIP's classes still load the file
CONFIG_ENTRY = "clipzoo_model_config"
# the open_clip preprocessing config a .ckpt written by clipzoo records in its model config (converted from a model
# whose preprocessing is not OpenAI's): clipzoo's conversion back to open_clip restores it
PREPROCESS_KEY = "preprocess_cfg"
VISION_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}


def _cfg(embed: int, image: int, layers: "int | list[int]", width: int, patch: "int | None", t_width: int,
         t_heads: int, t_layers: int = 12, **vision: Any) -> dict[str, Any]:
    return {"embed_dim": embed,
            "vision_cfg": {"image_size": image, "layers": layers, "width": width, "patch_size": patch, **vision},
            "text_cfg": {"context_length": DEFAULT_CONTEXT_LENGTH, "vocab_size": DEFAULT_VOCAB_SIZE,
                         "width": t_width, "heads": t_heads, "layers": t_layers}}


# open_clip's model_configs/*.json of the models MindSpore-CLIP's open_clip ships (its model_configs folder)
_BASE: dict[str, dict[str, Any]] = {
    "RN50": _cfg(1024, 224, [3, 4, 6, 3], 64, None, 512, 8),
    "RN101": _cfg(512, 224, [3, 4, 23, 3], 64, None, 512, 8),
    "RN50x4": _cfg(640, 288, [4, 6, 10, 6], 80, None, 640, 10),
    "RN50x16": _cfg(768, 384, [6, 8, 18, 8], 96, None, 768, 12),
    "RN50x64": _cfg(1024, 448, [3, 15, 36, 10], 128, None, 1024, 16),
    "ViT-B-32": _cfg(512, 224, 12, 768, 32, 512, 8),
    "ViT-B-16": _cfg(512, 224, 12, 768, 16, 512, 8),
    "ViT-L-14": _cfg(768, 224, 24, 1024, 14, 768, 12),
    "ViT-L-14-336": _cfg(768, 336, 24, 1024, 14, 768, 12),
    "ViT-H-14": _cfg(1024, 224, 32, 1280, 14, 1024, 16, 24, head_width=80),
    "ViT-bigG-14": _cfg(1280, 224, 48, 1664, 14, 1280, 20, 32, head_width=104, mlp_ratio=4.9231),
    # tiny random-weight models of each family (tests, parity checks); CLIP's real tokenizer
    # (OpenAI's rules hold: 64-wide heads, so config_from_shapes reads them back)
    "tiny-RN": _cfg(64, 64, [1, 1, 1, 1], 16, None, 128, 2, 2),
    "tiny-ViT": _cfg(64, 32, 2, 128, 8, 128, 2, 2),
}
MODEL_CONFIGS: dict[str, dict[str, Any]] = {**_BASE}
for _name in ("RN50", "RN101", "ViT-B-32", "tiny-RN", "tiny-ViT"):
    MODEL_CONFIGS[f"{_name}-quickgelu"] = {**copy.deepcopy(_BASE[_name]), "quick_gelu": True}

# OpenAI's names (openai/clip and MindSpore-CLIP's clip.available_models()) -> config; OpenAI's models use QuickGELU
OPENAI_MODELS: dict[str, str] = {
    "RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "RN50x16": "RN50x16", "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336",
}


def list_configs() -> tuple[str, ...]:
    return tuple(MODEL_CONFIGS) + tuple(n for n in OPENAI_MODELS if n not in MODEL_CONFIGS)


def get_config(model: "str | Mapping[str, Any]", openai: bool = False) -> dict[str, Any]:
    """A checked open_clip-style config by name (open_clip's or OpenAI's) or from a dict; ``openai=True`` forces
    QuickGELU (OpenAI's weights), as open_clip does for its ``openai`` tag."""
    if isinstance(model, str):
        if model in MODEL_CONFIGS:
            cfg = copy.deepcopy(MODEL_CONFIGS[model])
        elif model in OPENAI_MODELS:
            cfg, openai = copy.deepcopy(MODEL_CONFIGS[OPENAI_MODELS[model]]), True
        else:
            raise ClipzooError(f"unknown MindSpore CLIP config {model!r}; use one of: {', '.join(list_configs())}")
    elif isinstance(model, Mapping):
        cfg = check_config(model)
    else:
        raise ClipzooError(f"model= must name a MindSpore CLIP config or be an open_clip model config dict, "
                           f"not {type(model).__name__}")
    if openai:
        cfg["quick_gelu"] = True
    return cfg


def check_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """An open_clip model config that MindSpore-CLIP's architecture covers (else a one-line ClipzooError), a square
    ``image_size`` / ``patch_size`` list (``[32, 32]``, which open_clip takes) as one int; the open_clip preprocessing
    config :data:`PREPROCESS_KEY` (what a ``.ckpt`` converted from another model records) is kept as it is."""
    cfg = copy.deepcopy(dict(model_cfg))
    vision, text = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
    odd = sorted({k for k, v in vision.items() if k not in VISION_KEYS and v not in (None, False, 0, 0.0)}
                 | {f"text_cfg.{k}" for k, v in text.items() if k not in TEXT_KEYS and v not in (None, False)}
                 | {k for k in cfg if k not in ("embed_dim", "quick_gelu", "vision_cfg", "text_cfg", PREPROCESS_KEY)
                    and cfg[k] not in (None, False)})
    if odd or "embed_dim" not in cfg or float(text.get("mlp_ratio", 4.0)) != 4.0:
        raise ClipzooError("this model is not one the MindSpore engine implements (OpenAI's ModifiedResNet or ViT "
                           f"and causal text transformer); unsupported: {', '.join(odd) or 'its text mlp_ratio'}")
    if not isinstance(cfg.get(PREPROCESS_KEY, {}), Mapping):
        raise ClipzooError(f"the model config's {PREPROCESS_KEY} is not an open_clip preprocessing config (a JSON "
                           "object)")
    cfg["vision_cfg"] = {k: _one_size(k, v) for k, v in vision.items() if k in VISION_KEYS}
    cfg["text_cfg"] = {k: v for k, v in text.items() if k in TEXT_KEYS}
    return cfg


def _one_size(key: str, value: Any) -> Any:
    """A square ``[s, s]`` image or patch size as ``s``; a non-square one refused (MindSpore-CLIP takes one size)."""
    if key not in ("image_size", "patch_size") or not isinstance(value, (list, tuple)):
        return value
    if len(value) != 2 or value[0] != value[1]:
        raise ClipzooError(f"vision_cfg.{key} = {list(value)} is not square, and the MindSpore engine (MindSpore-CLIP) "
                           "takes one size for both sides; convert it to open_clip, safetensors or onnx instead")
    return int(value[0])


def is_resnet(cfg: Mapping[str, Any]) -> bool:
    return isinstance(cfg["vision_cfg"].get("layers"), (list, tuple))


def tower_sizes(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Every size the cells need, with open_clip's defaults filled in."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    head_width = int(v.get("head_width", 64))
    width = int(v.get("width", 768))
    resnet = is_resnet(cfg)
    return {
        "embed_dim": int(cfg["embed_dim"]), "quick_gelu": bool(cfg.get("quick_gelu", False)), "resnet": resnet,
        "image_size": int(v.get("image_size", 224)), "vision_layers": list(v["layers"]) if resnet
        else int(v.get("layers", 12)), "vision_width": width,
        "vision_heads": width * 32 // head_width if resnet else width // head_width,
        "patch_size": int(v.get("patch_size") or 0), "mlp_ratio": float(v.get("mlp_ratio", 4.0)),
        "context_length": int(t.get("context_length", DEFAULT_CONTEXT_LENGTH)),
        "vocab_size": int(t.get("vocab_size", DEFAULT_VOCAB_SIZE)), "text_width": int(t.get("width", 512)),
        "text_heads": int(t.get("heads", 8)), "text_layers": int(t.get("layers", 12)),
    }


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The OpenAI-style config of a checkpoint in MindSpore-CLIP's names, read from its shapes as MindSpore-CLIP's
    ``build_model`` reads them (heads = width // 64, QuickGELU): enough for OpenAI's models and tiny ones."""
    try:
        if "visual.proj" in shapes:
            width, _, patch, _ = shapes["visual.conv1.weight"]
            grid = round(math.sqrt(shapes["visual.positional_embedding"][0] - 1))
            layers: "int | list[int]" = len({k.split(".")[3] for k in shapes
                                              if k.startswith("visual.transformer.resblocks.")})
            vision = {"image_size": patch * grid, "layers": layers, "width": width, "patch_size": patch}
        else:
            layers = [len({k.split(".")[2] for k in shapes if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)]
            width = shapes["visual.layer1.0.conv1.weight"][0]
            grid = round(math.sqrt(shapes["visual.attnpool.positional_embedding"][0] - 1))
            vision = {"image_size": grid * 32, "layers": layers, "width": width, "patch_size": None}
        t_width = shapes["ln_final.gamma"][0]
        text = {"context_length": shapes["positional_embedding"][0],
                "vocab_size": shapes["token_embedding.embedding_table"][0], "width": t_width,
                "heads": max(1, t_width // 64),
                "layers": len({k.split(".")[2] for k in shapes if k.startswith("transformer.resblocks.")})}
        return {"embed_dim": shapes["text_projection"][1], "quick_gelu": True, "vision_cfg": vision, "text_cfg": text}
    except (KeyError, ValueError, IndexError) as exc:
        raise ClipzooError(f"cannot read a CLIP config from this checkpoint's parameter names (no {exc}); pass "
                           f"model=NAME (one of {', '.join(list_configs())})") from None


def config_of(params: Mapping[str, Any], source: str, model: "str | Mapping[str, Any] | None" = None,
              openai: bool = False, guess_warning: bool = True) -> dict[str, Any]:
    """The config of checkpoint ``params`` (from ``source``): ``model`` when given, else the config stored in its
    :data:`CONFIG_ENTRY`, else read from its shapes (:func:`config_from_shapes`; with ``guess_warning``, a warning
    that says what was guessed and how to name the config)."""
    if model is not None:
        return get_config(model, openai=openai)
    stored = params.get(CONFIG_ENTRY)
    if stored is not None:
        try:
            cfg = json.loads(stored)
        except (TypeError, ValueError):
            cfg = None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{source}: its {CONFIG_ENTRY} entry is not an open_clip model config (JSON); "
                                  "name the config with model= (--model)")
        return get_config(cfg, openai=openai)
    cfg = config_from_shapes({k: tuple(getattr(v, "shape", ())) for k, v in params.items()})
    if guess_warning:
        v = cfg["vision_cfg"]
        tower = "ResNet" if is_resnet(cfg) else f"ViT (patch {v['patch_size']})"
        warn_user(f"{source} stores no model config: read one from its shapes as MindSpore-CLIP's build_model does "
                  f"({tower}, image size {v['image_size']}, width {v['width']}, 64-wide heads, QuickGELU); if the "
                  "model differs (a GELU open_clip model, other heads), name its config with model= (--model)")
    return get_config(cfg, openai=openai)
