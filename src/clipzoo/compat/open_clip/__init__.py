"""Drop-in for ``open_clip`` (3.x), over every model clipzoo knows.

    from clipzoo.compat import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="laion2b_s34b_b79k")
    model, preprocess = open_clip.create_model_from_pretrained("[siglip - google - siglip-base-patch16-224]")
    tokenizer = open_clip.get_tokenizer("[siglip - google - siglip-base-patch16-224]")

It is a package with open_clip's submodules (``factory``, ``pretrained``, ``tokenizer``, ``transform``,
``model``, ``loss``, ``constants``, …): the shim's functions where it has its own, open_clip's objects
for every other name. To run code written for open_clip against it, alias it before that code imports
open_clip — ``sys.modules["open_clip"] = clipzoo.compat.open_clip`` for the package, or :func:`install`
to serve ``from open_clip.factory import create_model`` and the other submodule imports from the shim
too (a bare alias leaves ``open_clip.<sub>`` imports on open_clip's own modules, already loaded).

How a ``model_name`` is served:

1. Anything open_clip itself knows goes straight to open_clip, with every argument as given: its
   architecture names (``ViT-B-32``, also ``ViT-B/32``) with a pretrained tag or a checkpoint path,
   ``local-dir:`` folders, and ``hf-hub:`` repos that hold an ``open_clip_config.json``. The results
   are open_clip's own, bit for bit.
2. A clipzoo alias or spec of an open_clip (model, tag) pair (``"[clip - laion - ViT-B-32/laion2b_s34b_b79k]"``,
   ``"open_clip:ViT-B-32/laion2b_s34b_b79k"``) is translated to that pair and also goes to open_clip.
3. Everything else — HF transformers and sentence-transformers models of the registry, ``hf-hub:``
   repos without an open_clip config, user-registered models, local checkpoint files and folders given
   as ``model_name`` (OpenAI TorchScript archives, state dicts, open_clip files, HF folders) — is loaded
   by ``clipzoo.load``. When that gives an open_clip module, it is returned as is (with
   ``output_dict`` and its preprocess config set), and open_clip's architecture options
   (``force_custom_text``, ``force_quick_gelu``, ``force_image_size``, ``force_context_length``,
   ``force_patch_dropout``, ``pretrained_text`` / ``pretrained_hf``, ``load_weights``, tower paths,
   ``jit``, extra model kwargs) rebuild it as open_clip's factory would. Otherwise the model is wrapped in
   :class:`~clipzoo.compat._models.OpenClipModel`, which has open_clip's model API (``encode_image(x,
   normalize=False)``, ``encode_text(t, normalize=False)``, ``forward`` -> normalised features and
   ``logit_scale.exp()`` (+ ``logit_bias`` for SigLIP), ``output_dict=True``); options that would change
   its architecture raise :class:`~clipzoo.errors.UnsupportedError` (there is no open_clip config).

Listings: :func:`list_models`, :func:`list_pretrained`, :func:`list_pretrained_tags_by_model` and
:func:`list_pretrained_models_by_tag` return exactly open_clip's entries, so code that walks them
(open_clip's own tests, benchmark scripts) sees open_clip's catalogue. clipzoo's other models are
:func:`list_registry_models` (aliases) and :func:`list_registry_pretrained` (``(alias, publisher)``
pairs, which ``create_model(alias, pretrained=publisher)`` takes). :func:`tokenize` and :func:`decode`
are open_clip's own (they truncate a too-long text, as open_clip does); every other open_clip
attribute (``load_checkpoint``, ``image_transform``, ``CLIP``, ``OPENAI_IMAGENET_TEMPLATES``, …)
passes through.
"""
from __future__ import annotations

import sys
import types

from .._models import OpenClipModel
from . import (  # noqa: F401 - open_clip's submodules, as attributes of the package
    coca_model,
    constants,
    convert,
    factory,
    hf_configs,
    hf_model,
    loss,
    model,
    modified_resnet,
    openai,
    pos_embed,
    pretrained,
    push_to_hf_hub,
    timm_model,
    tokenizer,
    transform,
    transformer,
    utils,
    version,
    zero_shot_classifier,
    zero_shot_metadata,
)
from ._real import REAL, SUBMODULES
from .factory import (
    add_model_config,
    create_model,
    create_model_and_transforms,
    create_model_from_pretrained,
    get_model_config,
    get_tokenizer,
    list_models,
    load_checkpoint,
)
from .pretrained import (
    list_pretrained,
    list_pretrained_models_by_tag,
    list_pretrained_tags_by_model,
    list_registry_models,
    list_registry_pretrained,
)
from .tokenizer import ComparatorTokenizer, decode, tokenize

__all__ = ["create_model", "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer",
           "tokenize", "decode", "list_models", "list_pretrained", "list_pretrained_tags_by_model",
           "list_pretrained_models_by_tag", "list_registry_models", "list_registry_pretrained",
           "get_model_config", "add_model_config", "load_checkpoint", "image_transform", "OpenClipModel",
           "ComparatorTokenizer", "install", "uninstall"]

IS_CLIPZOO_SHIM = True


def _mirror_package_attributes() -> None:
    """Where open_clip's package attribute is not its submodule (``push_to_hf_hub``: the function), so here."""
    for name, module in SUBMODULES.items():
        if getattr(REAL, name, module) is not module:
            globals()[name] = getattr(REAL, name)


_mirror_package_attributes()
image_transform = REAL.image_transform


def __getattr__(name: str):
    """Every other open_clip attribute passes through (``CLIP``, ``OPENAI_IMAGENET_TEMPLATES``, …)."""
    try:
        return getattr(REAL, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(dir(REAL)))


def install() -> types.ModuleType:
    """Serve ``import open_clip`` and every ``open_clip.<submodule>`` import from the shim in this
    process (``from open_clip.factory import create_model`` included); returns the shim."""
    shim = sys.modules[__name__]
    sys.modules["open_clip"] = shim
    for name in SUBMODULES:
        sys.modules[f"open_clip.{name}"] = sys.modules[f"{__name__}.{name}"]
    return shim


def uninstall() -> None:
    """Put open_clip's own package and submodules back under their names."""
    sys.modules["open_clip"] = REAL
    for name, module in SUBMODULES.items():
        sys.modules[f"open_clip.{name}"] = module
