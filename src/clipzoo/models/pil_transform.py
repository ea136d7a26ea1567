"""open_clip's evaluation transform (resize the shortest side, centre crop, to tensor, normalise) without
torchvision: PIL and torch only, step for step what ``open_clip.image_transform(size, is_train=False)`` does
for a square size in ``shortest`` resize mode, so the same pixels come out (the embedded model's path)."""
from __future__ import annotations

from typing import Any

__all__ = ["PilEvalTransform", "supports_transform"]

RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling (this module imports PIL lazily)


def supports_transform(preprocess_cfg: dict[str, Any]) -> bool:
    size = preprocess_cfg.get("size")
    square = isinstance(size, int) or (isinstance(size, (list, tuple)) and len(set(size)) == 1)
    return (square and preprocess_cfg.get("resize_mode", "shortest") == "shortest"
            and preprocess_cfg.get("interpolation", "bicubic") in RESAMPLE
            and preprocess_cfg.get("mode", "RGB") == "RGB")


class PilEvalTransform:
    """PIL image -> normalised float tensor (3, size, size); picklable (decode workers)."""

    def __init__(self, size: int, mean, std, interpolation: str = "bicubic"):
        self.size, self.interpolation = int(size), interpolation
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    @classmethod
    def from_config(cls, preprocess_cfg: dict[str, Any]) -> "PilEvalTransform":
        size = preprocess_cfg["size"]
        return cls(size if isinstance(size, int) else size[0], preprocess_cfg["mean"], preprocess_cfg["std"],
                   preprocess_cfg.get("interpolation", "bicubic"))

    def resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after the resize: the shortest side -> ``size``, the long side truncated (torchvision)."""
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    def resize_crop(self, im):
        """PIL image: shortest side -> ``size`` (torchvision's rounding: the long side truncated), centre crop."""
        from PIL import Image

        w, h = im.size
        new_w, new_h = self.resized_size(w, h)
        if (new_w, new_h) != (w, h):
            im = im.resize((new_w, new_h), RESAMPLE[self.interpolation])
        if new_w < self.size or new_h < self.size:  # a degenerate side: pad as torchvision's CenterCrop does
            canvas = Image.new(im.mode, (max(new_w, self.size), max(new_h, self.size)))
            canvas.paste(im, ((max(self.size - new_w, 0)) // 2, (max(self.size - new_h, 0)) // 2))
            im, (new_w, new_h) = canvas, canvas.size
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        return im.crop((left, top, left + self.size, top + self.size))

    def to_tensor(self, rgb):
        """A (size, size, 3) uint8 array -> normalised float (3, size, size), as torchvision's ToTensor + Normalize."""
        import numpy as np
        import torch

        x = torch.from_numpy(np.array(rgb, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        x = x.to(torch.get_default_dtype()).div(255)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)

    def __call__(self, image):
        import numpy as np
        from PIL import Image

        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return self.to_tensor(np.asarray(self.resize_crop(image).convert("RGB")))

    def __repr__(self) -> str:
        return (f"PilEvalTransform(size={self.size}, interpolation={self.interpolation}, mean={list(self.mean)}, "
                f"std={list(self.std)})")
