"""open_clip_jax's factory (``clip/factory.py``): models by name, pretrained parameters, listings.

Models are clipzoo's Flax CLIPs (:mod:`clipzoo.models.jax_clip`, open_clip_jax's parameter tree, ViT and
ConvNeXt), configs come from the shared table :data:`clipzoo.models.jax_config.MODEL_CONFIGS`, and the
pretrained table is open_clip_jax's :data:`PRETRAINED` — the same pairs as the registry's ``jax`` cards
(``catalog/open_clip_jax.toml``; a test holds the two together). A tag is the hub file
``BobMcDear/open-clip-jax-{model}-{tag}/{model}-{tag}.pkl``, fetched through :func:`clipzoo.download.hub_file`
(Hugging Face's cache, offline once cached).

Beyond the original: ``pretrained`` may also be the path of a local ``.pkl`` (what open_clip_jax's hub
files, :func:`clipzoo.convert.jax.write_params` and ``clipzoo convert --to jax`` write); a file is read by
an unpickler that admits arrays only unless ``trust_pickle=True``; ``cache_dir`` picks the hub cache.
``grad_checkpoint=True`` rematerialises each block in the backward pass (same variables, same values).
The one-tag entries (``convnext-base``, ``vit-huge-patch14``) are tuples here — ``('laion2b-s32b-b79k',)``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ....download import hub_file
from ....errors import ClipzooError
from ....extras import require
from ....models.jax_clip import JaxCLIP, init_variables
from ....models.jax_config import MODEL_CONFIGS as SHARED_CONFIGS
from ....models.jax_config import check_shapes, get_config, list_configs
from ....models.jax_params import read_params
from .common import OpenClipJaxValueError

jax = require("jax", "the open_clip_jax drop-in")
jnp = require("jax.numpy", "the open_clip_jax drop-in")

nn = require("flax.linen", "the open_clip_jax drop-in")


class OpenClipJaxCLIP(nn.Module):
    """open_clip_jax's ``CLIP`` (``clip/model.py``): clipzoo's Flax CLIP, whose parameters it shares (the same
    tree), with the original's temperature: a ``temp`` parameter only when ``temp_init`` is truthy (0.0 makes
    none), of the projections' dtype (bfloat16 in bfloat16: both outputs bfloat16). ``encode_image`` /
    ``encode_text`` are clipzoo's additions (the raw projections)."""

    cfg: Any
    temp_init: "float | None" = None
    dtype: Any = None
    grad_checkpoint: bool = False

    def setup(self):
        self.clip = JaxCLIP(self.cfg, dtype=self.dtype, grad_checkpoint=self.grad_checkpoint)
        nn.share_scope(self, self.clip)  # its parameters at the top level, as open_clip_jax names them
        if self.temp_init:
            self.temp = self.param("temp", lambda key: jnp.asarray(self.temp_init, self.dtype or jnp.float32))

    def encode_image(self, images, train: bool = False):
        return self.clip.encode_image(images, train)

    def encode_text(self, tokens):
        return self.clip.encode_text(tokens)

    def __call__(self, image_input, text_input):
        """open_clip_jax's parameters, by name too (``model.init(rngs, image_input=…, text_input=…)``): NHWC
        float images and int32 tokens -> L2-normalised ``(image_proj, text_proj)``, the first scaled by
        ``exp(temp)`` when there is a temperature."""
        image, text = self.clip(image_input, text_input)
        if self.temp_init:
            image = jnp.exp(self.temp) * image
        return image, text


CLIP = OpenClipJaxCLIP
MODEL_CONFIGS = SHARED_CONFIGS  # the shared table (name -> open_clip_jax's JSON form), not a copy
# open_clip_jax's PRETRAINED (factory.py), model by model and tag by tag; the last tag is a model's default.
# Its one-tag entries are bare strings there (a missing comma), tuples here as its README shows them.
# tests/test_compat_open_clip_jax.py checks that the registry's jax cards (catalog/open_clip_jax.toml) agree.
PRETRAINED: dict[str, tuple[str, ...]] = {
    "convnext-base": ("laion400m-s13b-b51k",),
    "convnext-base-w": ("laion-aesthetic-s13b-b82k", "laion-aesthetic-s13b-b82k-320",
                        "laion-aesthetic-s13b-b82k-augreg-320", "laion2b-s13b-b82k", "laion2b-s13b-b82k-augreg"),
    "convnext-large-d": ("laion2b-s26b-b102k-augreg", "laion2b-s29b-b131k-ft-320", "laion2b-s29b-b131k-ft-soup-320"),
    "vit-base-patch32": ("laion400m-e31", "laion400m-e32", "laion2b-e16", "laion2b-s34b-b79k",
                         "datacomp-m-s128m-b4k", "datacomp-xl-s13b-b90k"),
    "vit-base-patch16": ("laion400m-e31", "laion400m-e32", "laion2b-s34b-b88k", "dfn2b", "datacomp-xl-s13b-b90k"),
    "vit-large-patch14": ("laion400m-e31", "laion400m-e32", "laion2b-s32b-b82k"),
    "vit-huge-patch14": ("laion2b-s32b-b79k",),
}
HUB_REPO = "BobMcDear/open-clip-jax-{name}"  # name = f"{model}-{tag}"; the file is f"{name}.pkl"


def list_models() -> tuple[str, ...]:
    """Every model name, ordered as open_clip_jax orders them (by config file name, ``NAME.json``)."""
    return tuple(sorted(list_configs(), key=lambda name: name + ".json"))


def pretrained_table() -> dict[str, tuple[str, ...]]:
    """:data:`PRETRAINED` for the models the shared config table can build."""
    models = set(list_configs())
    return {model: tags for model, tags in PRETRAINED.items() if model in models}


def hub_location(model_name: str, tag: str) -> tuple[str, str]:
    """``(repo, file)`` of open_clip_jax's parameters ``tag`` of ``model_name`` on the Hugging Face hub."""
    name = f"{model_name}-{tag}"
    return HUB_REPO.format(name=name), f"{name}.pkl"


def check_model_exists(model_name: str) -> None:
    if model_name not in list_configs():
        raise OpenClipJaxValueError(f"Model {model_name} not recognized. Available models are {list_models()}")


def check_model_has_pretrained(model_name: str) -> None:
    if model_name not in pretrained_table():
        raise OpenClipJaxValueError(f"{model_name} does not have pre-trained parameters.")


def list_pretrained() -> tuple[tuple[str, str], ...]:
    """``(model, tag)`` pairs of every set of pretrained parameters."""
    return tuple((model, tag) for model, tags in pretrained_table().items() for tag in tags)


def list_pretrained_by_model(model_name: str) -> tuple[str, ...]:
    """The pretrained tags of one model (the last is the default); ValueError as open_clip_jax raises it."""
    check_model_exists(model_name)
    check_model_has_pretrained(model_name)
    return pretrained_table()[model_name]


def create_model(model_name: str, temp_init: float | None = None, grad_checkpoint: bool = False,
                 dtype: Any = jnp.float32) -> OpenClipJaxCLIP:
    """The Flax CLIP of a model name (no parameters)."""
    check_model_exists(model_name)
    return OpenClipJaxCLIP(get_config(model_name), temp_init=temp_init, dtype=dtype, grad_checkpoint=grad_checkpoint)


def is_local_file(model_name: str, pretrained: Any) -> bool:
    """``pretrained`` names a file rather than a tag: a path object, an existing file that is not one of the
    model's tags, or a string that looks like a path (``.pkl``, a separator) — a missing one is an error."""
    if isinstance(pretrained, os.PathLike):
        return True
    if not isinstance(pretrained, str):
        return False
    if pretrained in pretrained_table().get(model_name, ()):
        return False
    return os.path.isfile(pretrained) or pretrained.endswith(".pkl") or os.sep in pretrained


def pretrained_path(model_name: str, pretrained: Any = True, cache_dir: Any = None) -> str:
    """The local file of ``pretrained`` (a tag is fetched from the hub into the cache)."""
    if is_local_file(model_name, pretrained):
        if not os.path.isfile(pretrained):
            raise ClipzooError(f"pretrained={os.fspath(pretrained)!r} is not a file; pass an open_clip_jax .pkl "
                               f"or one of {model_name}'s tags (list_pretrained_by_model)")
        return os.fspath(pretrained)
    available = list_pretrained_by_model(model_name)
    if pretrained is True:
        pretrained = available[-1]  # the last tag is the most performant one
    if pretrained not in available:
        raise OpenClipJaxValueError(f"{model_name} has no pre-trained parameters of name {pretrained}. "
                                    f"Available options are {available}.")
    return str(hub_file(*hub_location(model_name, pretrained), cache_dir))


def download_pretrained_params(model_name: str, pretrained: Any = True, *, cache_dir: Any = None,
                               trust_pickle: bool = False) -> dict:
    """open_clip_jax's parameters ``{'params': {...}}`` (numpy arrays) of a tag or a local ``.pkl``."""
    check_model_exists(model_name)
    params = read_params(pretrained_path(model_name, pretrained, cache_dir), trust_pickle)
    check_shapes(params["params"], get_config(model_name))
    return params


def create_model_with_params(model_name: str, temp_init: float | None = None, image_size: int = 224,
                             context_len: int = 77, pretrained: Any = True, grad_checkpoint: bool = False,
                             dtype: Any = jnp.float32, *, cache_dir: Any = None,
                             trust_pickle: bool = False) -> tuple[OpenClipJaxCLIP, dict]:
    """``(model, vars)``; ``model.apply(vars, images_nhwc, tokens)`` -> L2-normalised ``(image, text)``.

    ``pretrained``: False for random parameters (of ``image_size`` / ``context_len``), True for the model's
    default tag, a tag, or a local ``.pkl``; sizes then follow from the parameters."""
    params = None
    if pretrained is not False:
        params = download_pretrained_params(model_name, pretrained, cache_dir=cache_dir,
                                            trust_pickle=trust_pickle)["params"]
    model = create_model(model_name, temp_init=temp_init, grad_checkpoint=grad_checkpoint, dtype=dtype)
    if params is None:
        return model, init_variables(model, image_size, context_len)
    if temp_init and "temp" not in params:  # released files carry no temperature
        params = {**params, "temp": np.asarray(temp_init, dtype or np.float32)}
    return model, {"params": jax.tree_util.tree_map(jnp.asarray, as_dict(params))}


def as_dict(tree: Mapping) -> dict:
    return {k: as_dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
