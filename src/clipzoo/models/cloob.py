"""CLOOB (crowsonkb/cloob-training) in PyTorch, from its JAX/Haiku parameters.

The trained model is the Haiku one (``cloob_training/model.py``); its repository also has a PyTorch port
(``model_pt.py``) with a Haiku -> PyTorch mapping, whose parameter names this module keeps. Both towers are
pre-norm transformers (LayerNorm, multi-head attention with biases, a GELU MLP of 4x width) pooled at position 0
(the class token for images, the start-of-text token for texts), projected by a Linear and L2-normalised.

What the text tower does, as CLOOB does it:
- it attends bidirectionally over all 77 positions; its padding mask (True up to and including the first
  end-of-text token, id ``vocab_size - 1``) is applied to the *queries* (``mask[:, None, :, None]``, noted as a
  bug in CLOOB's code): a padded position's query row is all ``-1e30`` and averages every value uniformly, while
  the keys are never masked — so the padding tokens reach the features, and texts are always 77 tokens long;
- GELU is JAX's default (``jax.nn.gelu``: the tanh approximation), which the model was trained with; the PyTorch
  port uses the exact erf GELU (``gelu="exact"`` reproduces the port).

Haiku's layouts: ``Linear.w`` is (in, out), ``Conv2D.w`` is HWIO, ``LayerNorm`` has ``scale`` / ``offset``,
``Embed`` has ``embeddings``; modules are named ``vi_t_image_encoder/layer_3/self_attention/multi_head_attention/
query`` and so on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArchitectureMismatchError

IMAGE_BASE, TEXT_BASE = "vi_t_image_encoder", "text_encoder"
NEG = -1e30


@dataclass(frozen=True)
class TowerShape:
    width: int
    layers: int
    heads: int
    d_ff: int
    seq_len: int  # positions (the image's includes the class token)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.heads = heads

    def forward(self, x: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, s, d = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).view(n, s, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        logits = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5  # (n, heads, s, s)
        if query_mask is not None:
            logits = logits.masked_fill(~query_mask[:, None, :, None], NEG)
        attn = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, s, d)
        return self.out(attn)


class FeedForward(nn.Module):
    def __init__(self, width: int, d_ff: int, gelu: str):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear_0, self.linear_1 = nn.Linear(width, d_ff), nn.Linear(d_ff, width)
        self.approximate = "tanh" if gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_1(F.gelu(self.linear_0(self.norm(x)), approximate=self.approximate))


class Layer(nn.Module):
    def __init__(self, shape: TowerShape, gelu: str):
        super().__init__()
        self.attn = SelfAttention(shape.width, shape.heads)
        self.ff = FeedForward(shape.width, shape.d_ff, gelu)

    def forward(self, x: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(x, query_mask)
        return x + self.ff(x)


class PositionalEmbedding(nn.Module):
    def __init__(self, seq_len: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(seq_len, width))


class ImageEncoder(nn.Module):
    def __init__(self, shape: TowerShape, patch_size: int, channels: int, d_embed: int, gelu: str):
        super().__init__()
        self.embed = nn.Conv2d(channels, shape.width, patch_size, patch_size, bias=False)
        self.class_embed = nn.Parameter(torch.zeros(shape.width))
        self.pos_embed = PositionalEmbedding(shape.seq_len, shape.width)
        self.layers = nn.ModuleList(Layer(shape, gelu) for _ in range(shape.layers))
        self.proj = nn.Linear(shape.width, d_embed)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embed.expand(x.shape[0], 1, -1), x], dim=1) + self.pos_embed.weight
        for layer in self.layers:
            x = layer(x)
        return F.normalize(self.proj(x[:, 0]), dim=-1)


class TextEncoder(nn.Module):
    def __init__(self, shape: TowerShape, vocab_size: int, d_embed: int, gelu: str):
        super().__init__()
        self.eot_token = vocab_size - 1
        self.embed = nn.Embedding(vocab_size, shape.width)
        self.pos_embed = PositionalEmbedding(shape.seq_len, shape.width)
        self.layers = nn.ModuleList(Layer(shape, gelu) for _ in range(shape.layers))
        self.proj = nn.Linear(shape.width, d_embed)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        is_eot = tokens == self.eot_token
        upto_eot = (is_eot.long().cumsum(-1) - is_eot.long()) == 0  # up to and including the first end-of-text
        x = self.embed(tokens) + self.pos_embed.weight
        for layer in self.layers:
            x = layer(x, upto_eot)
        return F.normalize(self.proj(x[:, 0]), dim=-1)


class CLOOB(nn.Module):
    def __init__(self, config: dict[str, Any], image_shape: TowerShape, text_shape: TowerShape, patch_size: int,
                 channels: int, vocab_size: int, d_embed: int, gelu: str = "tanh"):
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(image_shape, patch_size, channels, d_embed, gelu)
        self.text_encoder = TextEncoder(text_shape, vocab_size, d_embed, gelu)


# --------------------------------------------------------------------------- Haiku -> PyTorch
def _layer_count(params: dict, base: str) -> int:
    rx = re.compile(rf"^{base}/layer_(\d+)/")
    return len({m[1] for k in params if (m := rx.match(k))})


def _shape(params: dict, base: str, heads: int, seq_len: int, width: int) -> TowerShape:
    d_ff = params[f"{base}/layer_0/feed_forward/linear_0"]["w"].shape[1]
    return TowerShape(width=width, layers=_layer_count(params, base), heads=heads, d_ff=d_ff, seq_len=seq_len)


def build_from_haiku(config: dict, image_params: dict, text_params: dict, gelu: str = "tanh") -> CLOOB:
    """A CLOOB module with the Haiku parameters loaded; sizes from the parameters, head counts from the config."""
    try:
        img_embed = image_params[f"{IMAGE_BASE}/embed"]["w"]  # (p, p, C, width)
        image_shape = _shape(image_params, IMAGE_BASE, config["image_encoder"]["n_heads"],
                             image_params[f"{IMAGE_BASE}/pos_embed"]["w"].shape[0], img_embed.shape[3])
        vocab, width = text_params[f"{TEXT_BASE}/embed"]["embeddings"].shape
        text_shape = _shape(text_params, TEXT_BASE, config["text_encoder"]["n_heads"],
                            text_params[f"{TEXT_BASE}/pos_embed"]["w"].shape[0], width)
        d_embed = image_params[f"{IMAGE_BASE}/proj"]["w"].shape[1]
        model = CLOOB(config, image_shape, text_shape, img_embed.shape[0], img_embed.shape[2], vocab, d_embed, gelu)
        state = {**haiku_to_state(image_params, IMAGE_BASE, "image_encoder"),
                 **haiku_to_state(text_params, TEXT_BASE, "text_encoder")}
    except (KeyError, IndexError, AttributeError) as exc:
        raise ArchitectureMismatchError(f"the CLOOB parameters lack {exc} (Haiku module / parameter names of "
                                        "cloob_training's ViTImageEncoder and TextEncoder expected)") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ArchitectureMismatchError(f"the CLOOB parameters do not fit: missing {result.missing_keys[:6]}, "
                                        f"unexpected {result.unexpected_keys[:6]}")
    return model.eval()


_LINEAR = {"self_attention/multi_head_attention/query": "attn.query", "self_attention/multi_head_attention/key":
           "attn.key", "self_attention/multi_head_attention/value": "attn.value",
           "self_attention/multi_head_attention/linear": "attn.out", "feed_forward/linear_0": "ff.linear_0",
           "feed_forward/linear_1": "ff.linear_1"}
_NORM = {"self_attention/layer_norm": "attn.norm", "feed_forward/layer_norm": "ff.norm"}


def haiku_to_state(params: dict, base: str, prefix: str) -> dict[str, torch.Tensor]:
    """One tower's Haiku parameters (``{module: {name: array}}``) as this module's state dict."""
    def t(a) -> torch.Tensor:
        return torch.as_tensor(a).float()

    state: dict[str, torch.Tensor] = {}
    for module, p in params.items():
        rest = module[len(base):].lstrip("/")
        if rest == "":
            state[f"{prefix}.class_embed"] = t(p["class_embed"])
        elif rest == "embed":
            state[f"{prefix}.embed.weight"] = t(p["embeddings"]) if "embeddings" in p else t(p["w"]).permute(3, 2, 0, 1)
        elif rest == "pos_embed":
            state[f"{prefix}.pos_embed.weight"] = t(p["w"])
        elif rest == "proj":
            state[f"{prefix}.proj.weight"], state[f"{prefix}.proj.bias"] = t(p["w"]).T, t(p["b"])
        else:
            layer, _, sub = rest.partition("/")
            i = int(layer.partition("_")[2])
            if sub in _LINEAR:
                name = f"{prefix}.layers.{i}.{_LINEAR[sub]}"
                state[f"{name}.weight"], state[f"{name}.bias"] = t(p["w"]).T, t(p["b"])
            elif sub in _NORM:
                name = f"{prefix}.layers.{i}.{_NORM[sub]}"
                state[f"{name}.weight"], state[f"{name}.bias"] = t(p["scale"]), t(p["offset"])
            else:
                raise ArchitectureMismatchError(f"unexpected CLOOB Haiku module {module!r}")
    return state
