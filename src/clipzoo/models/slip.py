"""FAIR SLIP's models (facebookresearch/SLIP ``models.py``) as our own modules, with SLIP's parameter names.

Three kinds share a timm ViT image tower (``visual``, pooled at the class token, no head):

- ``CLIP``: plus an OpenAI-style causal text transformer (``token_embedding``, ``positional_embedding``,
  ``transformer.resblocks.N``, ``ln_final``, ``text_projection``), ``image_projection`` and ``logit_scale``;
- ``SLIP``: CLIP plus the SimCLR projection MLP ``image_mlp`` (used in training only);
- ``SIMCLR``: the image tower and ``image_mlp`` only — image features are the tower's pooled output.

Every size is read off the state dict's shapes, except the image tower's head count, which SLIP fixes per
model name (ViT-S/16 is MoCo v3's, with 12 heads; B/16 12; L/16 16).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ArchitectureMismatchError

KINDS = ("SLIP", "CLIP", "SIMCLR")
VISION_HEADS = {"S": 12, "B": 12, "L": 16}
_NAME = re.compile(r"^(SLIP|CLIP|SIMCLR)_VIT([SBL])16$")


@dataclass(frozen=True)
class SlipConfig:
    kind: str
    vision_width: int
    vision_depth: int
    vision_heads: int
    patch_size: int
    image_size: int
    embed_dim: int | None = None  # None for SimCLR (features are the image tower's width)
    text_width: int = 0
    text_layers: int = 0
    text_heads: int = 0
    context_length: int = 0
    vocab_size: int = 0
    ssl_mlp_dim: int = 0
    ssl_emb_dim: int = 0

    @property
    def out_dim(self) -> int:
        return self.embed_dim or self.vision_width


def parse_model_name(name: str) -> tuple[str, str]:
    """``"SLIP_VITB16"`` -> ``("SLIP", "B")``."""
    m = _NAME.match(name or "")
    if m is None:
        raise ArchitectureMismatchError(f"unknown SLIP model name {name!r}; SLIP's names are "
                                        "{SLIP,CLIP,SIMCLR}_VIT{S,B,L}16")
    return m[1], m[2]


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m[1] for k in sd if (m := rx.match(k))})


def config_from_state_dict(sd: dict, model_name: str) -> SlipConfig:
    """The config of a (prefix-stripped) SLIP state dict whose ``args.model`` is ``model_name``."""
    kind, size = parse_model_name(model_name)
    try:
        width = sd["visual.cls_token"].shape[-1]
        patch = sd["visual.patch_embed.proj.weight"].shape[-1]
        grid = round((sd["visual.pos_embed"].shape[1] - 1) ** 0.5)
        cfg = dict(kind=kind, vision_width=width, vision_depth=_count(sd, r"^visual\.blocks\.(\d+)\."),
                   vision_heads=VISION_HEADS[size], patch_size=patch, image_size=grid * patch)
        if kind != "CLIP":
            cfg.update(ssl_mlp_dim=sd["image_mlp.layer1.weight"].shape[0],
                       ssl_emb_dim=sd["image_mlp.layer3.weight"].shape[0])
        if kind != "SIMCLR":
            text_width = sd["token_embedding.weight"].shape[1]
            cfg.update(embed_dim=sd["image_projection"].shape[1], text_width=text_width,
                       text_layers=_count(sd, r"^transformer\.resblocks\.(\d+)\."), text_heads=max(1, text_width // 64),
                       context_length=sd["positional_embedding"].shape[0],
                       vocab_size=sd["token_embedding.weight"].shape[0])
    except KeyError as exc:
        raise ArchitectureMismatchError(f"a {model_name} checkpoint lacks {exc}; is it a SLIP checkpoint of "
                                        "that model?") from None
    return SlipConfig(**cfg)


# SLIP's released architectures: vision (width, depth) per size letter; text tower and SimCLR head as its main.py
VISION_SIZES = {"S": (384, 12), "B": (768, 12), "L": (1024, 24)}
SSL_DEFAULTS = (4096, 256)


def config_for_name(model_name: str) -> SlipConfig:
    """The config of a released SLIP model by name (SLIP's defaults: 224 px, 512-wide text, 4096/256 head)."""
    kind, size = parse_model_name(model_name)
    width, depth = VISION_SIZES[size]
    cfg = dict(kind=kind, vision_width=width, vision_depth=depth, vision_heads=VISION_HEADS[size], patch_size=16,
               image_size=224)
    if kind != "CLIP":
        cfg.update(ssl_mlp_dim=SSL_DEFAULTS[0], ssl_emb_dim=SSL_DEFAULTS[1])
    if kind != "SIMCLR":
        cfg.update(embed_dim=512, text_width=512, text_layers=12, text_heads=8, context_length=77, vocab_size=49408)
    return SlipConfig(**cfg)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    """OpenAI's residual attention block (pre-norm, QuickGELU MLP), with its parameter names."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


def ssl_mlp(in_dim: int, mlp_dim: int, out_dim: int) -> nn.Sequential:
    """SLIP's SimCLR head (BatchNorm in place of its SyncBatchNorm: the same parameters and buffers)."""
    return nn.Sequential(OrderedDict([
        ("layer1", nn.Linear(in_dim, mlp_dim)), ("bn1", nn.BatchNorm1d(mlp_dim)), ("relu1", nn.ReLU()),
        ("layer2", nn.Linear(mlp_dim, mlp_dim)), ("bn2", nn.BatchNorm1d(mlp_dim)), ("relu2", nn.ReLU()),
        ("layer3", nn.Linear(mlp_dim, out_dim))]))


class SlipModel(nn.Module):
    """SLIP / CLIP / SimCLR of facebookresearch/SLIP, parameter for parameter."""

    def __init__(self, cfg: SlipConfig):
        import timm

        super().__init__()
        self.config = cfg
        self.visual = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                                        embed_dim=cfg.vision_width, depth=cfg.vision_depth,
                                        num_heads=cfg.vision_heads, patch_size=cfg.patch_size,
                                        img_size=cfg.image_size)
        if cfg.kind != "CLIP":
            self.image_mlp = ssl_mlp(cfg.vision_width, cfg.ssl_mlp_dim, cfg.ssl_emb_dim)
        if cfg.kind == "SIMCLR":
            return
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.image_projection = nn.Parameter(torch.zeros(cfg.vision_width, cfg.embed_dim))
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros([]))
        mask = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.visual(pixels)
        return x if self.config.kind == "SIMCLR" else x @ self.image_projection

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2), self.attn_mask.to(x.dtype)).permute(1, 0, 2)
        x = self.ln_final(x)
        # the end-of-text token has the highest id: its position is where the text is pooled
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection
