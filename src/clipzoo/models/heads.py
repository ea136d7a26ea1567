"""Projection heads of compositional models: a tower's pooled features -> the shared embedding space.

``{"kind": "identity"}``, ``{"kind": "linear", "bias": false}``, ``{"kind": "mlp", "layers": 2, "hidden": 512,
"norm": "layer" | "batch" | null}`` or ``{"kind": "dino", "layers": 3, "hidden": 2048, "bottleneck": 256,
"norm_last_layer": true}`` — the DINO head (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers"): an MLP to a bottleneck, L2 normalisation, then a weight-normalised linear layer onto ``out_dim``
prototypes whose weight norm ``g`` is fixed at 1 when ``norm_last_layer``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .spec import ConfigError

__all__ = ["build_head", "DINOHead", "HEAD_KINDS"]

HEAD_KINDS = ("identity", "linear", "mlp", "dino")


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int, norm: "str | None", bias: bool = True) -> nn.Sequential:
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(dim, hidden, bias=bias))
        if norm == "batch":
            mods.append(nn.BatchNorm1d(hidden))
        elif norm == "layer":
            mods.append(nn.LayerNorm(hidden))
        mods.append(nn.GELU())
        dim = hidden
    mods.append(nn.Linear(dim, out_dim, bias=bias))
    return nn.Sequential(*mods)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototype layer (``last``, no bias)."""

    def __init__(self, in_dim: int, out_dim: int, layers: int = 3, hidden: int = 2048, bottleneck: int = 256,
                 norm: "str | None" = None, norm_last_layer: bool = True):
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, bottleneck, max(1, layers), norm)
        self.apply(self._init)
        last = nn.Linear(bottleneck, out_dim, bias=False)
        self.last = nn.utils.parametrizations.weight_norm(last)
        with torch.no_grad():
            self.last.parametrizations.weight.original0.fill_(1.0)  # g
        if norm_last_layer:
            self.last.parametrizations.weight.original0.requires_grad = False

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(self.mlp(x), dim=-1, p=2)
        return self.last(x)


def build_head(spec: "Mapping[str, Any] | str | None", in_dim: int, out_dim: int, where: str = "head") -> nn.Module:
    """The head ``spec`` names, mapping ``in_dim`` features to ``out_dim``."""
    spec = {"kind": spec} if isinstance(spec, str) else dict(spec or {"kind": "linear"})
    kind = str(spec.pop("kind", "linear")).lower()
    try:
        if kind == "identity":
            if spec:
                raise TypeError(f"unexpected option(s) {sorted(spec)}")
            if in_dim != out_dim:
                raise ConfigError(f"towers.{where}: an identity head keeps the tower's width {in_dim}, but embed_dim "
                                  f"is {out_dim}; use a linear head or set embed_dim to {in_dim}")
            return nn.Identity()
        if kind == "linear":
            return nn.Linear(in_dim, out_dim, bias=bool(spec.pop("bias", False)), **spec)
        if kind == "mlp":
            layers = int(spec.pop("layers", 2))
            if layers < 1:
                raise ConfigError(f"towers.{where}: an mlp head needs at least 1 layer, got {layers}")
            return _mlp(in_dim, int(spec.pop("hidden", in_dim)), out_dim, layers, spec.pop("norm", None),
                        bool(spec.pop("bias", True)), **spec)
        if kind == "dino":
            return DINOHead(in_dim, out_dim, **spec)
    except TypeError as err:
        raise ConfigError(f"towers.{where}: bad options for a {kind} head: {err}") from None
    raise ConfigError(f"towers.{where}: unknown head kind {kind!r}; use one of {', '.join(HEAD_KINDS)}")
