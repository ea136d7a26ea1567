"""Conversion both ways between PyTorch CLIP checkpoints (OpenAI / open_clip) and MindSpore ``.ckpt`` files.

>>> to_mindspore("ViT-B-32.pt", "ViT-B-32.ckpt")                            # any OpenAI / open_clip model
>>> from_mindspore("ViT-B-32.ckpt", "model.safetensors", model="ViT-B-32")  # -> open_clip (or openai, …)

The ``.ckpt`` holds MindSpore-CLIP's names (:mod:`clipzoo.models.mindspore_names`: its ``ckpt_transform.py``
rule) in fp32, so it loads into MindSpore-CLIP's own ``clip`` / ``open_clip`` model classes and into clipzoo's
MindSpore engine; a ``.ckpt`` written by ``ckpt_transform.py`` (OpenAI's fp16 weights) loads here. The way
back builds the model's open_clip form — weights, open_clip model config (from ``model``, a config name of
:mod:`clipzoo.models.mindspore_config`; else the config the ``.ckpt`` stores — ours store it, as a string entry
MindSpore-CLIP's loaders skip, so a GELU model stays GELU; else read from the shapes, with a warning), the
preprocessing the stored config records (the model's own, which MindSpore-CLIP does not apply), else OpenAI's —
and writes it with the ordinary targets. Every tensor is copied as it is, so a round trip is
bit-identical for fp32 weights.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..api import load
from ..backends import get_backend
from ..errors import ClipzooError
from ..models.mindspore_config import PREPROCESS_KEY, check_config, config_of, get_config, tower_sizes
from ..models.mindspore_names import mindspore_to_torch, read_ckpt_entries, torch_to_mindspore, write_ckpt
from ..registry import card_from_fields
from .carried import preprocess_differences
from .form import PREPROCESS_KEYS, OpenClipForm, plain_preprocess

__all__ = ["form_of_ckpt", "form_of_mindspore", "write_mindspore", "load_ckpt", "mindspore_comparator"]

OPENAI_PREPROCESS = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
                     "interpolation": "bicubic", "resize_mode": "shortest"}


def _form(params: dict[str, Any], model_cfg: dict[str, Any], source: str) -> OpenClipForm:
    """The open_clip form; the preprocessing the ``.ckpt`` recorded (of the model it was converted from), else
    OpenAI's, which MindSpore-CLIP applies."""
    model_cfg = dict(model_cfg)
    recorded = model_cfg.pop(PREPROCESS_KEY, None) or {}
    size = tower_sizes(model_cfg)["image_size"]
    preprocess = {"size": size, **OPENAI_PREPROCESS, **{k: v for k, v in recorded.items() if k in PREPROCESS_KEYS}}
    return OpenClipForm(mindspore_to_torch(params), model_cfg, preprocess, source)


def form_of_ckpt(path: "str | os.PathLike", model: "str | dict | None" = None) -> OpenClipForm:
    """The open_clip form of a MindSpore ``.ckpt`` (``model``: its config; None takes the config clipzoo stored in
    the file, else reads an OpenAI-style one from the shapes, as MindSpore-CLIP's ``build_model`` does, and warns)."""
    params = read_ckpt_entries(path)
    return _form(params, config_of(params, str(path), model), str(path))


def form_of_mindspore(comparator) -> OpenClipForm:
    """The open_clip form of a model loaded with the MindSpore engine (its weights as they are in MindSpore)."""
    params = {p.name: p.asnumpy() for p in comparator.net.get_parameters()}
    return _form(params, dict(comparator.model_config), comparator.card.alias)


def write_mindspore(form: OpenClipForm, dst: "str | os.PathLike") -> Path:
    """Write an open_clip form as a MindSpore ``.ckpt`` in MindSpore-CLIP's names (fp32) with its model config (the
    string entry ``clipzoo_model_config``, which MindSpore-CLIP's loaders skip), atomically."""
    dst = Path(dst)
    if dst.suffix.lower() != ".ckpt":
        raise ClipzooError(f"a MindSpore checkpoint is one .ckpt file: name the destination like {dst.name}.ckpt")
    cfg = check_config(form.model_cfg)  # a model MindSpore-CLIP's classes (and ours) build
    cfg.pop(PREPROCESS_KEY, None)
    if preprocess_differences(form):  # not OpenAI's, which MindSpore-CLIP applies: restored by the way back
        cfg[PREPROCESS_KEY] = plain_preprocess(form.preprocess_cfg)
    tmp = dst.with_name(f".{dst.stem}.tmp-{os.getpid()}.ckpt")  # save_checkpoint wants the .ckpt suffix
    try:
        write_ckpt(tmp, torch_to_mindspore(form.state_dict), model_config=cfg)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst



def load_ckpt(src: "str | os.PathLike", model: "str | None" = None, **kwargs: Any):
    """``--from mindspore``: the MindSpore ``.ckpt`` ``src`` loaded by the MindSpore engine, of config ``model``
    (None: the config stored in the file, else read from its shapes as MindSpore-CLIP's ``build_model`` does)."""
    if not os.path.isfile(src) or not str(src).lower().endswith(".ckpt"):
        raise ClipzooError(f"--from mindspore reads a local MindSpore .ckpt, and {src} is no such file")
    if model is not None:
        get_config(model)  # an unknown name fails here, before the file is read
    kwargs.pop("model_name", None)
    card = card_from_fields(publisher="local", id=Path(src).name, path=str(src), backend="mindspore")
    return load(card, **kwargs, **({"model": model} if model is not None else {}))


def mindspore_comparator(form: OpenClipForm, card, mode: str = "pynative"):
    """The MindSpore engine's Comparator of an open_clip form (``clipzoo parity --engines torch,mindspore``)."""
    return get_backend("mindspore").build(card, torch_to_mindspore(form.state_dict), check_config(form.model_cfg),
                                          mode=mode)
