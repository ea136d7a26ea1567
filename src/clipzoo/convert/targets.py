"""``convert(SRC, DST, to=…)``: any checkpoint clipzoo loads → open_clip, HF, OpenAI, safetensors or ONNX.

The source is loaded with :func:`clipzoo.load` (every format it reads, with its safety rules), turned
into its open_clip form — state dict + open_clip model config + preprocessing config — and written in
the target's own layout, so that the target's own library loads it:

=============  ======================================================  ==========================================
``to``         ``DST``                                                  loads with
=============  ======================================================  ==========================================
open_clip      a folder: ``open_clip_config.json`` +                   ``open_clip.create_model_and_transforms(
               ``open_clip_model.safetensors`` (open_clip's hub          "local-dir:DST")``
               layout); or a ``.safetensors`` / ``.pt`` state dict      ``…(name, pretrained=DST)``
hf             a ``save_pretrained`` folder (CLIPModel / SiglipModel,  ``transformers.CLIPModel.from_pretrained(DST)``
               tokenizer, image processor)
openai         a ``.pt`` state dict in OpenAI's layout                  openai ``clip.load(DST)``
safetensors    one ``.safetensors`` with the open_clip config in its    ``clipzoo.load(DST)`` (and open_clip with the
               metadata: loads alone, and a pickle becomes safe          config name)
onnx           a folder: ``image.onnx``, ``text.onnx``,                 ``clipzoo.load(DST)``, onnxruntime
               ``clipzoo_onnx.json``
jax            open_clip_jax's ``.pkl`` (``{'params': …}``, numpy) +    ``clipzoo.load(DST)`` (the JAX engine);
               ``DST-stem.config.json`` (its config and sizes)          open_clip_jax with ``model=`` its config
=============  ======================================================  ==========================================

``source_format="jax"`` (CLI ``--from jax``) reads ``SRC`` as open_clip_jax parameters of config ``model``
(CLI ``--model``), so a JAX model converts to every other target through its open_clip form.

Every output is written to a temporary name and renamed, so an interrupted conversion leaves nothing
half-written at ``DST``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..api import load
from ..errors import ClipzooError, UnsupportedError
from ..extras import require
from ..models.jax_config import config_file, get_config, list_configs, read_config_file
from ..registry import card_from_fields
from ..runtime.onnx_export import check_vit_layout, export_onnx
from .carried import is_openai_tokenizer, preprocess_differences, refuse_tokenizer, warn_preprocess, write_tokenizer
from .destination import check_not_source, check_replaceable, staged
from .form import OpenClipForm, plain_preprocess
from .hf import open_clip_form_of_hf, write_hf
from .jax import jax_form, open_clip_form_of_jax, write_params_with_config
from .mindspore import form_of_mindspore, load_ckpt, write_mindspore
from .openai_check import check_openai_compatible

__all__ = ["TARGETS", "SOURCE_FORMATS", "OpenClipForm", "convert", "open_clip_form", "check_openai_compatible"]

TARGETS = ("open_clip", "hf", "openai", "safetensors", "onnx", "jax", "mindspore")
SOURCE_FORMATS = ("jax", "mindspore")  # formats SRC is read as when named (otherwise clipzoo.load decides)
# the package a target needs beyond the base install: checked before any work (one line, not a traceback)
TARGET_PACKAGES = {"hf": "transformers", "onnx": "onnx", "mindspore": "mindspore"}


def open_clip_form(comparator) -> OpenClipForm:
    """The open_clip form of a loaded comparator (open_clip backend, or an HF CLIP / SigLIP model)."""
    backend = comparator.card.backend
    if hasattr(comparator, "model_config") and hasattr(comparator, "preprocess_config"):  # open_clip backend
        if not comparator.model_config:
            raise UnsupportedError(f"{comparator.card.alias}: its open_clip config is unknown; pass model_name=")
        sd = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
              for k, v in comparator.model.state_dict().items()}
        return OpenClipForm(sd, json.loads(json.dumps(comparator.model_config)), dict(comparator.preprocess_config),
                            comparator.card.alias, _local_tokenizer(comparator))
    if backend == "transformers":
        return open_clip_form_of_hf(comparator)
    if backend == "jax":
        return open_clip_form_of_jax(comparator)
    if backend == "mindspore":
        return form_of_mindspore(comparator)
    raise UnsupportedError(f"{comparator.card.alias} ({backend} backend) has no open_clip form: it can be "
                           f"converted to onnx only")


def _local_tokenizer(comparator):
    """The HF tokenizer an open_clip model reads from its own folder (an open_clip hub folder with tokenizer files),
    which must travel with it; None for OpenAI's BPE or a tokenizer its config names on the hub."""
    hf = getattr(getattr(comparator, "tokenizer", None), "tokenizer", None)  # open_clip's HFTokenizer
    name = getattr(hf, "name_or_path", None)
    if hf is None or not name or not os.path.isdir(name) or is_openai_tokenizer(hf):
        return None
    return hf


def _write_safetensors(form: OpenClipForm, path: Path, model_cfg: "dict | None" = None) -> None:
    from safetensors.torch import save_file

    config = {"model_cfg": model_cfg or form.model_cfg, "preprocess_cfg": plain_preprocess(form.preprocess_cfg)}
    meta = {"format": "pt", "open_clip_config": json.dumps(config)}
    save_file({k: v.contiguous() for k, v in form.state_dict.items()}, str(path), metadata=meta)


def write_open_clip(form: OpenClipForm, dst: Path) -> Path:
    """A folder in open_clip's hub layout (with the model's own tokenizer files when it is not OpenAI's), or a
    ``.safetensors`` / ``.pt`` state dict."""
    import torch

    if dst.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        refuse_tokenizer(form, f"a single {dst.suffix} file")
    with staged(dst) as tmp:
        if dst.suffix in (".safetensors",):
            _write_safetensors(form, tmp)
        elif dst.suffix in (".pt", ".pth", ".bin"):
            torch.save(form.state_dict, tmp)
        else:
            tmp.mkdir(parents=True)
            model_cfg = write_tokenizer(form, tmp, dst)
            config = {"model_cfg": model_cfg, "preprocess_cfg": plain_preprocess(form.preprocess_cfg)}
            (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
            _write_safetensors(form, tmp / "open_clip_model.safetensors", model_cfg)
    return dst


def write_openai(form: OpenClipForm, dst: Path) -> Path:
    import torch

    check_openai_compatible(form)
    sd = {k: v for k, v in form.state_dict.items() if k != "attn_mask"}
    with staged(dst) as tmp:
        torch.save(sd, tmp)
    warn_preprocess(form, dst, "openai's clip.load", None)
    return dst


def write_safetensors(form: OpenClipForm, dst: Path) -> Path:
    refuse_tokenizer(form, "a single .safetensors file")
    with staged(dst) as tmp:
        _write_safetensors(form, tmp)
    return dst


def write_jax(form: OpenClipForm, dst: Path) -> Path:
    """open_clip_jax's ``.pkl`` of the model, and its config file (``DST-stem.config.json``) next to it, which records
    the model's preprocessing when it is not OpenAI's (open_clip_jax's)."""
    refuse_tokenizer(form, "a JAX .pkl (open_clip_jax tokenizes with OpenAI's BPE)")
    cfg, variables = jax_form(form)
    vision, text = form.model_cfg.get("vision_cfg", {}), form.model_cfg.get("text_cfg", {})
    size = vision.get("image_size", 224)
    pre = plain_preprocess(form.preprocess_cfg) if preprocess_differences(form) else None
    with staged(dst) as tmp:
        try:
            write_params_with_config(tmp, variables, cfg, int(size[0] if isinstance(size, (list, tuple)) else size),
                                     int(text.get("context_length", 77)), pre)
            os.replace(config_file(tmp), config_file(dst))
        finally:
            config_file(tmp).unlink(missing_ok=True)
    warn_preprocess(form, dst, "open_clip_jax", config_file(dst).name)
    return dst


def write_ckpt(form: OpenClipForm, dst: Path) -> Path:
    refuse_tokenizer(form, "a MindSpore .ckpt (MindSpore-CLIP tokenizes with OpenAI's BPE)")
    write_mindspore(form, dst)
    warn_preprocess(form, dst, "MindSpore-CLIP", "the .ckpt's model config")
    return dst


WRITERS = {"open_clip": write_open_clip, "openai": write_openai, "safetensors": write_safetensors, "jax": write_jax,
           "mindspore": write_ckpt}


def _check_destination(to: str, dst: Path, overwrite: bool) -> None:
    if to not in TARGETS:
        raise ClipzooError(f"unknown target format {to!r}: choose from {', '.join(TARGETS)}")
    if to in TARGET_PACKAGES:
        require(TARGET_PACKAGES[to], f"converting to {to}")
    if dst.exists() and not overwrite:
        raise ClipzooError(f"{dst} already exists: choose another destination or pass --overwrite")
    if to == "jax" and config_file(dst).exists() and not overwrite:  # was replaced without a word
        raise ClipzooError(f"{config_file(dst)} already exists: choose another destination or pass --overwrite")
    if to == "openai" and dst.suffix not in (".pt", ".pth"):
        raise ClipzooError(f"an OpenAI checkpoint is one .pt file: name the destination like {dst.name}.pt")
    if to == "safetensors" and dst.suffix != ".safetensors":
        raise ClipzooError(f"name the destination with .safetensors, e.g. {dst.name}.safetensors")
    if to == "mindspore" and dst.suffix.lower() != ".ckpt":  # as the readers take it: X.CKPT too
        raise ClipzooError(f"a MindSpore checkpoint is one .ckpt file: name the destination like {dst.name}.ckpt")
    if to == "jax" and dst.suffix != ".pkl":
        raise ClipzooError(f"JAX parameters are one open_clip_jax .pkl file: name the destination like "
                           f"{dst.name}.pkl")


def load_source(src, source_format: "str | None" = None, model: "str | None" = None, **kwargs: Any):
    """``clipzoo.load(src, **kwargs)``; with ``source_format="jax"``, ``src`` read as open_clip_jax parameters
    of config ``model`` (or of the config file written next to it)."""
    is_pkl = str(src).lower().endswith(".pkl")
    if source_format is None and (model is not None or kwargs.get("model_name")) and is_pkl:
        source_format = "jax"  # a .pkl is open_clip_jax's format (as clipzoo.load decides too)
    if source_format is None:
        if model is not None:
            raise ClipzooError("--model names the JAX config of a JAX parameter file: pass it with --from jax")
        if is_pkl and os.path.isfile(src) and not read_config_file(src):
            raise ClipzooError(f"{src} holds JAX parameters (an open_clip_jax .pkl) with no config file beside it: "
                               f"name its config with --from jax --model NAME (one of {', '.join(list_configs())})")
        return load(src, **kwargs)
    if source_format not in SOURCE_FORMATS:
        raise ClipzooError(f"unknown source format {source_format!r} for --from: choose from "
                           f"{', '.join(SOURCE_FORMATS)}")
    if kwargs.pop("model_name", None):
        raise ClipzooError(f"--model-name names an open_clip config; a {source_format} file's config is named with "
                           f"--from {source_format} --model NAME")
    if source_format == "mindspore":
        return load_ckpt(src, model, **kwargs)
    if not os.path.isfile(src):
        raise ClipzooError(f"--from jax reads a local open_clip_jax .pkl, and {src} is no such file")
    if model is None and not read_config_file(src):
        raise ClipzooError(f"--from jax needs --model: name the JAX config of {src} (one of "
                           f"{', '.join(list_configs())})")
    if model is not None:
        get_config(model)  # an unknown name fails here, before the file is read
    card = card_from_fields(publisher="local", id=Path(src).name, path=str(src), backend="jax")
    return load(card, **kwargs, **({"model": model} if model is not None else {}))


def convert(src: "str | os.PathLike", dst: "str | os.PathLike", to: str, *, model_name: "str | None" = None,
            trust_pickle: bool = False, overwrite: bool = False, cache_dir: "str | None" = None,
            source_format: "str | None" = None, model: "str | None" = None, vit_layout: "str | None" = None) -> Path:
    """Convert the model ``src`` (any spec :func:`clipzoo.load` takes; with ``source_format="jax"``
    open_clip_jax parameters of config ``model``) to format ``to``, written at ``dst``; ``vit_layout`` (ONNX
    only): how an open_clip ViT image tower is written (:func:`clipzoo.runtime.onnx_export.export_onnx`'s
    ``vit``: ``plain``, the default, ``standard`` or ``contrib``)."""
    dst = Path(os.path.abspath(os.path.expanduser(os.fspath(dst))))  # "sub/.." is the folder it names
    if vit_layout is not None:
        if to != "onnx":
            raise ClipzooError(f"--vit-layout applies to --to onnx, not --to {to}")
        check_vit_layout(vit_layout)
    _check_destination(to, dst, overwrite)
    check_not_source(dst, os.path.expanduser(os.fspath(src)) if isinstance(src, (str, os.PathLike)) else None)
    check_replaceable(dst)
    kwargs: dict[str, Any] = {"model_name": model_name} if model_name else {}
    comparator = load_source(src, source_format, model, trust_pickle=trust_pickle, cache_dir=cache_dir, **kwargs)
    check_not_source(dst, comparator.card.source.path)  # a catalogued model's files: its cache
    dst.parent.mkdir(parents=True, exist_ok=True)
    if to == "onnx":
        with staged(dst) as tmp:
            export_onnx(comparator, tmp, vit=vit_layout or "plain")
        return dst
    form = open_clip_form(comparator)
    if to in WRITERS:
        return WRITERS[to](form, dst)
    with staged(dst) as tmp:
        write_hf(form, tmp)
    return dst
