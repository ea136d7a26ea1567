"""Drop-in for openai's ``clip`` package, over every model clipzoo loads.

    from clipzoo.compat import clip
    model, preprocess = clip.load("ViT-B/32", device="cpu")   # or an alias, a hub id, a local file…
    logits_per_image, logits_per_text = model(preprocess(img).unsqueeze(0), clip.tokenize(["a cat"]))

What matches openai/CLIP (tested against the ``clip-anytorch`` package on the same files):

- :func:`available_models` lists OpenAI's nine names first, then every other registry alias that openai's
  API can serve: models with an image and a text tower (no audio-text or image-only models).
- :func:`load` takes OpenAI's nine names as OpenAI's models (``"ViT-B/32"`` is ``[clip - openai - ViT-B/32]``,
  not KELIP's model of that name) and any other clipzoo spec. What openai raises as a RuntimeError (an unknown
  name, a bad device, a file that is no checkpoint, a failed download or checksum) is a RuntimeError here too,
  and clipzoo's error of that kind (:mod:`clipzoo.compat._errors`). For OpenAI-layout checkpoints the model is
  the real open_clip module (``isinstance(model, open_clip.CLIP)``; OpenAI's state-dict keys) with openai's
  ``forward`` -> ``(logits_per_image, logits_per_text)``; ``encode_image`` / ``encode_text`` return
  unnormalised features; ``model.visual.input_resolution``, ``model.logit_scale`` (the log-scale
  Parameter) and ``model.dtype`` are there. As with openai's ``load``, the model is float32 on CPU
  and (mixed) float16 on other devices. One deliberate difference: weights keep the checkpoint's own
  precision, where openai's ``build_model`` rounds every weight matrix through float16 first. OpenAI's
  released files are stored in float16, so for them (and any fp16 file) the numbers are identical;
  a float32 fine-tune in OpenAI's layout keeps its float32 weights here. Other models (HF transformers,
  sentence-transformers, CoCa, …) come wrapped in
  :class:`~clipzoo.compat._models.ClipModel`, which has the same API (SigLIP logits include the bias).
- ``preprocess`` is the model's own eval transform (PIL -> tensor); for OpenAI models it gives the
  same tensors as openai's.
- :func:`tokenize` returns openai's LongTensor token for token and raises openai's RuntimeError for a
  too-long text. After :func:`load` of a model with another tokenizer (SigLIP, an HF model, a
  multilingual text tower, …), ``tokenize`` tokenizes for that model — the last model loaded wins —
  until a model with OpenAI's tokenizer is loaded again.

``jit=True``: for a TorchScript archive (what OpenAI's downloads are, or a local one) this returns the
TorchScript module exactly as openai does (device and dtype constants patched). For any other model
whose module is open_clip's (OpenAI-layout state dicts, open_clip files and names) it returns that
module traced the way OpenAI's archives were: a ``torch.jit.ScriptModule`` whose ``forward(image,
text)`` gives ``(logits_per_image, logits_per_text)``, with ``encode_image`` / ``encode_text`` and the
``input_resolution`` / ``context_length`` / ``vocab_size`` tensors. A model that cannot be traced (HF
transformers, sentence-transformers, …) is returned eager with a warning, as openai does for a file
that is not an archive.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable
from typing import Any

import torch

from .. import tokenizers as _openai_tokenizer
from ..api import load as load_model
from ..checkpoints import is_torchscript
from ..constants import OPENAI_MEAN, OPENAI_STD
from ..download import download_url, sha256_in_url
from ..ensemble import Ensemble
from ..errors import BadTextError, ClipzooError, UnknownModelError, warn_user
from ..modalities import IMAGE, TEXT
from ..registry import REGISTRY
from ._errors import ModelNotFoundError, runtime_errors
from ._models import ClipModel, as_openai_module, input_resolution_of, trace_openai_module, with_open_clip_module

__all__ = ["available_models", "install", "load", "tokenize"]

OPENAI_MODELS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                 "ViT-L/14@336px")

# the Comparator whose tokenizer ``tokenize`` uses; None means OpenAI's
_active_comparator = None


class TextTooLongError(BadTextError, RuntimeError):
    """A too-long text for a non-OpenAI tokenizer: a RuntimeError like openai's, and clipzoo's error."""


SUBMODULES = ("model", "simple_tokenizer")  # openai's clip.model and clip.simple_tokenizer


def __getattr__(name: str):
    if name == "_tokenizer":  # openai exposes its SimpleTokenizer instance as clip._tokenizer
        return _openai_tokenizer.shared()
    if name == "clip":  # openai's package re-exports its clip.clip module: `from clip import clip`
        return sys.modules[__name__]
    if name in SUBMODULES:
        return importlib.import_module(f"{__package__}.clip_{name}")
    if name == "_MODELS":  # OpenAI's nine names -> their download URLs (prompt learners read it)
        return {n: REGISTRY.resolve(openai_spec(n)).source.url for n in OPENAI_MODELS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install() -> types.ModuleType:
    """Serve ``import clip`` and openai's submodules — ``clip.clip``, ``clip.model`` (``build_model``,
    ``convert_weights``), ``clip.simple_tokenizer`` (``SimpleTokenizer``) — from the shim in this process."""
    shim = sys.modules[__name__]
    sys.modules["clip"] = sys.modules["clip.clip"] = shim
    for name in SUBMODULES:
        sys.modules[f"clip.{name}"] = getattr(shim, name)
    return shim


def _download(url: str, root: "str | None" = None) -> str:
    """openai's ``clip._download``: the file at ``url`` in the cache (``root``), its SHA-256 checked when the URL
    names one (OpenAI's do: the folder before the file name)."""
    with runtime_errors():  # a failed download or checksum: openai's RuntimeError (and clipzoo's DownloadError)
        return str(download_url(url, sha256_in_url(url), root))


def openai_spec(name: Any) -> Any:
    """OpenAI's nine names (``"ViT-B/32"``) are OpenAI's models, as in openai's ``clip.load``: their cards'
    aliases. The registry also holds other models of those names (KELIP's ViT-B/32), so a bare name is
    ambiguous there; any other spec is returned as it is."""
    return f"[clip - openai - {name}]" if isinstance(name, str) and name in OPENAI_MODELS else name


# --------------------------------------------------------------------------- catalogue
def available_models() -> list[str]:
    """OpenAI's nine model names, then the alias of every other registry model that openai's API can
    serve: one with an image and a text tower (audio-text and image-only models are left out)."""
    names = list(OPENAI_MODELS)
    openai_ids = {n.lower() for n in OPENAI_MODELS}
    for card in REGISTRY:
        if card.publisher.lower() == "openai" and card.id.lower() in openai_ids and card.config.get("openai"):
            continue  # the same model as one of the nine names
        if servable(card):
            names.append(card.alias)
    return names


def servable(card) -> bool:
    """openai's API is images against texts: the model needs both towers."""
    return IMAGE in card.modalities and TEXT in card.modalities


# --------------------------------------------------------------------------- load
def load(name: str, device: str | torch.device = "cuda" if torch.cuda.is_available() else "cpu",
         jit: bool = False, download_root: str = None) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]:
    """Load a model: ``(model, preprocess)`` as openai's ``clip.load``.

    ``name``: an OpenAI name (``"ViT-B/32"``: always OpenAI's model), any clipzoo alias or spec
    (``"[clip - laion - …]"``, ``"hf-hub:org/name"``, ``"open_clip:ViT-B-32/laion2b_s34b_b79k"``), or a local
    checkpoint: an OpenAI TorchScript archive or state dict, an open_clip file or folder, an HF folder.
    ``download_root`` is the download cache folder (clipzoo's cache by default). What openai raises as a
    RuntimeError (an unknown name, a bad device, a file that is no checkpoint, a failed download) is a
    RuntimeError here too, and clipzoo's error of that kind (:mod:`clipzoo.compat._errors`).
    """
    global _active_comparator
    _refuse_ensemble(name)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    with runtime_errors():
        try:
            model, preprocess, comparator = _load(name, device, jit, download_root)
        except UnknownModelError as exc:
            if isinstance(exc, RuntimeError):
                raise
            raise ModelNotFoundError(f"Model {name} not found; {exc}") from None
    _active_comparator = None if comparator is None or uses_openai_tokenizer(comparator) else comparator
    return model, preprocess


def _load(name: str, device, jit: bool, download_root) -> tuple[torch.nn.Module, Callable, Any]:
    """``(model, preprocess, comparator)``; the comparator is None for a TorchScript archive."""
    spec = openai_spec(name)
    if jit:
        path = _torchscript_file(spec, download_root)
        if path is not None:
            model = _load_torchscript(path, device)
            return model, _openai_transform(_jit_input_resolution(model)), None
    precision = "fp32" if torch.device(device).type == "cpu" else "fp16"  # as openai's build_model
    comparator = load_model(spec, device=str(device), precision=precision, cache_dir=download_root)
    comparator = with_open_clip_module(comparator, device=str(device), precision=precision, cache_dir=download_root)
    resolution = input_resolution_of(comparator, getattr(comparator, "model", None))
    inner = getattr(comparator, "model", None)
    model = as_openai_module(inner, resolution) if isinstance(inner, torch.nn.Module) else None
    if model is None:
        model = ClipModel(comparator)
    model.eval()
    if jit:
        model = _jit_model(name, model, comparator)
    return model, comparator.transform, comparator


def _jit_model(name: str, model: torch.nn.Module, comparator) -> torch.nn.Module:
    """jit=True on a model that is not an archive: traced as OpenAI traced theirs, else eager with a warning."""
    if not isinstance(model, ClipModel):
        return trace_openai_module(model, comparator.context_length)
    warn_user(f"jit=True: {name} is not a TorchScript archive nor an open_clip module that can be traced "
              f"({comparator.card.backend} backend), so there is no JIT model to return; "
              "returning the eager model instead")
    return model


def _refuse_ensemble(name: Any) -> None:
    """openai's API is one model: an Ensemble (or several specs) has other compare semantics (a weighted
    mean of per-model cosines, no single logit scale, token ids or input size), so it is refused."""
    if isinstance(name, (Ensemble, list, tuple, set, dict)):
        what = "an Ensemble" if isinstance(name, Ensemble) else f"a {type(name).__name__} of models"
        raise ClipzooError(f"clip.load cannot load {what}: openai's clip API is one model with one tokenizer, "
                           "input size and logit scale, while an ensemble scores with a weighted mean of each "
                           "model's cosine similarities; use clipzoo.Ensemble(...).compare / .predict / .loss "
                           "directly, or clip.load one model")


def uses_openai_tokenizer(comparator) -> bool:
    """True when the model's tokenizer is OpenAI's BPE at 77 tokens (open_clip's SimpleTokenizer with
    the default vocabulary, lower-case cleaning and no token-dropping), so openai's ``tokenize`` fits."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    tok = getattr(comparator, "tokenizer", None)
    if isinstance(tok, _openai_tokenizer.OpenAITokenizer):
        return tok.context_length == _openai_tokenizer.DEFAULT_CONTEXT_LENGTH
    return (type(tok) is SimpleTokenizer and tok.clean_fn is _clean_lower and tok.reduction_fn is None
            and tok.vocab_size == 49408 and tok.context_length == _openai_tokenizer.DEFAULT_CONTEXT_LENGTH)


# --------------------------------------------------------------------------- tokenize
def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> torch.LongTensor:
    """openai's ``clip.tokenize``: a LongTensor [N, context_length] of OpenAI BPE ids.

    A text longer than the context raises ``RuntimeError("Input {text} is too long for context length
    {context_length}")`` unless ``truncate=True`` (then the last kept token is EOT). After ``load`` of a
    model with another tokenizer, this tokenizes for that model (its own context length).
    """
    comparator = _active_comparator
    if comparator is None:
        return _openai_tokenizer.shared().tokenize(texts, context_length=context_length, truncate=truncate)
    try:
        tokens = comparator.tokenize([texts] if isinstance(texts, str) else list(texts), truncate=truncate)
    except BadTextError as exc:
        raise TextTooLongError(str(exc)) from None
    if context_length not in (77, tokens.shape[-1]):
        raise ValueError(f"the loaded model ({comparator.card.alias}) tokenizes to {tokens.shape[-1]} tokens; "
                         f"context_length={context_length} does not apply to it")
    return tokens


# --------------------------------------------------------------------------- preprocessing (jit path)
def _convert_image_to_rgb(image):
    return image.convert("RGB")


def _openai_transform(n_px: int):
    """openai's ``_transform``: the preprocessing of its TorchScript models."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([
        Resize(n_px, interpolation=InterpolationMode.BICUBIC),
        CenterCrop(n_px),
        _convert_image_to_rgb,
        ToTensor(),
        Normalize(OPENAI_MEAN, OPENAI_STD),
    ])


_transform = _openai_transform  # openai's name for it (clip._transform)


# --------------------------------------------------------------------------- TorchScript (jit=True)
def _torchscript_file(name: str, download_root) -> str | None:
    """The TorchScript archive behind ``name`` (downloading OpenAI's when needed), or None."""
    expanded = os.path.expanduser(name)
    if os.path.isfile(expanded):
        return expanded if is_torchscript(expanded) else None
    card = REGISTRY.resolve(name)
    src = card.source
    if src.path and os.path.isfile(src.path):
        return src.path if is_torchscript(src.path) else None
    if src.url and card.config.get("openai"):
        path = download_url(src.url, src.sha256, download_root)
        return str(path) if is_torchscript(path) else None
    return None


def _jit_input_resolution(model) -> int:
    value = getattr(model, "input_resolution", None)
    if isinstance(value, torch.Tensor):
        return int(value.item())
    if value is not None:
        return int(value)
    sd = model.state_dict()  # an archive without the attribute: read it off the shapes, as build_model does
    if "visual.proj" in sd:
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return int(patch * grid)
    return int(round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5) * 32)


def _load_torchscript(path: str, device) -> torch.jit.ScriptModule:
    """openai/CLIP's ``load(..., jit=True)`` (MIT License, Copyright (c) 2021 OpenAI): device
    constants patched to ``device``, and the float16 casts patched to float32 on CPU."""
    model = torch.jit.load(path, map_location=device).eval()
    device_holder = torch.jit.trace(lambda: torch.ones([]).to(torch.device(device)), example_inputs=[])
    device_node = [n for n in device_holder.graph.findAllNodes("prim::Constant") if "Device" in repr(n)][-1]

    def _node_get(node, key: str):
        return getattr(node, node.kindOf(key))(key)

    def graphs_of(module):
        try:
            graphs = [module.graph] if hasattr(module, "graph") else []
        except RuntimeError:
            graphs = []
        if hasattr(module, "forward1"):
            graphs.append(module.forward1.graph)
        return graphs

    def patch_device(module):
        for graph in graphs_of(module):
            for node in graph.findAllNodes("prim::Constant"):
                if "value" in node.attributeNames() and str(_node_get(node, "value")).startswith("cuda"):
                    node.copyAttributes(device_node)

    model.apply(patch_device)
    for method in ("encode_image", "encode_text"):
        if hasattr(model, method):
            patch_device(getattr(model, method))

    if str(device) == "cpu":
        float_holder = torch.jit.trace(lambda: torch.ones([]).float(), example_inputs=[])
        float_node = list(float_holder.graph.findNode("aten::to").inputs())[1].node()

        def patch_float(module):
            for graph in graphs_of(module):
                for node in graph.findAllNodes("aten::to"):
                    inputs = list(node.inputs())
                    for i in [1, 2]:  # dtype can be the second or third argument to aten::to()
                        if i < len(inputs) and inputs[i].node().kind() == "prim::Constant" \
                                and "value" in inputs[i].node().attributeNames() \
                                and _node_get(inputs[i].node(), "value") == 5:
                            inputs[i].node().copyAttributes(float_node)

        model.apply(patch_float)
        for method in ("encode_image", "encode_text"):
            if hasattr(model, method):
                patch_float(getattr(model, method))
        model.float()
    return model
