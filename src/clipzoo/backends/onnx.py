"""ONNX backend: a folder written by :func:`clipzoo.runtime.onnx_export.export_onnx`, run with onnxruntime.

The folder holds ``image.onnx`` (``pixels`` -> ``image_features``), ``text.onnx`` (``tokens`` ->
``text_features``) and ``clipzoo_onnx.json`` (card, sizes, logit scale/bias, preprocessing, tokenizer).
Encoding returns torch tensors, so similarity, prediction and evaluation work as with any backend;
gradients do not flow through onnxruntime.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cards import IMAGE, TEXT, ModelCard, Source
from ..comparator import ForeignComparator
from ..errors import BackendMissingError, BadTextError, CheckpointError, ClipzooError, UnsupportedError
from ..inputs import text_items
from ..registry import local_card
from ..tokenizers import OpenAITokenizer
from .onnx_format import META_FILE, read_meta, require_onnxruntime
from .onnx_openvino import NO_GRAD as OPENVINO_NO_GRAD
from .onnx_openvino import OpenVinoTowers
from .open_clip import tokenize_checked
from .transformers import HFImageTransform, NaFlexSquareTransform, tokenize_with

__all__ = ["OnnxComparator", "OnnxTowers", "assemble", "load", "load_folder", "make_tokenizer", "make_transform",
           "providers_for", "META_FILE", "read_meta", "require_onnxruntime"]
_NP_DTYPES = {"int64": np.int64, "int32": np.int32, "float32": np.float32}
EXECUTORS = ("onnxruntime", "openvino")  # what runs the graphs (load(..., executor=))


class OnnxTowers(torch.nn.Module):
    """The onnxruntime sessions of an exported folder (one per modality)."""

    def __init__(self, folder: Path, graphs: dict, providers: list[str]):
        super().__init__()
        ort = require_onnxruntime()
        self.folder = folder
        self.graphs = graphs
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.sessions = {m: ort.InferenceSession(str(folder / g["file"]), sess_options=options, providers=providers)
                         for m, g in graphs.items()}

    def run(self, modality: str, x: np.ndarray) -> np.ndarray:
        g = self.graphs[modality]
        session = self.sessions[modality]
        if g["input_shape"][0] == "N":
            return session.run([g["output"]], {g["input"]: x})[0]
        return np.concatenate([session.run([g["output"]], {g["input"]: x[i:i + 1]})[0] for i in range(len(x))])

    def extra_repr(self) -> str:
        return f"folder={self.folder}, graphs={sorted(self.graphs)}"


class OnnxComparator(ForeignComparator):
    """A Comparator whose towers run in onnxruntime. ``model`` is the :class:`OnnxTowers`."""

    ENGINE = "onnxruntime"
    NO_GRAD = ("runs in onnxruntime, which computes no gradients; load the PyTorch model (clipzoo.load without "
               "runtime='onnx') to backpropagate, or pass a tensor that does not require grad")

    def __init__(self, card: ModelCard, towers: OnnxTowers, *, meta: dict, transform, tokenizer,
                 device: str = "cpu"):
        super().__init__(card, towers, transform=transform, embed_dim=meta["embed_dim"],
                         image_size=_size(meta.get("image_size")), context_length=meta.get("context_length"),
                         modalities=tuple(meta["modalities"]), device=device)
        self.meta = meta
        self.tokenizer = tokenizer
        self.probability = meta.get("probability", "softmax")
        self._scale = torch.tensor(float(meta["logit_scale"]))
        bias = meta.get("logit_bias")
        self._bias = None if bias is None else torch.tensor(float(bias))
        tok = meta.get("tokenizer") or {}
        self._hf_tokenizer = tok.get("kind") == "hf"
        self._lower_case = bool(tok.get("lower_case", False))
        self.runtime = "onnx-int8" if meta.get("quantization") else "onnx"

    # ------------------------------------------------------------ hooks
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        self.require(IMAGE)
        x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.model.run(IMAGE, x)).to(self._device)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        self.require(TEXT)
        g = self.meta["graphs"][TEXT]
        length = g["input_shape"][1]
        if tokens.ndim != 2 or tokens.shape[1] != length:
            raise BadTextError(f"{self.card.alias}: the ONNX text graph takes tokens of shape [N, {length}] "
                               f"(from .tokenize), got {list(tokens.shape)}")
        x = tokens.detach().cpu().numpy().astype(_NP_DTYPES[g["input_dtype"]], copy=False)
        return torch.from_numpy(self.model.run(TEXT, np.ascontiguousarray(x))).to(self._device)

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        self.require(TEXT)
        if self._hf_tokenizer:
            texts = text_items(texts)
            if self._lower_case:
                texts = [t.lower() for t in texts]
            return tokenize_with(self.tokenizer, texts, self.context_length, truncate)
        return tokenize_checked(self.tokenizer, texts, self.context_length, truncate).long()

    def logit_params(self):
        return self._scale, self._bias



def _size(value):
    return tuple(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------------------------- loading
def make_transform(folder: Path, pre: dict | None):
    if pre is None:
        return _no_images
    if pre.get("kind") == "hf":
        try:
            import transformers  # noqa: F401
        except ImportError:
            transformers = None
        if transformers is not None:
            processor = transformers.AutoImageProcessor.from_pretrained(str(folder / pre["dir"]),
                                                                        trust_remote_code=False)
            if pre.get("naflex"):
                return NaFlexSquareTransform(processor, *pre["naflex"])
            return HFImageTransform(processor)
    import open_clip

    size = _size(pre["size"])
    return open_clip.image_transform(size, is_train=False, mean=pre.get("mean"), std=pre.get("std"),
                                     interpolation=pre.get("interpolation"), resize_mode=pre.get("resize_mode"),
                                     fill_color=pre.get("fill_color", 0))


def make_tokenizer(folder: Path, tok: dict | None):
    if tok is None:
        return None
    kind, ctx = tok["kind"], int(tok["context_length"])
    if kind == "openai":
        return OpenAITokenizer(context_length=ctx)
    if kind == "open_clip_simple":
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=ctx, **tok.get("kwargs", {}))
    if kind in ("open_clip_hf", "hf"):
        try:
            import transformers
        except ImportError:
            raise BackendMissingError(f"the tokenizer of {folder} is an HF tokenizer; "
                                      "pip install transformers") from None
        path = str(folder / tok["dir"])
        if kind == "hf":
            return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(path, context_length=ctx, **tok.get("kwargs", {}))
    raise CheckpointError(f"{folder / META_FILE} names an unknown tokenizer kind {kind!r}")


def _no_images(image):
    raise UnsupportedError("this ONNX export has no image tower")


def providers_for(device: str) -> list[str]:
    ort = require_onnxruntime()
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UnsupportedError("device='cuda' needs onnxruntime with CUDA (pip install onnxruntime-gpu); "
                                   f"this onnxruntime offers {', '.join(ort.get_available_providers())}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, providers: list[str] | None = None, executor: str = "onnxruntime",
         **kwargs: Any) -> OnnxComparator:
    """Load an exported folder. ``providers`` overrides the onnxruntime execution providers; ``executor``: what
    runs the graphs, ``"onnxruntime"`` or ``"openvino"`` (CPU only: :mod:`.onnx_openvino`)."""
    if kwargs:
        raise ClipzooError(f"unknown option(s) for an ONNX model: {', '.join(sorted(kwargs))}")
    if precision not in ("fp32", "float32", torch.float32):
        raise UnsupportedError(f"an ONNX export runs in the precision it was exported in (fp32), not {precision!r}")
    if executor not in EXECUTORS:
        raise ClipzooError(f"unknown executor {executor!r} for an ONNX model; use one of {', '.join(EXECUTORS)}")
    if executor == "openvino" and torch.device(device).type != "cpu":
        raise UnsupportedError(f"OpenVINO runs an ONNX model on the CPU here, not {str(device)!r}")
    if executor == "onnxruntime":
        require_onnxruntime()
    if not card.source.path:
        raise CheckpointError(f"{card.alias}: ONNX models load from a local folder")
    folder = Path(card.source.path)
    meta = read_meta(folder)
    if executor == "openvino":
        comparator = assemble(card, folder, meta, OpenVinoTowers(folder, meta["graphs"]), device="cpu",
                              executor=executor)
        comparator.ENGINE, comparator.NO_GRAD = f"openvino {comparator.model.version}", OPENVINO_NO_GRAD
        return comparator
    return assemble(card, folder, meta, OnnxTowers(folder, meta["graphs"], providers or providers_for(str(device))),
                    device=str(device))


def assemble(card: ModelCard, folder: Path, meta: dict, towers: torch.nn.Module, *, device: str = "cpu",
             executor: str = "onnxruntime") -> OnnxComparator:
    """The comparator of an exported ``folder`` (its JSON read as ``meta``) whose graphs run in ``towers`` (an
    :class:`OnnxTowers` or an :class:`OpenVinoTowers`); an unregistered folder gets the card its JSON describes."""
    if card.id == os.path.abspath(str(folder)) and card.publisher == "local":  # an unregistered folder
        c = meta["card"]
        card = ModelCard(architecture=c["architecture"], publisher=c["publisher"], id=c["id"], backend="onnx",
                         source=Source(path=str(folder)), modalities=tuple(meta["modalities"]),
                         embed_dim=meta["embed_dim"], context_length=meta.get("context_length"),
                         image_size=meta.get("image_size") if isinstance(meta.get("image_size"), int) else None,
                         config={"exported_from": c.get("source"), "runtime": executor})
    else:
        card = card.replace(backend="onnx")
    return OnnxComparator(card, towers, meta=meta, transform=make_transform(folder, meta.get("preprocess")),
                          tokenizer=make_tokenizer(folder, meta.get("tokenizer")), device=device)


def load_folder(folder: "str | os.PathLike", *, device: str = "cpu", cache_dir=None,
                executor: str = "onnxruntime") -> OnnxComparator:
    """Load an exported folder as an unregistered local model (its card read from its JSON)."""
    return load(local_card(str(folder)).replace(backend="onnx"), device=device, cache_dir=cache_dir, executor=executor)
