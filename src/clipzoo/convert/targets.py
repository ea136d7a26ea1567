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
import shutil
from pathlib import Path
from typing import Any

from ..api import load
from ..errors import ClipzooError, UnsupportedError
from ..extras import require
from ..models.jax_config import config_file, get_config, list_configs, read_config_file
from ..registry import card_from_fields
from ..runtime.onnx_export import check_vit_layout, export_onnx
from .form import OpenClipForm
from .hf import open_clip_form_of_hf, write_hf
from .jax import jax_form, open_clip_form_of_jax, write_params_with_config
from .mindspore import form_of_mindspore, load_ckpt, write_mindspore

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
                            comparator.card.alias)
    if backend == "transformers":
        return open_clip_form_of_hf(comparator)
    if backend == "jax":
        return open_clip_form_of_jax(comparator)
    if backend == "mindspore":
        return form_of_mindspore(comparator)
    raise UnsupportedError(f"{comparator.card.alias} ({backend} backend) has no open_clip form: it can be "
                           f"converted to onnx only")


def check_openai_compatible(form: OpenClipForm) -> None:
    """OpenAI's ``clip.build_model`` rebuilds only its own architectures from tensor shapes."""
    cfg = form.model_cfg
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    problems = []
    if not cfg.get("quick_gelu", False):
        problems.append("it uses GELU (OpenAI's code always builds QuickGELU)")
    if "timm_model_name" in vision or "hf_model_name" in text or cfg.get("custom_text") or "multimodal_cfg" in cfg:
        problems.append("its towers are not OpenAI's ViT / ModifiedResNet and causal text transformer")
    if form.state_dict.get("logit_bias") is not None:
        problems.append("it has a SigLIP logit bias")
    width = int(text.get("width", 512))
    if int(text.get("heads", 8)) != max(1, width // 64):
        problems.append(f"its text tower has {text.get('heads')} heads where OpenAI's code infers width // 64 = "
                        f"{width // 64}")
    if int(vision.get("head_width", 64)) != 64:  # OpenAI's code infers width // 64 heads (width * 32 // 64 for a
        problems.append(f"its image tower's heads are {vision.get('head_width')} wide where OpenAI's code infers "
                        "64")  # ResNet's attention pool): other widths loaded with features 0.19 off
    for side, tower in (("image", vision), ("text", text)):
        if float(tower.get("mlp_ratio", 4.0)) != 4.0:
            problems.append(f"its {side} tower's MLP ratio is {tower.get('mlp_ratio')} where OpenAI's code builds 4")
    if int(text.get("vocab_size", 49408)) != 49408 or int(text.get("context_length", 77)) != 77:
        problems.append("its tokenizer is not OpenAI's (vocabulary 49408, context 77)")
    for key in ("attentional_pool", "no_ln_pre", "final_ln_after_pool", "pos_embed_type", "pool_type", "ls_init_value"):
        if vision.get(key) not in (None, False, "tok", "learnable"):
            problems.append(f"vision_cfg.{key} = {vision[key]!r} is not an OpenAI option")
    if problems:
        raise UnsupportedError(f"{form.source} cannot be written in OpenAI's format: " + "; ".join(problems)
                               + ". Convert it to open_clip, hf or safetensors instead")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _replace(tmp: Path, dst: Path) -> None:
    """``tmp`` renamed to ``dst`` (``--overwrite``): a folder there is removed first; a file or link there is
    replaced itself — a link's target is never written — and removed first when a folder takes its place."""
    if dst.is_symlink() or dst.is_file():
        if tmp.is_dir():
            dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def check_not_source(dst: Path, source: "str | os.PathLike | None") -> None:
    """An existing ``dst`` that is the source model's file or folder, a folder holding it, or a file inside its
    folder would be overwritten by the conversion's result: refused, whatever ``--overwrite`` says."""
    if source is None or not dst.exists() or not os.path.exists(source):
        return
    where = dst.parent.resolve() / dst.name  # a link at dst is replaced itself, not followed
    src = Path(source).resolve()
    if where == src or where in src.parents or (src.is_dir() and src in where.parents):
        raise ClipzooError(f"{dst} overlaps the model being converted ({source}): writing there would destroy "
                           "it; choose another destination")


def _write_safetensors(form: OpenClipForm, path: Path) -> None:
    from safetensors.torch import save_file

    meta = {"format": "pt", "open_clip_config": json.dumps(form.config_json())}
    save_file({k: v.contiguous() for k, v in form.state_dict.items()}, str(path), metadata=meta)


def write_open_clip(form: OpenClipForm, dst: Path) -> Path:
    import torch

    tmp = _tmp(dst)
    if dst.suffix in (".safetensors",):
        _write_safetensors(form, tmp)
    elif dst.suffix in (".pt", ".pth", ".bin"):
        torch.save(form.state_dict, tmp)
    else:
        tmp.mkdir(parents=True)
        (tmp / "open_clip_config.json").write_text(json.dumps(form.config_json(), indent=2) + "\n")
        _write_safetensors(form, tmp / "open_clip_model.safetensors")
    _replace(tmp, dst)
    return dst


def write_openai(form: OpenClipForm, dst: Path) -> Path:
    import torch

    check_openai_compatible(form)
    sd = {k: v for k, v in form.state_dict.items() if k != "attn_mask"}
    tmp = _tmp(dst)
    torch.save(sd, tmp)
    _replace(tmp, dst)
    return dst


def write_safetensors(form: OpenClipForm, dst: Path) -> Path:
    tmp = _tmp(dst)
    _write_safetensors(form, tmp)
    _replace(tmp, dst)
    return dst


def write_jax(form: OpenClipForm, dst: Path) -> Path:
    """open_clip_jax's ``.pkl`` of the model, and its config file (``DST-stem.config.json``) next to it."""
    cfg, variables = jax_form(form)
    vision, text = form.model_cfg.get("vision_cfg", {}), form.model_cfg.get("text_cfg", {})
    size = vision.get("image_size", 224)
    tmp = _tmp(dst)
    try:
        write_params_with_config(tmp, variables, cfg, int(size[0] if isinstance(size, (list, tuple)) else size),
                                 int(text.get("context_length", 77)))
        os.replace(config_file(tmp), config_file(dst))
        _replace(tmp, dst)
    finally:
        for leftover in (tmp, config_file(tmp)):
            leftover.unlink(missing_ok=True)
    return dst


MODEL_FILES = ("open_clip_config.json", "config.json", "clipzoo_onnx.json", "clipzoo_composite.json",
               "open_clip_model.safetensors", "model.safetensors", "pytorch_model.bin")
"""A folder holding one of these is a model folder, which ``--overwrite`` may replace."""


def _check_replaceable(dst: Path) -> None:
    """``--overwrite`` replaces a file or a model folder, never a folder of other files nor the current folder
    (``DST`` ``sub/..`` removed everything in the current folder, then failed)."""
    if dst.is_symlink() or not dst.is_dir():
        return
    if dst == Path.cwd() or dst in Path.cwd().parents:
        raise ClipzooError(f"{dst} is the current folder or holds it: writing there would remove it; choose "
                           "another destination")
    entries = sorted(p.name for p in dst.iterdir())
    if entries and not any((dst / name).exists() for name in MODEL_FILES):
        raise ClipzooError(f"{dst} is a folder of other files ({', '.join(entries[:3])}"
                           f"{', …' if len(entries) > 3 else ''}), not a model folder: --overwrite would remove "
                           "them; choose another destination")


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
    if source_format is None and model is not None and str(src).lower().endswith(".pkl"):
        source_format = "jax"  # a .pkl is open_clip_jax's format (as clipzoo.load decides too)
    if source_format is None:
        if model is not None:
            raise ClipzooError("--model names the JAX config of a JAX parameter file: pass it with --from jax")
        return load(src, **kwargs)
    if source_format not in SOURCE_FORMATS:
        raise ClipzooError(f"unknown source format {source_format!r} for --from: choose from "
                           f"{', '.join(SOURCE_FORMATS)}")
    if source_format == "mindspore":
        return load_ckpt(src, model, **kwargs)
    if not os.path.isfile(src):
        raise ClipzooError(f"--from jax reads a local open_clip_jax .pkl, and {src} is no such file")
    if model is None and not read_config_file(src):
        raise ClipzooError(f"--from jax needs --model: name the JAX config of {src} (one of "
                           f"{', '.join(list_configs())})")
    if model is not None:
        get_config(model)  # an unknown name fails here, before the file is read
    kwargs.pop("model_name", None)
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
    _check_replaceable(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"model_name": model_name} if model_name else {}
    comparator = load_source(src, source_format, model, trust_pickle=trust_pickle, cache_dir=cache_dir, **kwargs)
    check_not_source(dst, comparator.card.source.path)  # a catalogued model's files: its cache
    if to == "onnx":
        tmp = _tmp(dst)
        export_onnx(comparator, tmp, vit=vit_layout or "plain")
        _replace(tmp, dst)
        return dst
    form = open_clip_form(comparator)
    if to == "open_clip":
        return write_open_clip(form, dst)
    if to == "openai":
        return write_openai(form, dst)
    if to == "safetensors":
        return write_safetensors(form, dst)
    if to == "jax":
        return write_jax(form, dst)
    if to == "mindspore":
        return write_mindspore(form, dst)
    tmp = _tmp(dst)
    write_hf(form, tmp)
    _replace(tmp, dst)
    return dst
