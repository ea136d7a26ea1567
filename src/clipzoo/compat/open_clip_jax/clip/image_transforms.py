"""open_clip_jax's image transforms (``clip/image_transforms.py``) in numpy and PIL — no TensorFlow.

The eval chain is open_clip_jax's, op for op: ``resize_smallest_edge`` (``tf.image.resize(..., 'bicubic',
antialias=True)``: TensorFlow's ScaleAndTranslate with Keys' cubic kernel, a = -0.5, widened by the scale when
shrinking, weights renormalised, float output, no clipping), ``center_crop_with_padding``, ``normalize``
(``(x - 255·mean) / (255·std)``) and the dtype cast. It reproduces open_clip_jax's sizes exactly, including
one quirk of ``resize_smallest_edge``: it reads ``(height, width)`` as ``(width, height)``, so a non-square
image comes out with its aspect ratio inverted (a 300×600 image is resized to 448×224, then centre-cropped).
Kept, so that features match open_clip_jax's on the same pictures; square images are unaffected.
Checked against open_clip_jax's own transform run in TensorFlow (tests/data/open_clip_jax_reference.npz).

Bounded work, where the original's is not: :func:`resize` resizes the axis that shrinks first, so its one
intermediate array is never larger than the input or the output (resizing the growing axis first made a
1 × N picture a 224·N × N × 3 array: gigabytes for a 100-byte PNG), and an image longer than
:data:`~clipzoo.constants.MAX_ASPECT_RATIO` : 1 keeps its central part when decoded or resized by
``resize_smallest_edge``, as every image clipzoo decodes (:func:`clipzoo.image_bytes.within_aspect`) — with the
quirk above, ``resize_smallest_edge`` of a 1 × N picture is 224·N × 224 (TensorFlow's too). Up to that ratio the
output is TensorFlow's; beyond it, that of the picture's central 32 : 1 part.

Training's ``random_resized_crop`` samples crops as ``tf.image.sample_distorted_bounding_box`` does (area
fraction in ``scale``, aspect ratio in ``ratio``, ``max_attempts=5``, else the whole image) from numpy's
random generator, not TensorFlow's: the same distribution, other draws.
"""
from __future__ import annotations

import io
import math
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from ....errors import BadImageError, ClipzooError
from ....extras import require
from ....image_bytes import aspect_box, within_aspect
from .common import OpenClipJaxValueError, Tensor, as_tensor
from .constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

jax = require("jax", "the open_clip_jax drop-in")

PyTree = Any
KERNELS = {  # name -> (kernel of |x|, radius); TensorFlow's keyscubic and triangle
    "bicubic": (lambda x: np.where(x >= 2.0, 0.0, np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0,
                                                           ((1.5 * x - 2.5) * x) * x + 1.0)), 2.0),
    "bilinear": (lambda x: np.maximum(0.0, 1.0 - x), 1.0),
}
MAX_ATTEMPTS = 5


def identity(input: Any, *args, **kwargs) -> Any:
    """Returns the input as-is."""
    return input


def image_array(image: Any) -> np.ndarray:
    """A PIL image, numpy array or Tensor as an ``[height, width, 3]`` (or batched) array."""
    if isinstance(image, Image.Image) and image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim < 3 or array.shape[-1] != 3:
        raise BadImageError(f"expected an RGB image of shape [height, width, 3], got shape {array.shape}; "
                            "convert it first (PIL: image.convert('RGB'))")
    return array


def within_aspect_array(array: np.ndarray) -> np.ndarray:
    """The central part of an ``[..., height, width, channels]`` image that is longer than
    :data:`~clipzoo.constants.MAX_ASPECT_RATIO` : 1 (:func:`clipzoo.image_bytes.within_aspect`); else itself."""
    height, width = shape(array)
    box = aspect_box(width, height)
    if box is None:
        return array
    left, top, right, bottom = box
    return array[..., top:bottom, left:right, :]


def shape(image: Any) -> tuple[int, int]:
    """Height and width of an image of shape ``[..., height, width, channels]``."""
    array = np.asarray(image)
    return int(array.shape[-3]), int(array.shape[-2])


def resize_weights(in_size: int, out_size: int, method: str = "bicubic", antialias: bool = True) -> np.ndarray:
    """``[out_size, in_size]`` weights of TensorFlow's ScaleAndTranslate (scale out/in, no translation)."""
    if method not in KERNELS:
        raise ClipzooError(f"resize method {method!r} is not implemented here; use one of {', '.join(KERNELS)}")
    kernel, _ = KERNELS[method]
    inv_scale = in_size / out_size
    kernel_scale = max(inv_scale, 1.0) if antialias else 1.0
    sample = (np.arange(out_size, dtype=np.float64) + 0.5) * inv_scale
    offsets = np.arange(in_size, dtype=np.float64)[None, :] + 0.5 - sample[:, None]
    weights = kernel(np.abs(offsets) / kernel_scale)
    total = weights.sum(axis=1, keepdims=True)
    safe = np.abs(total) >= 1000.0 * np.finfo(np.float32).tiny
    weights = np.where(safe, weights / np.where(safe, total, 1.0), weights)
    weights[(sample < 0) | (sample > in_size)] = 0.0
    return weights.astype(np.float32)


def resize(image: Any, size: tuple[int, int], method: str = "bicubic", antialias: bool = True) -> Tensor:
    """``tf.image.resize(image, size, method, antialias)``: float32, ``[..., height, width, channels]``.

    Separable: one axis, then the other — the one that shrinks (the smaller intermediate) first, so no array
    is larger than the input or the output."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4:
        return as_tensor(np.stack([resize(a, size, method, antialias) for a in array]))
    (h, w), new = array.shape[:2], (int(size[0]), int(size[1]))
    for axis in ((0, 1) if new[0] * w <= h * new[1] else (1, 0)):
        if new[axis] != array.shape[axis]:
            weights = resize_weights(array.shape[axis], new[axis], method, antialias)
            array = np.moveaxis(np.tensordot(weights, array, axes=([1], [axis])), 0, axis)
    return as_tensor(np.ascontiguousarray(array, dtype=np.float32))


def read_file(path: Any) -> bytes:
    """``tf.io.read_file``: the file's bytes."""
    with open(path, "rb") as fh:
        return fh.read()


def decode_image(data: Any, channels: int = 3) -> Tensor:
    """``tf.io.decode_jpeg(data, channels=3)`` through PIL (any format PIL reads): uint8 ``[h, w, 3]``."""
    try:
        image = Image.open(io.BytesIO(bytes(data)))
        image.load()
    except (OSError, ValueError) as exc:
        raise BadImageError(f"cannot decode image bytes ({exc}); pass JPEG/PNG bytes or a path") from None
    return as_tensor(np.asarray(within_aspect(image).convert("RGB")))


def random_crop_box(height: int, width: int, rng: np.random.Generator, ratio=(3 / 4, 4 / 3),
                    scale=(0.9, 1.0)) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` as ``tf.image.sample_distorted_bounding_box`` samples them."""
    area = height * width
    for _ in range(MAX_ATTEMPTS):
        aspect = rng.uniform(*ratio)
        target = rng.uniform(*scale) * area
        crop_h = int(round(math.sqrt(target / aspect)))
        crop_w = int(round(crop_h * aspect))
        if 0 < crop_h <= height and 0 < crop_w <= width:
            return int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1)), crop_h, crop_w
    return 0, 0, height, width


def random_resized_crop(bytes: Any, size: int = 224, method: str = "bicubic", ratio=(3 / 4, 4 / 3),
                        scale=(0.9, 1.0), antialias: bool = True, rng: np.random.Generator | None = None) -> Tensor:
    """A random crop of the encoded image, resized to ``size`` × ``size`` (float32)."""
    image = decode_image(bytes)
    top, left, h, w = random_crop_box(*shape(image), rng or np.random.default_rng(), ratio, scale)
    return resize(image[top:top + h, left:left + w], (size, size), method, antialias)


def resize_smallest_edge(image: Any, size: int = 224, method: str = "bicubic", antialias: bool = True) -> Tensor:
    """open_clip_jax's ``resize_smallest_edge``, its height/width mix-up included (see the module doc); an image
    longer than ``MAX_ASPECT_RATIO`` : 1 keeps its central part first."""
    image = within_aspect_array(image_array(image))
    image_w, image_h = shape(image)  # sic: open_clip_jax names (height, width) this way round
    new = (int(size * image_h / image_w), size) if image_w <= image_h else (size, int(size * image_w / image_h))
    return resize(image, new, method, antialias)


def center_crop_with_padding(image: Any, size: int = 224) -> Tensor:
    """A central ``size`` × ``size`` crop, zero-padding (centred) an image smaller than that first."""
    image = np.asarray(image)
    h, w = shape(image)
    padded_h, padded_w = max(size, h), max(size, w)
    if (padded_h, padded_w) != (h, w):
        top, left = max(0, (size - h) // 2), max(0, (size - w) // 2)
        canvas = np.zeros(image.shape[:-3] + (padded_h, padded_w, image.shape[-1]), image.dtype)
        canvas[..., top:top + h, left:left + w, :] = image
        image = canvas
    top, left = (padded_h - size) // 2, (padded_w - size) // 2
    return as_tensor(image[..., top:top + size, left:left + size, :])


def normalize(image: Any, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> Tensor:
    """``(image - 255·mean) / (255·std)`` over the last axis, in the image's float dtype."""
    image = np.asarray(image)
    dtype = image.dtype if np.issubdtype(image.dtype, np.floating) else np.float32
    image = image.astype(dtype)
    image = image - 255 * np.asarray(mean, dtype).reshape(1, 1, 3)
    return as_tensor(image / (255 * np.asarray(std, dtype).reshape(1, 1, 3)))


def denormalize(image: Any, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> Tensor:
    """open_clip_jax's ``denormalize``: ``image·std + mean`` (without its factor 255, as there)."""
    image = np.asarray(image)
    return as_tensor(image * np.asarray(std, image.dtype).reshape(1, 1, 3)
                     + np.asarray(mean, image.dtype).reshape(1, 1, 3))


def convert_image_dtype(image: Any, dtype: Any = np.float32) -> Tensor:
    """``tf.image.convert_image_dtype`` for float targets (float32, float16, bfloat16): a cast."""
    target = np.dtype(dtype)
    if target.kind != "f" and target.name != "bfloat16":
        raise ClipzooError(f"image dtype {target.name} is not supported; use a float dtype (float32, bfloat16, …)")
    return as_tensor(np.asarray(image).astype(target))


def tf_to_np(pytree: PyTree, device_axis: bool = True) -> PyTree:
    """Leaves as numpy arrays, optionally reshaped to ``[device_count, local_batch, ...]``."""
    device_count = jax.local_device_count()

    def leaf_to_np(leaf):
        leaf = np.asarray(leaf)
        return leaf.reshape((device_count, -1) + leaf.shape[1:]) if device_axis else leaf

    return jax.tree_util.tree_map(leaf_to_np, pytree)


class Sequential:
    """Chains transforms: ``Sequential(f, g)(x) == g(f(x))``."""

    def __init__(self, *modules) -> None:
        self.modules = [*modules]

    def __repr__(self) -> str:
        return " --->\n".join(map(str, self.modules))

    def __call__(self, input: Any) -> Any:
        for mod in self.modules:
            input = mod(input)
        return input


def create_image_transforms(train: bool, input_format: str = "path", do_batch_transforms: bool = True,
                            size: int = 224, dtype: Any = np.float32, *, seed: int | None = None):
    """open_clip_jax's transforms: ``Sequential`` (or an ``(item, batch)`` pair when ``do_batch_transforms``).

    ``input_format``: ``'path'`` (files to read), ``'bytes'`` (encoded images) or ``'image'`` (PIL images,
    decoded ``[h, w, 3]`` arrays; eval only). ``seed`` (an addition) seeds training's random crops.
    """
    if input_format not in ["path", "bytes", "image"]:
        raise OpenClipJaxValueError(f"Input format {input_format} not recognized. "
                                    "Available options are [path, bytes, image].")
    read = read_file if input_format == "path" else identity
    if train:
        if input_format == "image":
            raise OpenClipJaxValueError("Input format images not supported for training.")
        item_transforms = [read, partial(random_resized_crop, size=size, rng=np.random.default_rng(seed))]
    else:
        item_transforms = [read, decode_image if input_format != "image" else identity,
                           partial(resize_smallest_edge, size=size), partial(center_crop_with_padding, size=size)]
    batch_transforms = [normalize, partial(convert_image_dtype, dtype=dtype)]
    if do_batch_transforms:
        return Sequential(*item_transforms), Sequential(*batch_transforms)
    return Sequential(*item_transforms, *batch_transforms)
