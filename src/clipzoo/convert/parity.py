"""Parity report: clipzoo's model against another implementation of the same weights, on the same inputs.

As the MindSpore-CLIP porting handbook proves a port: for image features, text features and
probabilities, the mean and max absolute difference and the mean and max relative difference
``|a − b| / (|b| + 1e-6)`` (``a``: clipzoo, ``b``: the reference). Each side runs end to end with its
own preprocessing and tokenizer, so the table covers everything a user's numbers depend on.

References (``against``):

- ``open_clip``: ``open_clip.create_model_and_transforms`` on the same weights (an open_clip pair by
  name, or the checkpoint written in open_clip's hub layout and loaded with ``local-dir:``);
- ``openai``: openai's ``clip.load`` on the checkpoint in OpenAI's format;
- ``hf``: ``transformers`` ``CLIPModel`` / ``SiglipModel`` + ``AutoProcessor`` on the HF folder (converted
  first when the model is not one);
- ``onnx``: clipzoo's ONNX Runtime export of the model (``a``) against clipzoo eager (``b``).
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import ClipzooError, UnsupportedError

__all__ = ["AGAINST", "ParityReport", "parity", "difference", "default_images", "DEFAULT_TEXTS"]

AGAINST = ("open_clip", "openai", "hf", "onnx")
DEFAULT_TEXTS = ("a photo of a cat", "a red circle on a white background", "two dogs playing in the snow",
                 "a diagram of a neural network", "Un café, s'il vous plaît!")
ROWS = ("image features", "text features", "probabilities")


def difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean / max absolute and relative difference of ``a`` against the reference ``b``."""
    a, b = a.double().cpu(), b.double().cpu()
    if a.shape != b.shape:
        raise ClipzooError(f"outputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    abs_diff = (a - b).abs()
    rel = abs_diff / (b.abs() + 1e-6)
    return {"mean_abs": float(abs_diff.mean()), "max_abs": float(abs_diff.max()),
            "mean_rel": float(rel.mean()), "max_rel": float(rel.max())}


@dataclass
class ParityReport:
    model: str
    against: str
    tol: float
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    n_images: int = 0
    n_texts: int = 0

    @property
    def max_abs(self) -> float:
        return max(r["max_abs"] for r in self.rows.values())

    @property
    def ok(self) -> bool:
        return all(math.isfinite(r["max_abs"]) for r in self.rows.values()) and self.max_abs <= self.tol

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "against": self.against, "tol": self.tol, "ok": self.ok,
                "n_images": self.n_images, "n_texts": self.n_texts, "rows": self.rows}

    def markdown(self) -> str:
        lines = [f"| output | mean abs diff | max abs diff | mean rel diff | max rel diff |",
                 "|---|---|---|---|---|"]
        for name, r in self.rows.items():
            lines.append(f"| {name} | {r['mean_abs']:.2e} | {r['max_abs']:.2e} | {r['mean_rel']:.2e} | "
                         f"{r['max_rel']:.2e} |")
        verdict = "within" if self.ok else "ABOVE"
        lines.append("")
        lines.append(f"clipzoo vs {self.against} on {self.n_images} images and {self.n_texts} texts: max abs diff "
                     f"{self.max_abs:.2e}, {verdict} tolerance {self.tol:g}")
        return "\n".join(lines)


def default_images(n: int = 4):
    """Deterministic test images of different sizes (no files needed)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(224, 224), (320, 240), (180, 300), (97, 131)][:n]):
        im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(im)
        draw.ellipse([w // 6, h // 6, w // 2 + 10 * i, h // 2 + 5 * i], fill=(220, 40 * i, 30))
        draw.rectangle([w // 2, h // 2, w - 5, h - 5], fill=(20, 90, 200 - 30 * i))
        out.append(im)
    return out


def _ours(model, images, texts):
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(list(texts))
        probs = model.probabilities(model.similarity(img, txt))
    return img, txt, probs


def _probs(img: torch.Tensor, txt: torch.Tensor, scale: float, bias: "float | None") -> torch.Tensor:
    logits = scale * img @ txt.T
    if bias is not None:
        return torch.sigmoid(logits + bias)
    return logits.softmax(dim=-1)


def _run_open_clip(ours, images, texts, work: Path):
    import open_clip

    from .targets import open_clip_form, write_open_clip

    src = ours.card.source
    if src.open_clip and src.open_clip[1]:
        model, _, preprocess = open_clip.create_model_and_transforms(src.open_clip[0], pretrained=src.open_clip[1])
        tokenizer = open_clip.get_tokenizer(src.open_clip[0])
    else:
        folder = write_open_clip(open_clip_form(ours), work / "open_clip")
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])).float(), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(list(texts))).float(), dim=-1)
        bias = getattr(model, "logit_bias", None)
        probs = _probs(img, txt, float(model.logit_scale.exp()), None if bias is None else float(bias))
    return img, txt, probs


def _run_openai(ours, images, texts, work: Path):
    import warnings

    with warnings.catch_warnings():  # clip-anytorch imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        import clip  # openai's package (clip-anytorch)

    from .targets import open_clip_form, write_openai

    path = ours.card.source.path
    if not (path and os.path.isfile(path) and _is_openai_file(path)):
        path = str(write_openai(open_clip_form(ours), work / "openai.pt"))
    model, preprocess = clip.load(path, device="cpu", jit=False)
    model = model.float().eval()
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])).float(), dim=-1)
        txt = F.normalize(model.encode_text(clip.tokenize(list(texts))).float(), dim=-1)
        probs = _probs(img, txt, float(model.logit_scale.exp()), None)
    return img, txt, probs


def _is_openai_file(path: str) -> bool:
    from ..checkpoints import is_torchscript

    return is_torchscript(path) or path.endswith((".pt", ".pth"))


def _run_hf(ours, images, texts, work: Path):
    from transformers import AutoModel, AutoProcessor

    from .targets import convert

    path = ours.card.source.path
    folder = path if (ours.card.backend == "transformers" and path and os.path.isdir(path)) else None
    if folder is None:
        spec = path or ours.card.alias
        folder = str(convert(spec, work / "hf", "hf"))
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    kind = type(model).__name__
    padding = "max_length" if "Siglip" in kind else True
    with torch.no_grad():
        pixel = processor(images=images, return_tensors="pt")
        tokens = processor(text=list(texts), return_tensors="pt", padding=padding, truncation=True)
        img = F.normalize(_tensor(model.get_image_features(**pixel)).float(), dim=-1)
        txt = F.normalize(_tensor(model.get_text_features(**tokens)).float(), dim=-1)
        bias = getattr(model, "logit_bias", None)
        probs = _probs(img, txt, float(model.logit_scale.exp()), None if bias is None else float(bias))
    return img, txt, probs


def _tensor(out):
    """transformers 5 may return a model output where 4.x returned a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise UnsupportedError(f"cannot read features from {type(out).__name__}")


def _run_onnx(ours, images, texts, work: Path):
    """Here the reference is clipzoo eager and the ONNX export is the side under test."""
    import clipzoo

    from .onnx import export_onnx

    folder = export_onnx(ours, work / "onnx")
    return _ours(clipzoo.load(str(folder)), images, texts)


def parity(model: Any, against: str, images: "Sequence[Any] | None" = None, texts: "Sequence[str] | None" = None,
           tol: float = 1e-4, workdir: "str | os.PathLike | None" = None, **load_kwargs: Any) -> ParityReport:
    """Run ``model`` (a spec or a loaded comparator) and the ``against`` implementation on the same
    inputs (default: 4 generated images, 5 texts) and return the table of differences."""
    import clipzoo

    if against not in AGAINST:
        raise ClipzooError(f"unknown reference {against!r}: choose from {', '.join(AGAINST)}")
    ours = model if hasattr(model, "encode_image") else clipzoo.load(model, **load_kwargs)
    if images is None:
        images = default_images()
    else:
        from ..inputs import to_pil

        images = [to_pil(i) for i in images]
    texts = list(texts) if texts else list(DEFAULT_TEXTS)
    runner = {"open_clip": _run_open_clip, "openai": _run_openai, "hf": _run_hf, "onnx": _run_onnx}[against]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        theirs = runner(ours, images, texts, Path(tmp))
        mine = _ours(ours, images, texts)
    if against == "onnx":  # a = the export, b = eager
        mine, theirs = theirs, mine
    report = ParityReport(ours.card.alias, against, tol, n_images=len(images), n_texts=len(texts))
    for name, a, b in zip(ROWS, mine, theirs):
        report.rows[name] = difference(a, b)
    return report
