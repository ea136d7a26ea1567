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
=============  ======================================================  ==========================================

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
from ..runtime.onnx_export import export_onnx
from .form import OpenClipForm
from .hf import open_clip_form_of_hf, write_hf

__all__ = ["TARGETS", "OpenClipForm", "convert", "open_clip_form", "check_openai_compatible"]

TARGETS = ("open_clip", "hf", "openai", "safetensors", "onnx")


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
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


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


def convert(src: "str | os.PathLike", dst: "str | os.PathLike", to: str, *, model_name: "str | None" = None,
            trust_pickle: bool = False, overwrite: bool = False, cache_dir: "str | None" = None) -> Path:
    """Convert the model ``src`` (any spec :func:`clipzoo.load` takes) to format ``to``, written at ``dst``."""
    if to not in TARGETS:
        raise ClipzooError(f"unknown target format {to!r}: choose from {', '.join(TARGETS)}")
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ClipzooError(f"{dst} already exists: choose another destination or pass --overwrite")
    if to == "openai" and dst.suffix not in (".pt", ".pth"):
        raise ClipzooError(f"an OpenAI checkpoint is one .pt file: name the destination like {dst.name}.pt")
    if to == "safetensors" and dst.suffix != ".safetensors":
        raise ClipzooError(f"name the destination with .safetensors, e.g. {dst.name}.safetensors")
    dst.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"model_name": model_name} if model_name else {}
    comparator = load(src, trust_pickle=trust_pickle, cache_dir=cache_dir, **kwargs)
    if to == "onnx":
        tmp = _tmp(dst)
        export_onnx(comparator, tmp)
        _replace(tmp, dst)
        return dst
    form = open_clip_form(comparator)
    if to == "open_clip":
        return write_open_clip(form, dst)
    if to == "openai":
        return write_openai(form, dst)
    if to == "safetensors":
        return write_safetensors(form, dst)
    tmp = _tmp(dst)
    write_hf(form, tmp)
    _replace(tmp, dst)
    return dst
