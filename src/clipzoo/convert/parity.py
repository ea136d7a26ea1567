"""Parity report: clipzoo's model against another implementation of the same weights, on the same inputs.

As the MindSpore-CLIP porting handbook proves a port: for image features, text features and
probabilities, the mean and max absolute difference and the mean and max relative difference
``|a − b| / (|b| + 1e-6)`` (``a``: clipzoo, ``b``: the reference). Both models run on the same
preprocessed pixels and token ids, so these rows — the ones ``tol`` applies to — measure the models
alone. Each side's own preprocessing and tokenizer are compared too, in their own rows: HF's image
processor, for one, resizes differently from torchvision, which a user should know but which is not a
difference in the weights.

References (``against``):

- ``open_clip``: ``open_clip.create_model_and_transforms`` on the same weights (an open_clip pair by
  name, or the checkpoint written in open_clip's hub layout and loaded with ``local-dir:``);
- ``openai``: openai's ``clip.load`` on the checkpoint in OpenAI's format;
- ``hf``: ``transformers`` ``CLIPModel`` / ``SiglipModel`` + ``AutoProcessor`` on the HF folder (converted
  first when the model is not one);
- ``onnx``: clipzoo's ONNX Runtime export of the model (``a``) against clipzoo eager (``b``).

The same weights in two *engines* (``clipzoo parity MODEL --engines torch,jax``: PyTorch vs JAX, each
building its own model from the open_clip form) are :mod:`clipzoo.convert.engines`.
"""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api import load
from ..checkpoints import is_torchscript
from ..errors import ClipzooError, UnsupportedError
from ..extras import require
from ..inputs import to_pil
from ..runtime.onnx_export import export_onnx
from .targets import convert, open_clip_form, write_open_clip, write_openai

if TYPE_CHECKING:
    import torch

__all__ = ["AGAINST", "ParityReport", "parity", "difference", "default_images", "DEFAULT_TEXTS"]

AGAINST = ("open_clip", "openai", "hf", "onnx")
# the package each reference runs on: checked before the model loads (one line, not a traceback)
AGAINST_PACKAGES = {"open_clip": "open_clip", "openai": "clip", "hf": "transformers", "onnx": "onnxruntime"}
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


class ToleranceRows:
    """A report's verdict over its ``rows`` (each a :func:`difference` dict) against its ``tol``."""

    rows: dict[str, dict[str, float]]
    tol: float

    @property
    def max_abs(self) -> float:
        return max(r["max_abs"] for r in self.rows.values())

    @property
    def ok(self) -> bool:
        return all(math.isfinite(r["max_abs"]) for r in self.rows.values()) and self.max_abs <= self.tol


@dataclass
class ParityReport(ToleranceRows):
    model: str
    against: str
    tol: float
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    preprocessing: dict[str, dict[str, float]] = field(default_factory=dict)  # informational, not in tol
    n_images: int = 0
    n_texts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "against": self.against, "tol": self.tol, "ok": self.ok,
                "n_images": self.n_images, "n_texts": self.n_texts, "rows": self.rows,
                "preprocessing": self.preprocessing}

    def markdown(self) -> str:
        lines = ["| output | mean abs diff | max abs diff | mean rel diff | max rel diff |",
                 "|---|---|---|---|---|"]
        for name, r in self.rows.items():
            lines.append(f"| {name} | {r['mean_abs']:.2e} | {r['max_abs']:.2e} | {r['mean_rel']:.2e} | "
                         f"{r['max_rel']:.2e} |")
        verdict = "within" if self.ok else "ABOVE"
        pixels = self.preprocessing.get("pixels")
        if pixels is not None:
            lines.append(f"| preprocessed pixels (each side's own) | {pixels['mean_abs']:.2e} | "
                         f"{pixels['max_abs']:.2e} | {pixels['mean_rel']:.2e} | {pixels['max_rel']:.2e} |")
        tokens = self.preprocessing.get("token ids")
        lines.append("")
        if tokens is not None:
            lines.append(f"token ids (each side's own tokenizer, padding aside): {tokens['differing']} of "
                         f"{tokens['total']} texts differ")
        lines.append(f"clipzoo vs {self.against} on the same {self.n_images} preprocessed images and {self.n_texts} "
                     f"tokenized texts: max abs diff "
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


@dataclass
class Inputs:
    """What both sides run on: clipzoo's preprocessed pixels and token ids (so the model rows compare
    the models alone), and the raw images and texts (for each side's own preprocessing and tokenizer)."""

    images: list
    texts: list[str]
    pixels: torch.Tensor
    tokens: torch.Tensor


@dataclass
class Outputs:
    image: torch.Tensor
    text: torch.Tensor
    probs: torch.Tensor
    pixels: "torch.Tensor | None" = None  # this side's own preprocessing of the images
    tokens: "torch.Tensor | None" = None  # this side's own tokenizer


def _ours(model, inputs: Inputs) -> Outputs:
    import torch

    with torch.no_grad():
        img = model.encode_image(inputs.pixels)
        txt = model.encode_text(inputs.tokens)
        probs = model.probabilities(model.similarity(img, txt))
    return Outputs(img, txt, probs, inputs.pixels, inputs.tokens)


def _probs(img: torch.Tensor, txt: torch.Tensor, scale: float, bias: "float | None") -> torch.Tensor:
    import torch

    logits = scale * img @ txt.T
    if bias is not None:
        return torch.sigmoid(logits + bias)
    return logits.softmax(dim=-1)


def _torch_side(encode_image, encode_text, scale, bias, inputs: Inputs, pixels, tokens) -> Outputs:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        img = F.normalize(encode_image(inputs.pixels).float(), dim=-1)
        txt = F.normalize(encode_text(inputs.tokens).float(), dim=-1)
    return Outputs(img, txt, _probs(img, txt, scale, bias), pixels, tokens)


def _run_open_clip(ours, inputs: Inputs, work: Path) -> Outputs:
    import open_clip
    import torch

    src = ours.card.source
    if src.open_clip and src.open_clip[1]:
        model, _, preprocess = open_clip.create_model_and_transforms(src.open_clip[0], pretrained=src.open_clip[1])
        tokenizer = open_clip.get_tokenizer(src.open_clip[0])
    else:
        folder = write_open_clip(open_clip_form(ours), work / "open_clip")
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    bias = getattr(model, "logit_bias", None)
    return _torch_side(model.encode_image, model.encode_text, float(model.logit_scale.detach().exp()),
                       None if bias is None else float(bias), inputs,
                       torch.stack([preprocess(i) for i in inputs.images]), tokenizer(inputs.texts))


def _run_openai(ours, inputs: Inputs, work: Path) -> Outputs:
    with warnings.catch_warnings():  # clip-anytorch imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        import clip  # openai's package (clip-anytorch)
    import torch

    path = ours.card.source.path
    if not (path and os.path.isfile(path) and _is_openai_file(path)):
        path = str(write_openai(open_clip_form(ours), work / "openai.pt"))
    model, preprocess = clip.load(path, device="cpu", jit=False)
    model = model.float().eval()
    return _torch_side(model.encode_image, model.encode_text, float(model.logit_scale.detach().exp()), None, inputs,
                       torch.stack([preprocess(i) for i in inputs.images]), clip.tokenize(inputs.texts))


def _is_openai_file(path: str) -> bool:
    return is_torchscript(path) or path.endswith((".pt", ".pth"))


def _run_hf(ours, inputs: Inputs, work: Path) -> Outputs:
    from transformers import AutoModel, AutoProcessor

    path = ours.card.source.path
    folder = path if (ours.card.backend == "transformers" and path and os.path.isdir(path)) else None
    if folder is None:
        folder = str(convert(path or ours.card.alias, work / "hf", "hf"))
    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    padding = "max_length" if "Siglip" in type(model).__name__ else True
    pixels = processor(images=inputs.images, return_tensors="pt")["pixel_values"]
    tokens = processor(text=inputs.texts, return_tensors="pt", padding=padding, truncation=True)["input_ids"]
    bias = getattr(model, "logit_bias", None)
    return _torch_side(lambda x: _tensor(model.get_image_features(pixel_values=x)),
                       lambda t: _tensor(model.get_text_features(input_ids=t)), float(model.logit_scale.detach().exp()),
                       None if bias is None else float(bias), inputs, pixels, tokens)


def _tensor(out):
    """transformers 5 may return a model output where 4.x returned a tensor."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise UnsupportedError(f"cannot read features from {type(out).__name__}")


def _run_onnx(ours, inputs: Inputs, work: Path) -> Outputs:
    """Here the reference is clipzoo eager and the ONNX export is the side under test."""
    import torch

    exported = load(str(export_onnx(ours, work / "onnx")))
    out = _ours(exported, inputs)
    out.pixels = torch.stack([exported.preprocess(i) for i in inputs.images])
    out.tokens = exported.tokenize(inputs.texts, truncate=True)
    return out


def _content_lengths(tokens: torch.Tensor) -> list[int]:
    """Per row, the number of ids before the padding (a trailing run of two or more equal ids)."""
    out = []
    for row in tokens.tolist():
        run = 1
        while run < len(row) and row[-1 - run] == row[-1]:
            run += 1
        out.append(len(row) - run if run >= 2 else len(row))
    return out


def _pad_tokens(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch.nn.functional as F

    n = max(a.shape[1], b.shape[1])
    return F.pad(a.long(), (0, n - a.shape[1])), F.pad(b.long(), (0, n - b.shape[1]))


def parity(model: Any, against: str, images: "Sequence[Any] | None" = None, texts: "Sequence[str] | None" = None,
           tol: float = 1e-4, workdir: "str | os.PathLike | None" = None, **load_kwargs: Any) -> ParityReport:
    """Run ``model`` (a spec or a loaded comparator) and the ``against`` implementation on the same
    inputs (default: 4 generated images, 5 texts) and return the table of differences."""
    import torch

    if against not in AGAINST:
        raise ClipzooError(f"unknown reference {against!r}: choose from {', '.join(AGAINST)}")
    with warnings.catch_warnings():  # clip-anytorch imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        require(AGAINST_PACKAGES[against], f"parity against {against}")
    ours = model if hasattr(model, "encode_image") else load(model, **load_kwargs)
    images = default_images() if images is None else [to_pil(i) for i in images]
    texts = list(texts) if texts else list(DEFAULT_TEXTS)
    runner = {"open_clip": _run_open_clip, "openai": _run_openai, "hf": _run_hf, "onnx": _run_onnx}[against]
    with torch.no_grad():
        inputs = Inputs(images, texts, torch.stack([ours.preprocess(i) for i in images]),
                        ours.tokenize(texts, truncate=True))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        theirs = runner(ours, inputs, Path(tmp))
        mine = _ours(ours, inputs)
    if against == "onnx":  # a = the export, b = eager
        mine, theirs = theirs, mine
    report = ParityReport(ours.card.alias, against, tol, n_images=len(images), n_texts=len(texts))
    report.rows["image features"] = difference(mine.image, theirs.image)
    report.rows["text features"] = difference(mine.text, theirs.text)
    report.rows["probabilities"] = difference(mine.probs, theirs.probs)
    if theirs.pixels is not None and theirs.pixels.shape == mine.pixels.shape:
        report.preprocessing["pixels"] = difference(mine.pixels, theirs.pixels)
    if theirs.tokens is not None:
        a, b = _pad_tokens(mine.tokens, theirs.tokens)
        differing = sum(not torch.equal(a[i, :k], b[i, :k]) for i, k in enumerate(_content_lengths(mine.tokens)))
        report.preprocessing["token ids"] = {"differing": int(differing), "total": int(a.shape[0])}
    return report
