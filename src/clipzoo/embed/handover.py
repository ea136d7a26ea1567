"""How decode workers hand batches to the model (issue 22 §4): uint8 pixels in shared memory.

A worker decodes, resizes and crops (PIL; with fast decoding, torch's antialiased uint8 resize: within one level
of PIL's pixels), then stacks the batch straight into a tensor in shared memory (torch's ``share_memory``: the
parent maps the same pages; nothing is pickled or copied on the way), as uint8 — a quarter of float32's bytes. The
parent (or the GPU, after the copy) turns it into the model's normalised floats with the same arithmetic as the
per-image transform (``x / 255``, minus the mean, over the std), so with PIL's resize the rows come out as the
in-process float path gives them.

:func:`split_transform` recognises the transforms this applies to: clipzoo's :class:`PilEvalTransform` and
open_clip's evaluation ``Compose`` (Resize to the shortest side, CenterCrop, to RGB, ToTensor, Normalize);
anything else keeps the float path.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ClipzooError
from ..models.pil_transform import RESAMPLE, PilEvalTransform

__all__ = ["split_transform", "Uint8Crop", "fast_resize_crop", "resize_uint8", "stack_shared", "normalize_uint8",
           "SharedMemoryError"]

RGB_STEPS = ("MaybeConvertMode", "_convert_to_rgb")
TENSOR_STEPS = ("MaybeToTensor", "ToTensor")


def split_transform(transform: Any) -> "PilEvalTransform | None":
    """The PIL part + normalisation of ``transform`` as a :class:`PilEvalTransform`, or None when it is not one
    of the evaluation transforms that split exactly into a uint8 crop and a normalisation."""
    if isinstance(transform, PilEvalTransform):
        return transform
    steps = list(getattr(transform, "transforms", None) or [])
    names = [getattr(s, "__name__", None) or type(s).__name__ for s in steps]
    if len(steps) != 5 or names[:2] != ["Resize", "CenterCrop"] or names[2] not in RGB_STEPS \
            or names[3] not in TENSOR_STEPS or names[4] != "Normalize":
        return None
    resize, crop, norm = steps[0], steps[1], steps[4]
    size = resize.size if isinstance(resize.size, int) else (resize.size[0] if len(resize.size) == 1 else None)
    crop_size = tuple(crop.size) if isinstance(crop.size, (list, tuple)) else (crop.size, crop.size)
    interpolation = getattr(getattr(resize, "interpolation", None), "value", None)
    if size is None or crop_size != (size, size) or getattr(resize, "max_size", None) is not None \
            or interpolation not in RESAMPLE or len(norm.mean) != 3 or getattr(norm, "inplace", False):
        return None
    return PilEvalTransform(size, norm.mean, norm.std, interpolation)


class Uint8Crop:
    """PIL image -> the transform's resized, cropped RGB pixels as a uint8 (H, W, 3) tensor (picklable).

    ``fast``: the resize by torch's antialiased uint8 kernel (:func:`fast_resize_crop`) instead of PIL's — the
    same filter, within one level of PIL's pixels; with it a 640×480 photo's decode and resize ran 2.56× faster
    than with PIL's resize (``benchmarks/decode.py``: most of that path's time was the resize)."""

    def __init__(self, transform: PilEvalTransform, fast: bool = False):
        self.transform, self.fast = transform, fast

    def __call__(self, image):
        import numpy as np
        import torch

        if self.fast and self.transform.interpolation in FAST_MODES:
            return fast_resize_crop(image, self.transform)
        return torch.from_numpy(np.array(self.transform.resize_crop(image).convert("RGB"), np.uint8, copy=True))


FAST_MODES = ("bicubic", "bilinear")  # torch's antialiased uint8 kernels follow PIL's filters for these


def fast_resize_crop(image, transform: PilEvalTransform):
    """``transform.resize_crop(image)`` as a uint8 (size, size, 3) tensor, resized by :func:`resize_uint8`."""
    size = transform.size
    new_w, new_h = transform.resized_size(*image.size)  # the short side is ``size``: nothing to pad
    x = resize_uint8(image, new_w, new_h, transform.interpolation)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return x[:, top:top + size, left:left + size].permute(1, 2, 0).contiguous()


def resize_uint8(image, width: int, height: int, interpolation: str):
    """A PIL image as RGB uint8 (3, height, width), resized by torch's antialiased interpolation (PIL's filter
    support and coefficients, computed in its own fixed point: a pixel differs from PIL's by at most one level)."""
    import numpy as np
    import torch

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    x = torch.from_numpy(np.array(rgb, np.uint8, copy=True)).permute(2, 0, 1)[None]  # NCHW view of NHWC pixels
    if (width, height) != rgb.size:
        x = torch.nn.functional.interpolate(x, size=(height, width), mode=interpolation, antialias=True)
    return x[0]


def stack_shared(tensors: Sequence):
    """``torch.stack(tensors)``; inside a DataLoader worker, into a tensor in shared memory, so handing it to
    the parent passes a handle to the pages rather than a copy."""
    import torch

    first = tensors[0]
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(list(tensors))
    try:
        out = torch.empty((len(tensors), *first.shape), dtype=first.dtype).share_memory_()
    except RuntimeError as exc:  # here, in the worker's own thread: raised to the parent, never lost in the queue's
        raise SharedMemoryError(f"cannot hand a batch to the model through shared memory ({exc}): /dev/shm is "
                                "full or too small (a container's default is 64 MB: raise --shm-size), or a file "
                                "size limit (ulimit -f) is set; or pass --workers 0 to decode in this process"
                                ) from None  # feeder thread, where the parent then waited for the batch for ever
    return torch.stack(list(tensors), out=out)


class SharedMemoryError(ClipzooError):
    """A decode worker could not put its batch in shared memory. Raised again in the parent by the DataLoader, with
    the worker's traceback wrapped into the message: this keeps the one line it was raised with."""

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        super().__init__(message.rsplit(marker, 1)[-1].strip() if message.startswith("Caught ") else message)


def normalize_uint8(batch, transform: PilEvalTransform, *, channels_last: bool = False, dtype=None):
    """A uint8 (N, H, W, 3) batch (on any device) -> the model's normalised (N, 3, H, W) floats, bit for bit what
    ``transform`` gives image by image; ``channels_last`` keeps the NHWC layout (GPU convolutions), ``dtype``
    casts after normalising (fp16 / bf16 models)."""
    import torch

    # The arithmetic runs in place on a contiguous copy in the layout the result keeps: on the CPU about 5× faster
    # than on the permuted view (a 32-image batch at 224: 5.5 ms against 27 — the parent's share of every batch),
    # and each value is computed by the same operations, so bit for bit the same.
    x = batch if channels_last else batch.permute(0, 3, 1, 2).contiguous()
    x = x.to(torch.get_default_dtype(), copy=True).div_(255)
    shape = (1, 1, 1, 3) if channels_last else (1, 3, 1, 1)
    x.sub_(torch.tensor(transform.mean, dtype=x.dtype, device=x.device).view(shape))
    x.div_(torch.tensor(transform.std, dtype=x.dtype, device=x.device).view(shape))
    if channels_last:  # NCHW shape over the NHWC memory
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return x if dtype is None else x.to(dtype)
