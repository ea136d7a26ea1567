"""Export a Comparator's two towers to ONNX, and the ``clipzoo.load(spec, runtime="onnx")`` cache.

``export_onnx(model_or_spec, out_dir)`` writes a folder that :func:`clipzoo.load` reads back with
onnxruntime (backend ``"onnx"``, :mod:`clipzoo.backends.onnx`), without the original model:

=========================  =====================================================================
``image.onnx``             ``pixels`` float32 [N, 3, H, W] -> ``image_features`` float32 [N, D]
``text.onnx``              ``tokens`` int64 or int32 [N, L] -> ``text_features`` float32 [N, D]
``clipzoo_onnx.json``      card, sizes, logit scale/bias, preprocessing, tokenizer, graph I/O names
``tokenizer/``             HF tokenizer files (HF and sentence-transformers models, open_clip HF text)
``image_processor/``       the HF image processor config (HF models), for exact preprocessing
=========================  =====================================================================

Features are exactly what the comparator's ``encode_pixels`` / ``encode_tokens`` hooks return: raw
(unnormalised); ``L`` is the model's context length (the tokenizer pads to it); ``N`` is dynamic.
A model without an image tower (a text-only sentence-transformers model) gets no ``image.onnx``.

Exporter: PyTorch's TorchScript-based exporter (``dynamo=False``) by default — it traces these fixed-shape
ViT / transformer towers in well under a second and matches eager to ~1e-6; ``exporter="dynamo"`` uses the
``torch.export`` exporter (needs ``onnxscript``; several seconds per tower). ``"auto"`` tries TorchScript and
falls back to dynamo when the TorchScript exporter is missing or fails.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..cards import IMAGE, TEXT
from ..comparator import Comparator
from ..errors import ClipzooError, UnsupportedError

FORMAT, FORMAT_VERSION = "clipzoo-onnx", 1
META_FILE, IMAGE_FILE, TEXT_FILE = "clipzoo_onnx.json", "image.onnx", "text.onnx"
IMAGE_INPUT, IMAGE_OUTPUT = "pixels", "image_features"
TEXT_INPUT, TEXT_OUTPUT = "tokens", "text_features"
TOKENIZER_DIR, IMAGE_PROCESSOR_DIR = "tokenizer", "image_processor"
EXPORTERS = ("auto", "torchscript", "dynamo")
_PIL_INTERPOLATION = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_LARGE = 1_500_000_000  # bytes of weights above which graphs keep their weights in external data files


# --------------------------------------------------------------------------------------------- towers
class _ImageTower(torch.nn.Module):
    def __init__(self, comparator: Comparator):
        super().__init__()
        self.comparator = comparator
        self.dtype = comparator.dtype
        self.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.comparator.encode_pixels(pixels.to(self.dtype)).float()


class _TextTower(torch.nn.Module):
    def __init__(self, comparator: Comparator):
        super().__init__()
        self.comparator = comparator
        self.eval()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.comparator.encode_tokens(tokens.long()).float()


@contextlib.contextmanager
def _static_text_shapes():
    """HF / sentence-transformers ``encode_tokens`` drop all-padding columns (a data-dependent slice that a
    trace would freeze at the example's length). Masked columns change nothing, so export without it."""
    import sys

    patched = []
    for name in ("clipzoo.backends.transformers", "clipzoo.backends.sentence_transformers"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "trim_padding"):
            patched.append((module, module.trim_padding))
            module.trim_padding = lambda tokens, mask, padding_side: (tokens, mask)
    try:
        yield
    finally:
        for module, original in patched:
            module.trim_padding = original


# --------------------------------------------------------------------------------------------- export
def export_onnx(model_or_spec: Any, out_dir: "str | os.PathLike", opset: int | None = None,
                token_dtype: str = "int64", batch_dynamic: bool = True, *, exporter: str = "auto",
                check: bool = True, **load_kwargs: Any) -> Path:
    """Export a Comparator (or a spec for :func:`clipzoo.load`, with ``load_kwargs``) to ``out_dir``.

    ``opset``: ONNX opset (default 17 for TorchScript, 18 for dynamo); ``token_dtype``: ``"int64"`` or
    ``"int32"`` (cast to int64 inside the graph); ``batch_dynamic``: a dynamic batch axis (else batch 1);
    ``exporter``: ``"auto"`` | ``"torchscript"`` | ``"dynamo"``; ``check``: run the graphs once in
    onnxruntime (when installed) and record their largest difference from eager in the JSON.
    Returns ``out_dir``.
    """
    if token_dtype not in ("int64", "int32"):
        raise ClipzooError(f"token_dtype must be 'int64' or 'int32', not {token_dtype!r}")
    if exporter not in EXPORTERS:
        raise ClipzooError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    if isinstance(model_or_spec, Comparator):
        if load_kwargs:
            raise ClipzooError(f"load options {', '.join(sorted(load_kwargs))} apply only when exporting a spec")
        comparator = model_or_spec
    else:
        from ..factory import load

        comparator = load(model_or_spec, **load_kwargs)
    if getattr(comparator, "card", None) is not None and comparator.card.backend == "onnx":
        raise UnsupportedError(f"{comparator.card.alias} already runs in onnxruntime; export the PyTorch model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (META_FILE, IMAGE_FILE, TEXT_FILE, IMAGE_FILE + ".data", TEXT_FILE + ".data"):
        (out / stale).unlink(missing_ok=True)

    was_training = comparator.training
    comparator.eval()
    batch = 2 if batch_dynamic else 1
    graphs: dict[str, dict] = {}
    used = exporter
    try:
        with torch.no_grad(), _static_text_shapes():
            if IMAGE in comparator.modalities:
                pixels = _example_pixels(comparator, batch)
                used = _export(_ImageTower(comparator), pixels, out / IMAGE_FILE, IMAGE_INPUT, IMAGE_OUTPUT,
                               opset, batch_dynamic, exporter)
                graphs[IMAGE] = {"file": IMAGE_FILE, "input": IMAGE_INPUT, "output": IMAGE_OUTPUT,
                                 "input_dtype": "float32", "input_shape": ["N", *pixels.shape[1:]],
                                 "output_shape": ["N", comparator.embed_dim]}
            if TEXT in comparator.modalities:
                tokens = _example_tokens(comparator, batch, token_dtype)
                used = _export(_TextTower(comparator), tokens, out / TEXT_FILE, TEXT_INPUT, TEXT_OUTPUT,
                               opset, batch_dynamic, used)
                graphs[TEXT] = {"file": TEXT_FILE, "input": TEXT_INPUT, "output": TEXT_OUTPUT,
                                "input_dtype": token_dtype, "input_shape": ["N", int(tokens.shape[1])],
                                "output_shape": ["N", comparator.embed_dim]}
    finally:
        comparator.train(was_training)
    if not graphs:
        raise UnsupportedError(f"{comparator.card.alias} has neither an image nor a text tower to export")
    if not batch_dynamic:
        for g in graphs.values():
            g["input_shape"][0] = g["output_shape"][0] = 1

    scale, bias = comparator.logit_params()
    card = comparator.card
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "card": {"alias": card.alias, "architecture": card.architecture, "publisher": card.publisher,
                 "id": card.id, "backend": card.backend, "source": card.source.describe()},
        "modalities": [m for m in comparator.modalities if m in graphs],
        "embed_dim": int(comparator.embed_dim),
        "image_size": _jsonable(comparator.image_size) if IMAGE in graphs else None,
        "context_length": int(graphs[TEXT]["input_shape"][1]) if TEXT in graphs else comparator.context_length,
        "logit_scale": float(scale.detach().float()),
        "logit_bias": None if bias is None else float(bias.detach().float()),
        "probability": comparator.probability,
        "preprocess": _preprocess_config(comparator, out) if IMAGE in graphs else None,
        "tokenizer": _tokenizer_config(comparator, out) if TEXT in graphs else None,
        "graphs": graphs,
        "batch_dynamic": bool(batch_dynamic),
        "exporter": used, "opset": _opset_of(out / next(iter(graphs.values()))["file"]),
        "versions": _versions(),
    }
    if check:
        meta["max_abs_diff"] = _check(comparator, out, graphs, token_dtype)
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_FILE)  # written last: a folder with the JSON is complete
    return out


def _example_pixels(comparator: Comparator, batch: int) -> torch.Tensor:
    size = comparator.image_size
    if size is None:
        raise UnsupportedError(f"{comparator.card.alias} does not say its image size; cannot export its image tower")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, int(h), int(w), generator=gen).to(comparator.device)


def _example_tokens(comparator: Comparator, batch: int, token_dtype: str) -> torch.Tensor:
    texts = ["a photo of a cat", "a diagram of two dogs"][:batch]
    tokens = comparator.tokenize(texts, truncate=True)
    return tokens.to(comparator.device, getattr(torch, token_dtype))


def _export(module, example, path: Path, input_name: str, output_name: str, opset, batch_dynamic: bool,
            exporter: str) -> str:
    """Export one tower; returns the exporter that did it."""
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > _LARGE
    if exporter in ("auto", "torchscript"):
        try:
            _export_torchscript(module, example, path, input_name, output_name, opset, batch_dynamic)
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 - "auto" falls back to the other exporter
            if exporter == "torchscript":
                raise UnsupportedError(f"the TorchScript ONNX exporter cannot export {path.stem} "
                                       f"({type(exc).__name__}: {str(exc).strip()[:300]}); "
                                       "try exporter='dynamo'") from exc
            warnings.warn(f"TorchScript ONNX export of {path.stem} failed ({type(exc).__name__}); using dynamo",
                          stacklevel=3)
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError:
        from ..errors import BackendMissingError

        raise BackendMissingError("the dynamo ONNX exporter needs onnxscript; pip install onnxscript "
                                  "(or pip install 'clipzoo[onnx]')") from None
    kwargs: dict[str, Any] = {}
    if batch_dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
    program = torch.onnx.export(module, (example,), None, dynamo=True, input_names=[input_name],
                                output_names=[output_name], opset_version=opset or 18, verbose=False,
                                **kwargs)
    program.save(str(path), external_data=big)
    return "dynamo"


def _export_torchscript(module, example, path, input_name, output_name, opset, batch_dynamic) -> None:
    axes = {input_name: {0: "N"}, output_name: {0: "N"}} if batch_dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[input_name],
                          output_names=[output_name], opset_version=opset or 17, dynamic_axes=axes,
                          do_constant_folding=True)


def _opset_of(path: Path) -> int | None:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    except Exception:  # noqa: BLE001 - informational only
        return None


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _versions() -> dict:
    import clipzoo

    out = {"clipzoo": clipzoo.__version__, "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass
    return out


# --------------------------------------------------------------------------------------------- preprocessing
def _preprocess_config(comparator: Comparator, out: Path) -> dict:
    """How to rebuild the PIL -> tensor transform: open_clip's ``image_transform`` arguments, plus the HF
    image processor saved alongside for HF models (used when transformers is installed, for exactness)."""
    tower = getattr(comparator, "image_tower", None) or comparator
    pre = getattr(tower, "preprocess_config", None)
    if pre is not None:  # open_clip
        return {"kind": "open_clip", **_torchvision_fields(pre, comparator.image_size)}
    processor = getattr(tower, "image_processor", None) or getattr(comparator, "image_processor", None)
    if processor is None:
        raise UnsupportedError(f"cannot export the preprocessing of {comparator.card.alias}: it has neither an "
                               "open_clip preprocess config nor an HF image processor")
    processor.save_pretrained(str(out / IMAGE_PROCESSOR_DIR))
    naflex = getattr(tower, "_naflex", None)
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    resample = getattr(processor, "resample", 3)
    fields = {"size": comparator.image_size, "mean": mean, "std": std,
              "interpolation": _PIL_INTERPOLATION.get(int(getattr(resample, "value", resample) or 3), "bicubic"),
              "resize_mode": "shortest" if getattr(processor, "do_center_crop", False) else "squash",
              "fill_color": 0}
    return {"kind": "hf", "dir": IMAGE_PROCESSOR_DIR, "naflex": list(naflex) if naflex else None,
            **_torchvision_fields(fields, comparator.image_size)}


def _torchvision_fields(pre: dict, image_size) -> dict:
    def floats(v):
        return None if v is None else [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3)]

    return {"size": _jsonable(pre.get("size") or image_size), "mean": floats(pre.get("mean")),
            "std": floats(pre.get("std")), "interpolation": pre.get("interpolation") or "bicubic",
            "resize_mode": pre.get("resize_mode") or "shortest", "fill_color": pre.get("fill_color", 0)}


# --------------------------------------------------------------------------------------------- tokenizers
def _tokenizer_config(comparator: Comparator, out: Path) -> dict:
    """How the runtime rebuilds the tokenizer: OpenAI's BPE and open_clip's by name and arguments, HF ones
    from files saved into ``tokenizer/``."""
    ctx = int(comparator.context_length)
    hf_tokenizer = getattr(comparator, "hf_tokenizer", None)
    if hf_tokenizer is not None:  # transformers / sentence-transformers
        hf_tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        return {"kind": "hf", "dir": TOKENIZER_DIR, "context_length": ctx,
                "lower_case": bool(getattr(comparator, "lower_case", False))}
    tokenizer = getattr(comparator, "tokenizer", None)
    from ..tokenizers import OpenAITokenizer

    if isinstance(tokenizer, OpenAITokenizer):
        return {"kind": "openai", "context_length": ctx}
    text_cfg = (getattr(comparator, "model_config", None) or {}).get("text_cfg", {})
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, SimpleTokenizer):
        return {"kind": "open_clip_simple", "context_length": ctx, "kwargs": kwargs}
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        if text_cfg.get("tokenizer_mode"):
            kwargs["tokenizer_mode"] = text_cfg["tokenizer_mode"]
        kwargs.setdefault("strip_sep_token", bool(getattr(tokenizer, "strip_sep_token", False)))
        return {"kind": "open_clip_hf", "dir": TOKENIZER_DIR, "context_length": ctx, "kwargs": kwargs}
    raise UnsupportedError(f"cannot export the tokenizer of {comparator.card.alias} "
                           f"({type(tokenizer).__name__}); export with a model whose tokenizer is OpenAI's, "
                           "open_clip's or an HF one")


# --------------------------------------------------------------------------------------------- check
def _check(comparator: Comparator, out: Path, graphs: dict, token_dtype: str) -> dict | None:
    """Largest |onnxruntime - eager| on fresh inputs at batch 1 and 3 (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    result = {}
    with torch.no_grad(), _static_text_shapes():
        for modality, g in graphs.items():
            session = ort.InferenceSession(str(out / g["file"]), providers=["CPUExecutionProvider"])
            diff = 0.0
            for n in ((1, 3) if g["input_shape"][0] == "N" else (1,)):
                if modality == IMAGE:
                    x = torch.rand(n, *g["input_shape"][1:], generator=torch.Generator().manual_seed(n)) * 4 - 2
                    ref = comparator.encode_pixels(x.to(comparator.device, comparator.dtype))
                else:
                    texts = ["a photo of a cat", "two birds flying over the sea", "a diagram"][:n]
                    x = comparator.tokenize(texts, truncate=True).to(getattr(torch, token_dtype))
                    ref = comparator.encode_tokens(x.long().to(comparator.device))
                got = session.run([g["output"]], {g["input"]: x.cpu().numpy()})[0]
                diff = max(diff, float((torch.from_numpy(got) - ref.float().cpu()).abs().max()))
            result[modality] = diff
            if diff > 1e-3:
                warnings.warn(f"{comparator.card.alias}: the exported {modality} graph differs from eager by "
                              f"{diff:.2e} (max abs)", stacklevel=3)
    return result


# --------------------------------------------------------------------------------------------- runtime="onnx"
def cache_folder(card, cache_dir=None, load_kwargs: dict | None = None) -> Path:
    """Where ``clipzoo.load(spec, runtime="onnx")`` keeps the export of ``card``: keyed by the card's
    identity and source, the load options, and (for local files) the file's size and mtime."""
    from ..download import default_cache_dir

    key: dict[str, Any] = {"card": card.to_dict(), "kwargs": load_kwargs or {}, "format": FORMAT_VERSION}
    path = card.source.path
    if path and os.path.exists(path):
        st = os.stat(path)
        key["stat"] = [st.st_size, st.st_mtime_ns]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{card.architecture}-{card.publisher}-{os.path.basename(card.id)}")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / "onnx" / f"{slug.strip('_')[:80]}-{digest}"


def exported_folder(spec: Any, *, precision: str = "fp32", cache_dir=None, trust_pickle: bool = False,
                    **kwargs: Any) -> Path:
    """The cached ONNX export of ``spec`` (exported now if it is not there yet); an exported folder is
    returned as it is."""
    from ..factory import load, resolve_backend
    from ..registry import REGISTRY

    card = resolve_backend(REGISTRY.resolve(spec), cache_dir)
    if card.backend == "onnx":
        return Path(card.source.path)
    if precision not in ("fp32", "float32", torch.float32):
        raise UnsupportedError(f"ONNX runtimes run exported fp32 graphs; load with precision='fp32', not {precision!r}")
    from ..backends.onnx import require_onnxruntime

    require_onnxruntime()
    folder = cache_folder(card, cache_dir, kwargs)
    if not (folder / META_FILE).is_file():
        comparator = load(card, device="cpu", precision="fp32", cache_dir=cache_dir, trust_pickle=trust_pickle,
                          **kwargs)
        from ..files import build_folder_once

        build_folder_once(folder, lambda tmp: export_onnx(comparator, tmp), META_FILE)
    return folder


def load_with_onnx_runtime(spec: Any, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
                           trust_pickle: bool = False, **kwargs: Any):
    """``clipzoo.load(spec, runtime="onnx")``: load the model, export it once to the cache, run the export."""
    from ..backends import get_backend
    from ..registry import local_card

    folder = exported_folder(spec, precision=precision, cache_dir=cache_dir, trust_pickle=trust_pickle, **kwargs)
    return get_backend("onnx").load(local_card(str(folder)).replace(backend="onnx"), device=device,
                                    cache_dir=cache_dir)
