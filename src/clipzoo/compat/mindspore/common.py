"""What the two MindSpore drop-ins share: their model cells, checkpoint reading, MindSpore's context, the image
transforms (MindSpore's own ``mindspore.dataset`` ops, composed as MindSpore-CLIP composes them) and tokenization.

The cells are clipzoo's MindSpore CLIP (:mod:`clipzoo.models.mindspore_clip`, MindSpore-CLIP's parameter names)
with the two ``construct`` outputs of the originals: :class:`OpenAIModel` (``clip``: ``(logits_per_image,
logits_per_text)``) and :class:`OpenClipModel` (``open_clip``: ``(image_features, text_features, logit_scale)``).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import ops
from mindspore.dataset.transforms import Compose
from mindspore.dataset.vision import CenterCrop, Inter, Normalize, RandomResizedCrop, Resize, ToPIL, ToTensor

from ...backends.mindspore import ckpt_path
from ...constants import OPENAI_MEAN, OPENAI_STD
from ...errors import BadTextError, UnsupportedError
from ...models.mindspore_clip import CLIP, load_params
from ...models.mindspore_config import tower_sizes
from ...models.mindspore_names import read_ckpt_entries
from ...registry import REGISTRY
from ...tokenizers import shared

__all__ = ["OpenAIModel", "OpenClipModel", "TextTooLongError", "build_net", "check_device", "set_mode", "image_size_of",
           "openai_transform", "image_transform", "token_ids", "read_params", "catalog_ckpt"]

DEVICE = "CPU"
MODES = {0: "GRAPH_MODE", 1: "PYNATIVE_MODE"}


class TextTooLongError(BadTextError, RuntimeError):
    """openai's / MindSpore-CLIP's RuntimeError for a too-long text, and clipzoo's error."""


class OpenAIModel(CLIP):
    """MindSpore-CLIP's ``clip`` model: ``model(image, text)`` -> ``(logits_per_image, logits_per_text)``."""

    @property
    def dtype(self):
        """The weights' dtype, as MindSpore-CLIP's ``CLIP.dtype`` (its ``visual.conv1.weight``'s): float32 here."""
        return self.visual.conv1.weight.dtype

    def construct(self, image, text):
        image_features = self.encode_image(image, True)
        text_features = self.encode_text(text, True)
        logits_per_image = self.logit_scale.exp() * ops.matmul(image_features, text_features.T)
        return logits_per_image, logits_per_image.T


class OpenClipModel(CLIP):
    """MindSpore-CLIP's ``open_clip`` model: ``model(image, text)`` -> ``(image_features, text_features,
    logit_scale)``, normalised features; either input may be None (its features are then None). ``logit_bias`` is
    None, as in its CLIP built without ``init_logit_bias``."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        self.logit_bias = None

    def construct(self, image=None, text=None):
        image_features = self.encode_image(image, True) if image is not None else None
        text_features = self.encode_text(text, True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()


def build_net(cls: type, cfg: Mapping[str, Any], params: Mapping[str, Any]) -> CLIP:
    """An inference-mode ``cls`` of config ``cfg`` holding ``params`` (MindSpore-CLIP's names, as fp32)."""
    net = cls(cfg)
    net.set_train(False)
    return load_params(net, params)


def check_device(device: str) -> None:
    """clipzoo's MindSpore models run on MindSpore's CPU wheel: another device runs there, with a warning (so that
    MindSpore-CLIP's snippets, written for ``device="Ascend"``, run as they are)."""
    if str(device).upper() != DEVICE:
        warnings.warn(f"device={device!r}: clipzoo's MindSpore drop-in runs on the CPU (MindSpore's CPU wheel); "
                      "running there", stacklevel=3)


def set_mode(device: str, mode: int) -> None:
    """MindSpore-CLIP's ``ms.set_context(device_target=device, mode=mode)``, on the CPU."""
    if mode not in MODES:
        raise UnsupportedError(f"mode={mode!r}: use 0 (mindspore.GRAPH_MODE) or 1 (mindspore.PYNATIVE_MODE)")
    check_device(device)
    ms.set_context(device_target=DEVICE, mode=mode)


def _convert_to_rgb(image):
    return image.convert("RGB")


def _normalize(mean, std) -> Normalize:
    mean = mean or OPENAI_MEAN
    std = std or OPENAI_STD
    mean = tuple(mean) if isinstance(mean, (list, tuple)) else (mean,) * 3
    std = tuple(std) if isinstance(std, (list, tuple)) else (std,) * 3
    return Normalize(mean=list(mean), std=list(std), is_hwc=False)


def openai_transform(n_px: int) -> Compose:
    """MindSpore-CLIP's ``clip`` preprocessing (a PIL image -> a one-item tuple of a float32 CHW array, so that
    ``Tensor(preprocess(image))`` is a batch of one)."""
    return Compose([ToPIL(), Resize(n_px, interpolation=Inter.BICUBIC), CenterCrop(n_px), _convert_to_rgb,
                    ToTensor(), _normalize(None, None)])


def image_transform(image_size: "int | Sequence[int]", is_train: bool, mean=None, std=None,
                    aug_cfg: "Mapping[str, Any] | None" = None) -> Compose:
    """MindSpore-CLIP's ``open_clip.image_transform``: eval resize + centre crop, or train random resized crop
    (``aug_cfg``'s ``scale``; its other items are unused, with its warning)."""
    if isinstance(image_size, (list, tuple)) and image_size[0] == image_size[1]:
        image_size = image_size[0]
    tail = [_convert_to_rgb, ToTensor(), _normalize(mean, std)]
    if is_train:
        aug = {k: v for k, v in dict(aug_cfg or {}).items() if v is not None}
        scale = tuple(aug.pop("scale", (0.9, 1.0)))
        if aug:
            warnings.warn(f"Unused augmentation cfg items: ({list(aug.keys())}).", stacklevel=3)
        return Compose([RandomResizedCrop(image_size, scale=scale, interpolation=Inter.BICUBIC), *tail])
    return Compose([Resize(image_size, interpolation=Inter.BICUBIC), CenterCrop(image_size), *tail])


def token_ids(texts: "str | Sequence[str]", context_length: int, truncate: bool) -> np.ndarray:
    """CLIP's BPE ids, [N, context_length] int64, zero-padded; a text longer than the context raises openai's
    RuntimeError unless ``truncate`` (then its last kept token is end-of-text)."""
    tok = shared()
    texts = [texts] if isinstance(texts, str) else list(texts)
    result = np.zeros((len(texts), context_length), dtype=np.int64)
    for i, text in enumerate(texts):
        ids = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
        if len(ids) > context_length:
            if not truncate:
                raise TextTooLongError(f"Input {text} is too long for context length {context_length}")
            ids = ids[:context_length]
            ids[-1] = tok.eot_token_id
        result[i, :len(ids)] = ids
    return result


def read_params(path: "str | os.PathLike") -> dict[str, Any]:
    """``{name: array}`` of a MindSpore ``.ckpt`` (MindSpore-CLIP's names), with the model config clipzoo stores in
    the ``.ckpt`` files it writes (a string entry)."""
    return read_ckpt_entries(path)


def catalog_ckpt(model: str, tag: str, cache_dir) -> "tuple[str, Mapping[str, Any]] | None":
    """(local path, card config) of MindSpore-CLIP's released ``.ckpt`` of ``model``/``tag`` (downloaded into
    ``cache_dir`` once), or None when it released none (``catalog/mindspore.toml``)."""
    spec = f"mindspore:{model}/{tag}" if tag else f"mindspore:{model}"
    if spec not in REGISTRY:
        return None
    card = REGISTRY.resolve(spec)
    return ckpt_path(card, cache_dir), dict(card.config)


def image_size_of(cfg: Mapping[str, Any]) -> int:
    return tower_sizes(cfg)["image_size"]
