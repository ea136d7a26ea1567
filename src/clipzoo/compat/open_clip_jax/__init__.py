"""Drop-in for open_clip_jax (BobMcDear/open-clip-jax): its public API on clipzoo's JAX engine, on current
JAX / Flax and without TensorFlow.

    from clipzoo.compat.open_clip_jax import CLIPInference           # was: from open_clip_jax import …
    clip = CLIPInference("vit-base-patch32", softmax_temp=100., pretrained="laion2b-s34b-b79k")
    probs, _ = clip(Image.open("CLIP.png").convert("RGB"), ["A diagram", "A dog", "A cat"])

- :class:`CLIPInference` (``clip/inference.py``), :func:`create_model` / :func:`create_model_with_params`,
  :func:`list_models`, :func:`list_pretrained`, :func:`list_pretrained_by_model` (``clip/factory.py``, the
  original's ValueError messages), :func:`create_image_transforms` (``clip/image_transforms.py``: numpy/PIL
  ops equal to its TensorFlow ones), :func:`tokenize` (``clip/tokenizer.py``) and :data:`CLIP`, the model class.
  Submodules keep the original's paths: ``clipzoo.compat.open_clip_jax.clip.factory`` and so on.
- Outputs that were ``tf.Tensor`` (transforms, ``tokenize``) are numpy arrays that also have ``._numpy()``.
- The models are clipzoo's Flax CLIPs with open_clip_jax's parameter tree: its released ``.pkl`` files load
  as they are, and ``pretrained=`` also takes a local ``.pkl`` path. See ``docs/jax.md`` (Drop-in: open_clip_jax).

Needs ``pip install 'clipzoo[jax]'``; importing without it raises a ClipzooError naming the extra.
"""
from ...extras import require

FEATURE = "the open_clip_jax drop-in"
require("jax", FEATURE)  # before anything below imports it: a missing extra is one ClipzooError naming it
require("flax", FEATURE)

from .clip import (  # noqa: E402
    CLIP,
    CLIPInference,
    create_image_transforms,
    create_model,
    create_model_with_params,
    list_models,
    list_pretrained,
    list_pretrained_by_model,
    tokenize,
)

__all__ = ["CLIP", "CLIPInference", "create_image_transforms", "create_model", "create_model_with_params",
           "list_models", "list_pretrained", "list_pretrained_by_model", "tokenize"]
