"""What the CLIP and SigLIP ⇄ HF conversions share: state-dict cleaning, the open_clip residual-block key
table, refusing options HF's classes cannot express, moving tensors by key (:class:`TensorMap`), shape
checks against the HF model, and writing weights and image-processor configs.

Torch is imported where a function needs it, so that naming these modules (``clipzoo convert``) stays cheap.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..checkpoints import strip_prefixes
from ..errors import CheckpointError, UnsupportedError

LN_EPS = 1e-5  # torch.nn.LayerNorm's default: open_clip's unless norm_kwargs says otherwise

# open_clip residual block → HF encoder layer (in_proj, q|k|v stacked, is split separately)
BLOCK = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
# keys that change nothing in eval-mode outputs or only describe the tokenizer / training
HARMLESS = {"patch_dropout", "output_tokens", "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs",
            "timm_drop", "timm_drop_path", "pad_id"}
# open_clip's text_cfg defaults (CLIP's causal text transformer, also SigLIP's without the mask)
TEXT_DEFAULTS = {"mlp_ratio": 4.0, "ls_init_value": None, "embed_cls": False, "no_causal_mask": False,
                 "final_ln_after_pool": False, "pool_type": "argmax", "proj_bias": False, "proj_type": "linear",
                 "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False,
                 "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
                 "scale_fc": False, "eos_id": 2}


# ------------------------------------------------------------------------------------------ configs
def ignored(key: str) -> bool:
    """Non-persistent buffers that no conversion carries (``attn_mask``, ``position_ids``)."""
    return key.endswith(("attn_mask", "position_ids"))


def clean(sd: dict) -> dict:
    """Plain tensors, no non-persistent buffers (``attn_mask``, ``position_ids``), no ``module.`` prefixes."""
    import torch

    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and not ignored(k)}
    return strip_prefixes(sd)


def square(value, what: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UnsupportedError(f"{source}: {what} {tuple(value)} is not square; HF's CLIP and SigLIP configs "
                                   "take one size for both sides. Convert it to safetensors or onnx instead")
        value = value[0]
    return int(value)


def eps(cfg: dict) -> float:
    return float((cfg.get("norm_kwargs") or {}).get("eps", LN_EPS))


def check_options(cfg: dict, defaults: dict, where: str, source: str, allowed: set[str],
                  family: str = "CLIPModel") -> None:
    """Refuse every key of ``cfg`` that is neither known-harmless, nor mapped (``allowed``), nor at its default."""
    for key, value in cfg.items():
        if key in HARMLESS or key in allowed:
            continue
        if key in defaults and value == defaults[key]:
            continue
        if key == "norm_kwargs" and set(value or {}) <= {"eps"}:
            continue
        want = f" (HF's form needs {defaults[key]!r})" if key in defaults else ""
        raise UnsupportedError(
            f"{source}: {where}.{key} = {value!r} has no equivalent in HF's {family}{want}; the model can be "
            "converted to safetensors or onnx, not to HF")


def mlp_ratio(width: int, hidden: int) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:  # open_clip builds int(width * mlp_ratio)
        ratio = (hidden + 0.5) / width
    return ratio


# ------------------------------------------------------------------------------------------ tensors
class TensorMap:
    """Tensors moved from a source state dict into a new one by key — never recomputed — recording which
    source keys were used, so that the ones the target has no place for can be refused.

    ``lacks``: what follows "``{source} lacks 'key'``" when a key is missing (each call may say otherwise).
    """

    def __init__(self, sd: dict, source: str, lacks: str = ""):
        self.sd, self.source, self.lacks = sd, source, lacks
        self.out: dict[str, Any] = {}
        self.used: set[str] = set()

    def get(self, key: str, lacks: str | None = None):
        if key not in self.sd:
            raise CheckpointError(f"{self.source} lacks {key!r}{self.lacks if lacks is None else lacks}")
        self.used.add(key)
        return self.sd[key]

    def take(self, src: str, dst: str, *, transpose: bool = False, shape=None) -> None:
        t = self.get(src)
        if transpose:
            t = t.t().contiguous()
        self.out[dst] = t if shape is None else t.reshape(shape)

    def split(self, src: str, dsts: list[str], sizes, lacks: str | None = None) -> None:
        """One stacked tensor (``in_proj``: q|k|v) into parts along dim 0; the values move unchanged."""
        for dst, part in zip(dsts, self.get(src, lacks).split(sizes, dim=0)):
            self.out[dst] = part.contiguous()

    def cat(self, srcs: list[str], dst: str, lacks: str | None = None) -> None:
        """Parts stacked along dim 0 into one tensor (the reverse of :meth:`split`)."""
        import torch

        for key in srcs:  # the first missing key is the one reported
            if key not in self.sd:
                self.get(key, lacks)
        self.out[dst] = torch.cat([self.get(k) for k in srcs], dim=0)

    def refuse_leftovers(self, target: str, hint: str = "") -> dict:
        """``out``, after refusing any source tensor that was not moved (``target`` has no place for it)."""
        left = sorted(set(self.sd) - self.used)
        if left:
            raise CheckpointError(f"{self.source} has {len(left)} tensor(s) {target} has no place for "
                                  f"({', '.join(left[:6])}{', …' if len(left) > 6 else ''}){hint}")
        return self.out


def check_shapes(config, hf_sd: dict, source: str) -> None:
    """Build the HF model on the meta device and compare every shape, so that a wrong config fails here."""
    import torch
    from transformers import CLIPModel, SiglipModel

    cls = SiglipModel if type(config).__name__ == "SiglipConfig" else CLIPModel
    with torch.device("meta"):
        model = cls(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if not ignored(k)}
    got = {k: tuple(v.shape) for k, v in hf_sd.items()}
    bad = [f"{k} {got.get(k)} vs {want.get(k)}" for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    if bad:
        raise CheckpointError(f"{source} does not fit the HF {cls.__name__} its config describes: "
                              + "; ".join(bad[:4]) + ("; …" if len(bad) > 4 else "") + ". Check the model config")


def hf_parts(hf, hf_config, expect: str):
    """(state dict, config as a transformers config object) from a model, or a state dict + config."""
    import torch
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
    sd = strip_prefixes({k: v for k, v in sd.items() if not ignored(k)})
    return sd, hf_config


# ------------------------------------------------------------------------------------------ files
def write_weights(folder: Path, hf_sd: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in hf_sd.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def image_processor(cls, image_size: int, mean, std, interpolation: str, resize_mode: str):
    """An HF image processor of class ``cls`` equal to open_clip's transform with these settings."""
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
