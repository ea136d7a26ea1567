"""A tiny random open_clip ConvNeXt CLIP (timm trunk), as open_clip builds its ``convnext_*`` models.

open_clip names the trunk by ``vision_cfg.timm_model_name``; timm has no ConvNeXt small enough for a test
with ``conv_mlp=False`` (the layout of ``convnext_base`` / ``convnext_large``), so :func:`register` adds one
to timm's registry in this process: :data:`TINY_TIMM_NAME`, depths :data:`TINY_DEPTHS`, widths
:data:`TINY_DIMS`. Then open_clip's own ``CLIP(**TINY_CONVNEXT_CONFIG)`` and ``local-dir:`` folders build it.
``proj="mlp"`` gives open_clip's ``convnext_large_d`` head (fc1 + GELU + fc2), ``"linear"`` the others'.
Run ``python -m clipzoo.testing.tiny_convnext OUT_DIR``.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from .entry import run_writer
from .tiny import OPENAI_PREPROCESS

TINY_TIMM_NAME = "clipzoo_tiny_convnext"
TINY_DEPTHS = (1, 1, 2, 1)
TINY_DIMS = (8, 16, 24, 32)
TINY_IMAGE_SIZE = 64


def tiny_convnext_config(proj: str = "linear", image_size: int = TINY_IMAGE_SIZE) -> dict:
    """open_clip's model config of the tiny ConvNeXt CLIP (``proj``: ``"linear"`` or ``"mlp"``)."""
    return {"embed_dim": 32,
            "vision_cfg": {"timm_model_name": TINY_TIMM_NAME, "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": proj, "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": image_size},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}


def register() -> str:
    """Add the tiny ConvNeXt to timm's registry (once per process); returns its name."""
    import timm
    from timm.models import register_model
    from timm.models.convnext import ConvNeXt

    if TINY_TIMM_NAME in timm.list_models(TINY_TIMM_NAME):
        return TINY_TIMM_NAME

    def clipzoo_tiny_convnext(pretrained: bool = False, **kwargs):
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        model = ConvNeXt(depths=TINY_DEPTHS, dims=TINY_DIMS, **kwargs)
        model.default_cfg = model.pretrained_cfg = {}
        return model

    register_model(clipzoo_tiny_convnext)
    return TINY_TIMM_NAME


def tiny_convnext_model(seed: int = 0, proj: str = "linear", image_size: int = TINY_IMAGE_SIZE):
    """open_clip's CLIP with the tiny timm ConvNeXt trunk and random (seeded) weights, in eval mode."""
    import torch
    from open_clip import CLIP

    register()
    torch.manual_seed(seed)
    model = CLIP(**copy.deepcopy(tiny_convnext_config(proj, image_size))).eval()
    with torch.no_grad():  # every tensor non-trivial: layer scales 1e-6 and LayerNorms 1/0 would hide errors
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.copy_(0.5 + 0.1 * torch.randn_like(p))
            elif name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(float(torch.log(torch.tensor(1 / 0.07))))
    return model


def write_convnext_hub_folder(folder: "str | os.PathLike", seed: int = 0, proj: str = "linear") -> Path:
    """open_clip's hub layout (``open_clip_config.json`` + ``open_clip_model.safetensors``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": tiny_convnext_config(proj), "preprocess_cfg": OPENAI_PREPROCESS}, indent=2))
    sd = tiny_convnext_model(seed, proj).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def write_all(out: "str | os.PathLike", seed: int = 0) -> dict[str, Path]:
    out = Path(out)
    return {"convnext_linear": write_convnext_hub_folder(out / "tiny-convnext", seed),
            "convnext_mlp": write_convnext_hub_folder(out / "tiny-convnext-mlp", seed, proj="mlp")}


def main(argv: list[str] | None = None) -> None:
    run_writer("clipzoo.testing.tiny_convnext", "Write a tiny random open_clip ConvNeXt CLIP (timm trunk, "
               "linear and mlp heads) in open_clip's hub layout.", write_all, argv)


if __name__ == "__main__":
    main()
