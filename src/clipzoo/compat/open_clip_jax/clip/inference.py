"""open_clip_jax's ``CLIPInference`` (``clip/inference.py``): raw images and texts in, similarities out."""
from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import numpy as np

from ....extras import require
from .factory import create_model_with_params
from .image_transforms import create_image_transforms
from .tokenizer import tokenize

jax = require("jax", "the open_clip_jax drop-in")
jnp = require("jax.numpy", "the open_clip_jax drop-in")
nn = require("flax.linen", "the open_clip_jax drop-in")


@partial(jax.jit, static_argnames=("model", "softmax_temp"))
def calculate_similarity(model, vars: dict, image_input, text_input, softmax_temp: float | None = 100.):
    """``(per_image, per_text)``: softmax over texts of ``softmax_temp · cos`` for each image, and over images for
    each text; the raw cosines when ``softmax_temp`` is None (or 0)."""
    image_proj, text_proj = model.apply(vars, image_input, text_input)
    logits_per_image = image_proj @ text_proj.T
    logits_per_text = logits_per_image.T
    if softmax_temp:
        scaled = softmax_temp * logits_per_image
        logits_per_image = nn.softmax(scaled)
        logits_per_text = nn.softmax(scaled.T)
    return logits_per_image, logits_per_text


class CLIPInference:
    """End-to-end CLIP inference on raw inputs: ``CLIPInference(name)(images, texts)`` -> ``(probs_per_image,
    probs_per_text)``. Attributes ``model``, ``image_transforms``, ``calculate_similarity`` as in open_clip_jax.

    ``pretrained``: True (the model's default tag), a tag, False (random parameters, with a warning) or — an
    addition — the path of a local ``.pkl``. ``cache_dir`` and ``trust_pickle`` pass to
    :func:`create_model_with_params`."""

    def __init__(self, model_name: str, softmax_temp: float | None = 100., pretrained: Any = True,
                 dtype: Any = jnp.float32, *, cache_dir: Any = None, trust_pickle: bool = False) -> None:
        if pretrained is False:
            warnings.warn("You are performing inference with randomly-initialized weights.", stacklevel=2)
        self.model, vars = create_model_with_params(model_name, pretrained=pretrained, dtype=dtype,
                                                    cache_dir=cache_dir, trust_pickle=trust_pickle)
        self.image_transforms = create_image_transforms(train=False, input_format="image",
                                                        do_batch_transforms=False, dtype=dtype)
        self.calculate_similarity = partial(calculate_similarity, model=self.model, vars=vars,
                                            softmax_temp=softmax_temp)

    def __repr__(self) -> str:
        return str(self.model)

    def __call__(self, image: Any, text: "str | list[str]"):
        """Similarities of one image or a list of images (PIL / ``[h, w, 3]`` arrays) and a text or texts."""
        if not isinstance(image, list):
            image = [image]
        image_input = np.stack([np.asarray(self.image_transforms(im)) for im in image])
        text_input = tokenize(text)._numpy()
        return self.calculate_similarity(image_input=image_input, text_input=text_input)
