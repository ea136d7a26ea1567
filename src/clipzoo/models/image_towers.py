"""Image towers of compositional models: a timm, torchvision or open_clip backbone returning pooled features,
with LiT locking in each library's own layer groups."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..constants import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD
from .open_clip_parts import open_clip_config
from .spec import ConfigError

__all__ = ["ImageTower", "TimmImage", "OpenClipImage", "build_image", "freeze_groups"]


class ImageTower(nn.Module):
    """A backbone returning pooled features (N, ``out_dim``)."""

    out_dim: int

    def __init__(self, model: nn.Module, out_dim: int):
        super().__init__()
        self.model = model
        self.out_dim = int(out_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixels)
        return out.flatten(1) if out.ndim > 2 else out

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze all but the last ``unlocked_groups`` groups of layers (top-level children with parameters)."""
        groups = [m for _, m in self.model.named_children() if any(True for _ in m.parameters())]
        freeze_groups(groups, unlocked_groups)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        fn = getattr(self.model, "set_grad_checkpointing", None)
        if fn is not None:
            fn(enable)


def freeze_groups(groups: list, unlocked: int) -> None:
    """Freeze every group (a module or a list of parameters) but the last ``unlocked``; unfreeze those."""
    keep = len(groups) - max(0, int(unlocked))
    for i, group in enumerate(groups):
        params = group.parameters() if isinstance(group, nn.Module) else group
        for p in params:
            p.requires_grad = i >= keep


class TimmImage(ImageTower):
    def lock(self, unlocked_groups: int = 0) -> None:
        """open_clip's TimmModel semantics: timm's own layer groups (``group_matcher``)."""
        try:
            from timm.models import group_parameters
        except ImportError:  # pragma: no cover - very old timm
            return super().lock(unlocked_groups)
        matcher = self.model.group_matcher()
        gparams = group_parameters(self.model, matcher)
        top = max(gparams) - max(0, int(unlocked_groups))
        for p in self.model.parameters():
            p.requires_grad = True
        for gid, names in gparams.items():
            if gid <= top:
                for name in names:
                    self.model.get_parameter(name).requires_grad = False


class OpenClipImage(ImageTower):
    def lock(self, unlocked_groups: int = 0) -> None:
        self.model.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=False)


def build_image(spec: dict[str, Any], embed_dim: "int | None") -> tuple[ImageTower, dict[str, Any]]:
    """(tower, preprocessing config) of a checked ``towers.image`` spec."""
    if spec["source"] == "timm":
        return _timm(spec)
    if spec["source"] == "torchvision":
        return _torchvision(spec)
    return _open_clip(spec)


def _timm(spec: dict[str, Any]) -> tuple[ImageTower, dict[str, Any]]:
    import timm

    kwargs, size = dict(spec.get("kwargs") or {}), spec.get("image_size")
    pretrained = bool(spec.get("pretrained", False))
    if size is not None and "img_size" not in kwargs:
        try:  # ViT-like timm models take the input size; convnets do not
            model = timm.create_model(spec["name"], pretrained=pretrained, num_classes=0, img_size=size, **kwargs)
        except TypeError:
            model = timm.create_model(spec["name"], pretrained=pretrained, num_classes=0, **kwargs)
    else:
        model = timm.create_model(spec["name"], pretrained=pretrained, num_classes=0, **kwargs)
    data = model.pretrained_cfg or {}
    pre = {"size": size or data.get("input_size", (3, 224, 224))[-1], "mean": data.get("mean", IMAGENET_MEAN),
           "std": data.get("std", IMAGENET_STD), "interpolation": data.get("interpolation", "bicubic")}
    return TimmImage(model, model.num_features), pre


def _torchvision(spec: dict[str, Any]) -> tuple[ImageTower, dict[str, Any]]:
    import torchvision

    kwargs, size = dict(spec.get("kwargs") or {}), spec.get("image_size")
    weights = spec.get("pretrained") or None
    if weights is True:
        weights = "DEFAULT"
    model = torchvision.models.get_model(spec["name"], weights=weights, **kwargs)
    out_dim = drop_classifier(model, spec["name"])
    pre = {"size": size or 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}
    tower = ImageTower(model, out_dim)
    if out_dim is None:  # probe the width once
        was = model.training
        model.eval()
        with torch.no_grad():
            tower.out_dim = int(tower(torch.zeros(1, 3, pre["size"], pre["size"])).shape[1])
        model.train(was)
    return tower, pre


def _open_clip(spec: dict[str, Any]) -> tuple[ImageTower, dict[str, Any]]:
    """The visual tower of an open_clip model config (with its own projection to that config's embed_dim)."""
    from open_clip import model as oc_model

    cfg, weights = open_clip_config(spec)
    vision_cfg = dict(cfg["vision_cfg"])
    if spec.get("image_size") is not None:
        vision_cfg["image_size"] = spec["image_size"]
    visual = oc_model._build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=cfg.get("quick_gelu", False))
    if weights is not None:
        sd = {k[len("visual."):]: v for k, v in weights.items() if k.startswith("visual.")}
        visual.load_state_dict(sd)
    isz = vision_cfg.get("image_size", 224)
    pre = {"size": isz if isinstance(isz, int) else isz[0], "mean": vision_cfg.get("image_mean") or OPENAI_MEAN,
           "std": vision_cfg.get("image_std") or OPENAI_STD, "interpolation": "bicubic"}
    return OpenClipImage(visual, cfg["embed_dim"]), pre


def drop_classifier(model: nn.Module, name: str) -> "int | None":
    """Replace a torchvision classifier's last Linear with Identity; return its input width (None: unknown)."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential):
            for i in range(len(head) - 1, -1, -1):
                if isinstance(head[i], nn.Linear):
                    width = head[i].in_features
                    head[i] = nn.Identity()
                    return width
            if any(isinstance(m, nn.Conv2d) for m in head):  # squeezenet: a conv classifier
                setattr(model, attr, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
                return None
    raise ConfigError(f"towers.image: cannot find the classifier of torchvision model {name!r} to remove")
