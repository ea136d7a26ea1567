"""What travels with the weights besides them — the preprocessing and the tokenizer — and what a conversion says
when a target cannot hold either (a warning, or a refusal, one line each).

Preprocessing: open_clip_jax, MindSpore-CLIP and OpenAI's ``clip.load`` always preprocess as OpenAI did (bicubic
shortest-edge resize, centre crop, OpenAI's mean and std). Another model's preprocessing (a SigLIP-style mean of 0.5
and a squash) is recorded in the JAX config file and the ``.ckpt`` so that converting back restores it, and the
conversion warns that the file's own loaders apply OpenAI's; an OpenAI ``.pt`` cannot record it at all.

Tokenizer: OpenAI's BPE needs nothing written; any other (an HF SigLIP's sentencepiece, an HF CLIP's own
vocabulary) is written beside the weights where the target holds files (open_clip's hub folder, an HF folder), and
refused where it holds one file or always tokenizes with OpenAI's BPE.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..constants import OPENAI_MEAN, OPENAI_STD
from ..errors import UnsupportedError, warn_user
from .form import OpenClipForm
from .tokenizer_files import clip_bpe

OPENAI_PREPROCESS: dict[str, Any] = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
                                     "resize_mode": "shortest", "fill_color": 0}


def _square(size: Any) -> Any:
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return list(size) if isinstance(size, (list, tuple)) else size


def _numbers(value: Any) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in value) + ")" if isinstance(value, (list, tuple)) else repr(value)


def preprocess_differences(form: OpenClipForm) -> list[str]:
    """How ``form``'s preprocessing differs from OpenAI's at its image size, as ``key value`` strings."""
    pre = form.preprocess_cfg or {}
    out = []
    for key, want in OPENAI_PREPROCESS.items():
        got = pre.get(key)
        if got is None:
            continue
        if key in ("mean", "std"):
            values = list(got) if isinstance(got, (list, tuple)) else [got] * 3
            if len(values) != 3 or not all(math.isclose(float(a), b, rel_tol=1e-6) for a, b in zip(values, want)):
                out.append(f"{key} {_numbers(got)}")
        elif got != want:
            out.append(f"{key} {got}")
    size = pre.get("size")
    image_size = form.model_cfg.get("vision_cfg", {}).get("image_size")
    if size is not None and image_size is not None and _square(size) != _square(image_size):
        out.append(f"size {_square(size)}")
    return out


def warn_preprocess(form: OpenClipForm, dst: Path, who: str, kept: "str | None") -> None:
    """One warning when ``form``'s preprocessing is not OpenAI's, which ``who`` applies to ``dst``; ``kept``: where
    the file records it (converting back restores it), None when the format cannot record it."""
    diff = preprocess_differences(form)
    if not diff:
        return
    where = (f"it is recorded in {kept}, which clipzoo's loader applies and converting back restores" if kept else
             "the file cannot record it: apply it yourself, or convert to open_clip, hf or safetensors instead")
    warn_user(f"{form.source}: its preprocessing ({', '.join(diff)}) is not OpenAI's, which {who} applies to "
              f"{dst.name}; {where}")


# ------------------------------------------------------------------------------------------ tokenizer
def is_openai_tokenizer(tokenizer: Any) -> bool:
    """Whether an HF tokenizer has exactly OpenAI CLIP's 49408 ids (then open_clip's own BPE tokenizes as it does)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary to compare
        return False
    return len(vocab) == len(clip_bpe()[0]) and vocab == clip_bpe()[0]


def describe(tokenizer: Any) -> str:
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    return f"{type(tokenizer).__name__}{f' of {size} ids' if size else ''}"


def refuse_tokenizer(form: OpenClipForm, target: str) -> None:
    """Refuse a target that cannot hold ``form``'s own tokenizer (``target``: what it is, as the message says)."""
    if form.tokenizer is None:
        return
    raise UnsupportedError(f"{form.source}: its tokenizer ({describe(form.tokenizer)}) is not OpenAI's, and "
                           f"{target} cannot hold it (the text would be tokenized wrongly): convert to open_clip with "
                           "a folder as DST (it keeps the tokenizer files), or to hf or onnx")


def write_tokenizer(form: OpenClipForm, folder: Path, dst: Path) -> dict[str, Any]:
    """``form``'s own tokenizer saved in the open_clip folder being written at ``folder`` (renamed to ``dst``), and
    its model config naming it (``text_cfg.hf_tokenizer_name``: its hub name, else ``dst``), which is what open_clip's
    ``local-dir:`` loader and clipzoo's read back; the model config as it is when there is no such tokenizer."""
    cfg = form.model_cfg
    if form.tokenizer is None:
        return cfg
    form.tokenizer.save_pretrained(str(folder))
    name = str(getattr(form.tokenizer, "name_or_path", "") or "")
    hub_name = name and not Path(name).exists() and name.count("/") == 1 and not name.startswith((".", "/", "~"))
    text = {**cfg.get("text_cfg", {}), "hf_tokenizer_name": name if hub_name else str(dst)}
    return {**cfg, "text_cfg": text}
