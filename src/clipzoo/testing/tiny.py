"""Tiny random-weight CLIP models written in each real checkpoint format.

Formats: OpenAI TorchScript archive and plain state dict; open_clip .pt (with a ``state_dict``
wrapper and ``module.`` prefixes, as open_clip's trainer saves) and .safetensors; an open_clip hub
folder (``open_clip_config.json`` + weights). Run ``python -m clipzoo.testing.tiny OUT_DIR``.

The tiny model keeps CLIP's real tokenizer (vocab 49408, context 77) and OpenAI's layout (QuickGELU,
head width 64) so that openai's own ``clip.load`` can read the same files.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from .entry import run_writer

TINY_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
# A SigLIP-style variant (sigmoid loss: a learned logit bias) and a CoCa variant of the tiny model.
TINY_SIGLIP_CONFIG = {**TINY_CONFIG, "init_logit_bias": -10.0}
TINY_COCA_CONFIG = {  # CoCa's decoder needs embed_dim == multimodal width
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "attentional_pool": True,
                   "attn_pooler_heads": 1, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1,
                       "attn_pooler_heads": 1},
    "custom_text": True,
}
# A tiny ViT with exact GELU and 2 heads: the layout the fused ONNX export and static int8 recognise (ViT-B/32's).
TINY_VIT_CONFIG = {**TINY_CONFIG, "quick_gelu": False,
                   "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}}
OPENAI_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                     "interpolation": "bicubic", "resize_mode": "shortest"}


def tiny_model(seed: int = 0, config: dict | None = None):
    """An open_clip CLIP with the tiny config and random (seeded) weights, in eval mode."""
    from open_clip import CLIP, CoCa

    cfg = copy.deepcopy(config or TINY_CONFIG)
    torch.manual_seed(seed)
    cls = CoCa if "multimodal_cfg" in cfg else CLIP
    cfg.pop("custom_text", None)
    model = cls(**cfg).eval()
    with torch.no_grad():  # make every tensor non-trivial (open_clip inits some to zeros/ones)
        decoder = getattr(model, "text_decoder", None)
        if decoder is not None:  # open_clip's CoCa leaves its decoder's projection as torch.empty memory:
            decoder.text_projection.zero_()  # zeroed, it gets the same seeded noise as the rest below
        for name, p in model.named_parameters():
            if name not in ("logit_scale", "logit_bias"):
                p.add_(torch.randn_like(p) * 0.02)
        model.logit_scale.fill_(float(torch.log(torch.tensor(1 / 0.07))))
    return model


def state_dict(seed: int = 0, fp16: bool = False, config: dict | None = None) -> dict:
    """The tiny model's weights; ``fp16=True`` rounds them as OpenAI's released files are stored."""
    return {k: (v.half() if fp16 and v.is_floating_point() else v).clone()
            for k, v in tiny_model(seed, config).state_dict().items()}


def _openai_call_convention(model):
    """Re-class the tiny open_clip CLIP to openai/CLIP's ``CLIP`` call convention, as OpenAI traced it:
    ``forward(image, text)`` -> ``(logits_per_image, logits_per_text)``, ``encode_image`` casting the
    pixels to the weights' dtype, and ``input_resolution`` / ``context_length`` / ``vocab_size`` buffers
    (what openai's ``load(jit=True)`` reads and ``build_model`` drops)."""
    base = type(model)

    class OpenAIStyleCLIP(base):
        def encode_image(self, image):
            return base.encode_image(self, image.type(self.visual.conv1.weight.dtype))

        def encode_text(self, text):
            return base.encode_text(self, text)

        def forward(self, image, text):
            image_features = self.encode_image(image)
            text_features = self.encode_text(text)
            image_features = image_features / image_features.norm(dim=1, keepdim=True)
            text_features = text_features / text_features.norm(dim=1, keepdim=True)
            logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
            return logits_per_image, logits_per_image.t()

    model.__class__ = OpenAIStyleCLIP
    text_cfg = TINY_CONFIG["text_cfg"]
    sizes = {"input_resolution": TINY_CONFIG["vision_cfg"]["image_size"],
             "context_length": text_cfg["context_length"], "vocab_size": text_cfg["vocab_size"]}
    for name, value in sizes.items():
        model.__dict__.pop(name, None)  # open_clip keeps two of them as plain ints
        model.register_buffer(name, torch.tensor(value))
    return model


def write_openai_jit(path: "str | os.PathLike", seed: int = 0) -> Path:
    """A TorchScript archive shaped like OpenAI's downloads, which openai's own ``clip.load`` reads with
    ``jit=True`` and ``jit=False``: traced in float16 (so the graph holds the fp16 casts openai's CPU
    patch rewrites), ``forward`` / ``encode_image`` / ``encode_text`` with openai's semantics, OpenAI's
    state-dict keys plus the ``input_resolution`` / ``context_length`` / ``vocab_size`` buffers."""
    model = _openai_call_convention(tiny_model(seed)).half()
    # OpenAI's archives hold only weights in their state dict: keep the causal mask a traced constant
    mask = model._buffers.pop("attn_mask")
    object.__setattr__(model, "attn_mask", mask)
    size = TINY_CONFIG["vision_cfg"]["image_size"]
    image = torch.randn(1, 3, size, size, dtype=torch.float16)
    text = torch.zeros(1, TINY_CONFIG["text_cfg"]["context_length"], dtype=torch.long)
    traced = torch.jit.trace_module(model, {"forward": (image, text), "encode_text": (text,),
                                            "encode_image": (image,)})
    traced.save(str(path))
    return Path(path)


def write_openai_state_dict(path: "str | os.PathLike", seed: int = 0) -> Path:
    torch.save(state_dict(seed, fp16=True), str(path))
    return Path(path)


def write_open_clip_pt(path: "str | os.PathLike", seed: int = 0, wrapped: bool = True) -> Path:
    """As open_clip's trainer saves: ``{"epoch", "name", "state_dict": {"module.…": …}}``."""
    sd = state_dict(seed)
    obj = {"epoch": 1, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in sd.items()}} if wrapped else sd
    torch.save(obj, str(path))
    return Path(path)


def write_open_clip_safetensors(path: "str | os.PathLike", seed: int = 0, embed_config: bool = False,
                                config: dict | None = None) -> Path:
    """open_clip's .safetensors of the tiny model (``config``: another tiny config), its config in the metadata
    with ``embed_config``."""
    from safetensors.torch import save_file

    config = TINY_CONFIG if config is None else config
    meta = {"format": "pt"}
    if embed_config:
        meta["open_clip_config"] = json.dumps({"model_cfg": config, "preprocess_cfg": OPENAI_PREPROCESS})
    save_file({k: v.contiguous() for k, v in state_dict(seed, config=config).items()}, str(path), metadata=meta)
    return Path(path)


def write_open_clip_hub_folder(folder: "str | os.PathLike", seed: int = 0, safetensors: bool = True,
                               config: dict | None = None) -> Path:
    """What open_clip's ``push_to_hf_hub`` writes: ``open_clip_config.json`` + weights."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": config or TINY_CONFIG, "preprocess_cfg": OPENAI_PREPROCESS}, indent=2))
    sd = state_dict(seed, config=config)
    if safetensors:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(sd, str(folder / "open_clip_pytorch_model.bin"))
    return folder


def write_all(out: "str | os.PathLike", seed: int = 0) -> dict[str, Path]:
    """Every open_clip/OpenAI format into ``out``; returns {format: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "openai_jit": write_openai_jit(out / "tiny-openai-jit.pt", seed),
        "openai_state_dict": write_openai_state_dict(out / "tiny-openai-sd.pt", seed),
        "open_clip_pt": write_open_clip_pt(out / "tiny-open_clip.pt", seed),
        "open_clip_safetensors": write_open_clip_safetensors(out / "tiny-open_clip.safetensors", seed,
                                                             embed_config=True),
        "open_clip_hub": write_open_clip_hub_folder(out / "tiny-open_clip-hub", seed),
    }


def main(argv: list[str] | None = None) -> None:
    run_writer("clipzoo.testing.tiny", "Write the same tiny random CLIP in every checkpoint format clipzoo "
               "reads (OpenAI TorchScript and state dict, open_clip .pt / .safetensors / hub folder).",
               write_all, argv)


if __name__ == "__main__":
    main()
