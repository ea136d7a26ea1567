"""The model phase: the module on its device, in its training layout — LiT locks, gradient checkpointing,
channels-last convolutions, and an open_clip text tower that runs only up to each batch's longest caption."""
from __future__ import annotations

import functools

import torch

from ...errors import one_line
from ...models.padding_free import encode_text_padding_free, trimmable
from ..config import ConfigError, TrainConfig
from ..model import TrainModel

__all__ = ["prepare", "convolutional_layout", "trim_text_padding", "lock_towers"]


def prepare(model: TrainModel, cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, torch.memory_format]:
    """Move the module to ``device`` and set it up for training; returns it and the memory format of its input
    images."""
    module = model.module.to(device)
    trim_text_padding(module)
    memory_format = convolutional_layout(module)
    lock_towers(module, cfg)
    if cfg.grad_checkpointing:
        module.set_grad_checkpointing(True)
    if hasattr(module, "output_dict"):
        module.output_dict = True
    return module, memory_format


def lock_towers(module: torch.nn.Module, cfg: TrainConfig) -> None:
    """LiT: freeze the towers the config locks (open_clip's ``lock_image_tower`` / ``lock_text_tower``)."""
    if cfg.lock_image:
        try:
            module.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_layers, freeze_bn_stats=True)
        except AssertionError as err:  # open_clip's ResNet tower: "partial locking not currently supported"
            raise ConfigError(f"lock_image_unlocked_layers {cfg.lock_image_unlocked_layers}: this image tower locks "
                              f"only whole ({one_line(err)}); set lock_image_unlocked_layers to 0") from None
    if cfg.lock_text:
        module.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)


def convolutional_layout(module) -> torch.memory_format:
    """Channels-last for an image tower made of convolutions (ResNets, ConvNeXts): oneDNN's and cuDNN's
    convolutions run faster on NHWC tensors (the tiny-shapes ResNet's forward and backward: 1.5× on 2
    CPU cores), with the same maths. The weights are converted in place; returns the format for the
    input images (``torch.contiguous_format`` for towers with at most one convolution, e.g. a ViT's
    patch embedding)."""
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    if convs <= 1:
        return torch.contiguous_format
    module.to(memory_format=torch.channels_last)
    return torch.channels_last


def trim_text_padding(module) -> bool:
    """Let an open_clip CLIP with a causal, end-of-text-pooled text tower run its text transformer only up
    to each batch's longest caption (:func:`clipzoo.models.padding_free.encode_text_trimmed`): the same
    features and gradients — the columns after the last end-of-text token never reach the pooled output —
    for less work (captions of ~10 tokens in a context of 24 or 77). Returns whether it applies."""
    if not trimmable(module):
        return False
    # a partial (not a closure) so that copy.deepcopy (EMA) binds the copy to the copied module
    module.__dict__["encode_text"] = functools.partial(_encode_text_trimmed, module)
    return True


def _encode_text_trimmed(module, text, normalize: bool = False):
    x = encode_text_padding_free(module, text)
    return torch.nn.functional.normalize(x, dim=-1) if normalize else x
