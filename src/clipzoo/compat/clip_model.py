"""``clip.model`` of the openai ``clip`` drop-in (:func:`clipzoo.compat.clip.install`): ``build_model`` from an
OpenAI-layout state dict, ``convert_weights`` and the ``CLIP`` class, over open_clip's modules.

``build_model(state_dict)`` does what openai's does — the architecture read from the tensor shapes (QuickGELU),
the weights of the matmuls and convolutions in float16, the model in eval mode — and returns the module
:func:`clipzoo.compat.clip.load` returns: open_clip's ``CLIP`` with openai's ``forward``, ``dtype`` and
internals (:class:`~clipzoo.compat._models.OpenAICLIP`), so ``model.float()`` on a CPU gives what openai's gives.
"""
from __future__ import annotations

import torch
from torch import nn

from ..backends.open_clip_plan import openai_config
from ._models import OpenAICLIP, as_openai_module

__all__ = ["CLIP", "build_model", "convert_weights"]

CLIP = OpenAICLIP
_HALF_ATTRIBUTES = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k",
                    "bias_v", "text_projection", "proj")


def convert_weights(model: nn.Module) -> None:
    """The weights openai keeps in float16, made float16 in place: convolutions, linear layers, attention
    projections and the two output projections (norms, embeddings and the logit scale stay as they are)."""
    def halve(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            for p in (module.weight, module.bias):
                if p is not None:
                    p.data = p.data.half()
        for name in _HALF_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor) and name in module._parameters:
                value.data = value.data.half()

    model.apply(halve)


def build_model(state_dict: dict) -> OpenAICLIP:
    """An OpenAI-layout state dict -> the model openai's ``build_model`` gives (float16 matmuls, eval mode)."""
    from open_clip.model import CLIP as OpenClipCLIP

    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length",
                                                                   "vocab_size")}
    cfg = openai_config(state_dict, "state_dict")
    model = OpenClipCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True)
    model = as_openai_module(model, cfg["vision_cfg"]["image_size"])
    convert_weights(model)
    model.load_state_dict(state_dict)
    return model.eval()
