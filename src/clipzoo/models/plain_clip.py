"""open_clip's ``CLIP`` with a ModifiedResNet image tower and a causal text transformer, in plain torch.

The embedded model (``clipzoo/tiny-shapes``) is such a CLIP. Building it through open_clip costs ~2 s of
imports (open_clip pulls in torchvision, timm and transformers), more than the whole of a one-shot
``clipzoo search``; these modules build the same network — the same parameter names, the same operations
in the same order, so the same features — from the same config, importing only torch.

:func:`supports` says whether a model config is one of these (anything else goes through open_clip);
:func:`build_plain_clip` builds it, :class:`PlainCLIP` has open_clip ``CLIP``'s attributes and
``encode_image`` / ``encode_text``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import show_keys
from ..errors import ArchitectureMismatchError

__all__ = ["PlainCLIP", "build_plain_clip", "supports"]

TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}
VISION_KEYS = {"image_size", "layers", "width", "head_width"}
TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}


def supports(model_cfg: "dict[str, Any] | None") -> bool:
    """A config these modules build exactly: a ModifiedResNet image tower (``layers`` a list) and open_clip's
    default text transformer, with no other option set."""
    if not model_cfg or set(model_cfg) - TOP_KEYS:
        return False
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    return (isinstance(vision.get("layers"), (list, tuple)) and len(vision["layers"]) == 4
            and not set(vision) - VISION_KEYS and not set(text) - TEXT_KEYS)


def causal_mask(n: int) -> torch.Tensor:
    """The additive causal mask (-inf above the diagonal) of open_clip's text tower."""
    return torch.full((n, n), float("-inf")).triu_(1)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """torch's LayerNorm, cast back to the input's dtype (as open_clip's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        out += x if self.downsample is None else self.downsample(x)
        return self.act3(out)


class AttentionPool2d(nn.Module):
    """Attention pooling over the feature map, the mean as query (CLIP's ResNet head)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(spacial_dim ** 2 + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)  # NCHW -> (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training,
            need_weights=False)
        return x[0]


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: a three-convolution stem with an average pool, anti-aliased strided blocks, attention pool."""

    def __init__(self, layers: list[int], output_dim: int, heads: int, image_size: int, width: int):
        super().__init__()
        self.output_dim, self.image_size = output_dim, image_size
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=self.conv1.weight.dtype)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.act3(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, act_layer: type):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = nn.Identity()
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, int(width * mlp_ratio))),
                                              ("gelu", act_layer()),
                                              ("c_proj", nn.Linear(int(width * mlp_ratio), width))]))
        self.ls_2 = nn.Identity()

    def get_weight_dtype(self) -> torch.dtype:
        """The text tower's compute dtype (a runtime that packs the Linears, torch-int8, overrides it)."""
        return getattr(self.mlp.c_fc, "int8_original_dtype", None) or self.mlp.c_fc.weight.dtype

    def forward(self, x: torch.Tensor, attn_mask: "torch.Tensor | None" = None) -> torch.Tensor:
        mask = attn_mask.to(x.dtype) if attn_mask is not None else None
        y = self.ln_1(x)
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False, attn_mask=mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act_layer: type):
        super().__init__()
        self.width, self.layers, self.batch_first, self.grad_checkpointing = width, layers, True, False
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_ratio, act_layer)
                                        for _ in range(layers)])

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].get_weight_dtype()

    def forward(self, x: torch.Tensor, attn_mask: "torch.Tensor | None" = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class PlainCLIP(nn.Module):
    """open_clip's ``CLIP`` (ModifiedResNet + text transformer): its parameter names, attributes and encoders."""

    trimmable_text = True  # causal text tower pooled at the end-of-text token (models.padding_free)

    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, quick_gelu: bool = False):
        super().__init__()
        act = QuickGELU if quick_gelu else nn.GELU
        width = vision_cfg.get("width", 64)
        heads = width * 32 // vision_cfg.get("head_width", 64)
        size = vision_cfg.get("image_size", 224)
        self.visual = ModifiedResNet(list(vision_cfg["layers"]), embed_dim, heads, size, width)
        t_width, self.context_length = text_cfg.get("width", 512), text_cfg.get("context_length", 77)
        self.vocab_size = text_cfg.get("vocab_size", 49408)
        self.transformer = Transformer(t_width, text_cfg.get("layers", 12), text_cfg.get("heads", 8),
                                       text_cfg.get("mlp_ratio", 4.0), act)
        # zeros, not open_clip's random init: the weights are loaded over them (a 49,408-row normal_ costs ~0.1 s)
        self.token_embedding = nn.Embedding(self.vocab_size, t_width, _weight=torch.zeros(self.vocab_size, t_width))
        self.positional_embedding = nn.Parameter(torch.zeros(self.context_length, t_width))
        self.ln_final = LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.zeros(t_width, embed_dim))
        self.text_pool_type, self.text_eos_id = "argmax", None
        self.register_buffer("attn_mask", causal_mask(self.context_length), persistent=False)
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.logit_bias = None

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        cast = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast) + self.positional_embedding.to(cast)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        return (self.encode_image(image, normalize=True), self.encode_text(text, normalize=True),
                self.logit_scale.exp())


def build_plain_clip(model_cfg: dict[str, Any], state_dict: "dict | None" = None, source: str = "") -> PlainCLIP:
    """The module of a :func:`supports` config in eval mode, with ``state_dict`` loaded strictly when given (a
    missing or unexpected key raises :class:`ArchitectureMismatchError` naming them)."""
    model = PlainCLIP(model_cfg["embed_dim"], model_cfg["vision_cfg"], model_cfg["text_cfg"],
                      bool(model_cfg.get("quick_gelu", False)))
    if state_dict is not None:  # the loaded tensors become the parameters (assign): no 25 MB copy at start-up
        result = model.load_state_dict(state_dict, strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise ArchitectureMismatchError(
                f"{source} does not fit the architecture: {len(result.missing_keys)} missing key(s) "
                f"{show_keys(result.missing_keys)}, {len(result.unexpected_keys)} unexpected key(s) "
                f"{show_keys(result.unexpected_keys)}; check the file")
    return model.eval()
