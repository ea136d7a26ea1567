"""Export a Comparator's two towers to ONNX (``clipzoo convert --to onnx``, ``runtime="onnx"``).

``export_onnx(comparator, out_dir)`` writes a folder that :func:`clipzoo.load` reads back with
onnxruntime (backend ``"onnx"``, :mod:`clipzoo.backends.onnx`), without the original model:

=========================  =====================================================================
``image.onnx``             ``pixels`` float32 [N, 3, H, W] -> ``image_features`` float32 [N, D]
``text.onnx``              ``tokens`` int64 or int32 [N, L] -> ``text_features`` float32 [N, D]
``clipzoo_onnx.json``      card, sizes, logit scale/bias, preprocessing, tokenizer, graph I/O names
``tokenizer/``             HF tokenizer files (HF and sentence-transformers models, open_clip HF text)
``image_processor/``       the HF image processor config (HF models), for exact preprocessing
=========================  =====================================================================

Features are exactly what the comparator's ``encode_pixels`` / ``encode_tokens`` hooks return: raw
(unnormalised); ``L`` is the model's context length (the tokenizer pads to it); ``N`` is dynamic. A causal
text tower pooled at its end-of-text token (open_clip's ``CLIP``, ``PlainCLIP``) is exported with a dynamic
``L`` too (``"dynamic_length": "argmax"`` in its JSON): any cut after the end-of-text token gives the same
features, which the ONNX runtimes use to run each caption at its own length (:mod:`.onnx_columns`).
A model without an image tower (a text-only sentence-transformers model) gets no ``image.onnx``.

Exporter: PyTorch's TorchScript-based exporter (``dynamo=False``) by default — it traces these fixed-shape
ViT / transformer towers in well under a second and matches eager to ~1e-6; ``exporter="dynamo"`` uses the
``torch.export`` exporter (needs ``onnxscript``; several seconds per tower). ``"auto"`` tries TorchScript and
falls back to dynamo when the TorchScript exporter is missing or fails.

Torch is imported when an export runs, so that naming this module (``clipzoo convert``) stays cheap.
A spec (rather than a loaded model) is exported by :func:`clipzoo.convert.onnx.export_onnx`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from ..backends.onnx_format import (
    IMAGE_FILE,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    META_FILE,
    TEXT_FILE,
    TEXT_INPUT,
    TEXT_OUTPUT,
)
from ..cards import IMAGE, TEXT
from ..errors import BackendMissingError, ClipzooError, UnsupportedError, warn_user
from . import onnx_vision
from .onnx_meta import export_meta

EXPORTERS = ("auto", "torchscript", "dynamo")
LARGE_WEIGHTS = 1_500_000_000  # bytes of weights above which graphs keep their weights in external data files


# --------------------------------------------------------------------------------------------- towers
@functools.lru_cache(maxsize=1)
def tower_classes() -> tuple[type, type]:
    """(ImageTower, TextTower): ``torch.nn.Module`` wrappers of a comparator's two encoder hooks, defined on
    first use so that this module imports no torch."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, comparator):
            super().__init__()
            self.comparator = comparator
            self.dtype = comparator.dtype
            self.eval()

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.comparator.encode_pixels(pixels.to(self.dtype)).float()

    class TextTower(torch.nn.Module):
        def __init__(self, comparator, columns=None):
            super().__init__()
            self.comparator = comparator
            self.columns = columns  # a causal text model pooled at argmax: the graph takes any length
            self.eval()

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            if self.columns is not None:
                return encode_columns(self.columns, tokens.long()).float()
            return self.comparator.encode_tokens(tokens.long()).float()

    return ImageTower, TextTower


def causal_text_model(comparator):
    """The comparator's text model when its features can be computed on the first columns of the tokens alone
    (a causal mask, pooled at the argmax token — open_clip's ``CLIP`` and our ``PlainCLIP``, as in
    :mod:`clipzoo.models.padding_free`), else None. Its text graph then takes a dynamic length ``L``: a row
    cut after its end-of-text token gives the same features for a fraction of the work (the ONNX runtimes
    run each row at its own length bucket, :mod:`clipzoo.runtime.onnx_columns`)."""
    model = getattr(comparator, "model", None)
    if model is None or getattr(model, "text_pool_type", None) != "argmax":
        return None
    needs = ("attn_mask", "positional_embedding", "token_embedding", "transformer", "ln_final", "text_projection")
    if not all(hasattr(model, n) for n in needs) or getattr(model, "attn_mask", None) is None:
        return None
    blocks = getattr(model.transformer, "resblocks", None) or []
    known = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
    if not blocks or not getattr(model.transformer, "batch_first", False) or any(
            not all(hasattr(b, n) for n in known) or hasattr(b, "ln_1_kv") or not getattr(b.attn, "batch_first", 0)
            or getattr(b.attn, "in_proj_weight", None) is None for b in blocks):
        return None
    return model


def encode_columns(model, text):
    """Raw text features of :func:`causal_text_model` ``model`` on however many columns ``text`` has (the
    length is read from the input's shape, so a traced graph keeps it dynamic)."""
    import torch

    n = text.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding[:n].to(cast)
    mask = model.attn_mask[:n, :n].to(cast)
    for block in model.transformer.resblocks:
        x = block_columns(block, x, mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


def block_columns(block, x, mask):
    """One pre-norm residual attention block (open_clip's / PlainCLIP's layout) on ``x`` [N, L, D] with its
    attention written out — torch's ``multi_head_attention_forward`` would freeze ``L`` into the traced graph's
    reshapes; here only the head count and size are constants."""
    import torch

    attn = block.attn
    heads, width = attn.num_heads, attn.embed_dim
    q, k, v = torch.nn.functional.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).unflatten(
        -1, (3, heads, width // heads)).permute(2, 0, 3, 1, 4).unbind(0)  # each [N, H, L, D/H]
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-1, -2) + mask
    y = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
    x = x + block.ls_1(attn.out_proj(y))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def columns_text_tower(comparator, tokens):
    """The TextTower of ``comparator``: with a dynamic length when :func:`causal_text_model` applies and
    reproduces ``encode_tokens`` on ``tokens`` and on their first columns (≤ 1e-4), else the whole context."""
    import torch

    text_tower = tower_classes()[1]
    model = causal_text_model(comparator)
    if model is not None:
        tokens = tokens.long()
        cut = tokens[:, :int(tokens.argmax(dim=-1).max()) + 1]
        try:
            ref = comparator.encode_tokens(tokens).float()
            same = all(float((encode_columns(model, t).float() - ref).abs().max()) <= 1e-4 for t in (tokens, cut))
        except Exception:  # noqa: BLE001 - not the layout we know: export the whole context
            same = False
        if same and torch.isfinite(ref).all():
            return text_tower(comparator, columns=model), True
    return text_tower(comparator), False


@contextlib.contextmanager
def static_text_shapes():
    """HF / sentence-transformers ``encode_tokens`` drop all-padding columns (a data-dependent slice that a
    trace would freeze at the example's length). Masked columns change nothing, so export without it."""
    patched = []
    for name in ("clipzoo.backends.transformers", "clipzoo.backends.sentence_transformers"):
        module = sys.modules.get(name)  # only the backends already loaded can be in use
        if module is not None and hasattr(module, "trim_padding"):
            patched.append((module, module.trim_padding))
            module.trim_padding = lambda tokens, mask, padding_side: (tokens, mask)
    try:
        yield
    finally:
        for module, original in patched:
            module.trim_padding = original


# --------------------------------------------------------------------------------------------- export
def export_onnx(comparator, out_dir: "str | os.PathLike", opset: int | None = None, token_dtype: str = "int64",
                batch_dynamic: bool = True, *, exporter: str = "auto", check: bool = True, vit: str = "plain") -> Path:
    """Export a loaded Comparator to ``out_dir``.

    ``opset``: ONNX opset (default 17 for TorchScript, 18 for dynamo); ``token_dtype``: ``"int64"`` or
    ``"int32"`` (cast to int64 inside the graph); ``batch_dynamic``: a dynamic batch axis (else batch 1);
    ``exporter``: ``"auto"`` | ``"torchscript"`` | ``"dynamo"``; ``check``: run the graphs once in
    onnxruntime (when installed) and record their largest difference from eager in the JSON; ``vit``: how an
    open_clip ViT image tower is written (:mod:`.onnx_vision`): ``"plain"`` as torch writes it, ``"contrib"``
    with its attention and GELUs fused into ONNX Runtime's contrib ops (the ONNX runtimes' export — not portable
    to other ONNX engines), ``"standard"`` block by block in standard ops (what ``openvino-int8`` quantises);
    any other image tower is written plain. Returns ``out_dir``.
    """
    check_export_options(token_dtype, exporter, vit)
    if getattr(comparator, "card", None) is not None and comparator.card.backend == "onnx":
        card = comparator.card
        raise UnsupportedError(f"{card.source.path or card.alias} is already an ONNX export (of {card.alias}); "
                               "export the PyTorch model it came from")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (META_FILE, IMAGE_FILE, TEXT_FILE, IMAGE_FILE + ".data", TEXT_FILE + ".data"):
        (out / stale).unlink(missing_ok=True)
    graphs, used = _export_graphs(comparator, out, opset, token_dtype, batch_dynamic, exporter, vit)
    meta = export_meta(comparator, out, graphs, used, batch_dynamic)
    if check:
        meta["max_abs_diff"] = check_graphs(comparator, out, graphs, token_dtype)
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_FILE)  # written last: a folder with the JSON is complete
    return out


def check_export_options(token_dtype: str, exporter: str, vit: str = "plain") -> None:
    if token_dtype not in ("int64", "int32"):
        raise ClipzooError(f"token_dtype must be 'int64' or 'int32', not {token_dtype!r}")
    if exporter not in EXPORTERS:
        raise ClipzooError(f"unknown exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    check_vit_layout(vit)


def check_vit_layout(vit: str) -> None:
    if vit not in onnx_vision.LAYOUTS:
        raise ClipzooError(f"unknown ViT layout {vit!r}; use one of {', '.join(onnx_vision.LAYOUTS)}")


def _export_graphs(comparator, out: Path, opset, token_dtype: str, batch_dynamic: bool,
                   exporter: str, vit: str = "plain") -> tuple[dict[str, dict], str]:
    """Write ``image.onnx`` / ``text.onnx``; returns their descriptions and the exporter that wrote them."""
    import torch

    image_tower, text_tower = tower_classes()
    was_training = comparator.training
    comparator.eval()
    batch = 2 if batch_dynamic else 1
    graphs: dict[str, dict] = {}
    used = exporter
    try:
        with torch.no_grad(), static_text_shapes():
            if IMAGE in comparator.modalities:
                pixels = _example_pixels(comparator, batch)
                tower = onnx_vision.fused_image_tower(comparator, pixels, vit) if vit != "plain" and (
                    exporter != "dynamo") else None
                small = tower is not None and sum(p.numel() * p.element_size() for p in tower.parameters()) <= (
                    LARGE_WEIGHTS)  # one graph file, no external data
                if small and onnx_vision.export_fused(tower, pixels, out / IMAGE_FILE, IMAGE_INPUT, IMAGE_OUTPUT,
                                                      opset, batch_dynamic):
                    used = "torchscript"
                else:
                    tower = None
                    used = _export(image_tower(comparator), pixels, out / IMAGE_FILE, IMAGE_INPUT, IMAGE_OUTPUT,
                                   opset, batch_dynamic, exporter)
                graphs[IMAGE] = {"file": IMAGE_FILE, "input": IMAGE_INPUT, "output": IMAGE_OUTPUT,
                                 "input_dtype": "float32", "input_shape": ["N", *pixels.shape[1:]],
                                 "output_shape": ["N", comparator.embed_dim]}
                if tower is not None:  # written out block by block; "fused": ONNX Runtime's contrib ops in it
                    graphs[IMAGE]["layout"] = vit
                    graphs[IMAGE]["fused"] = sorted(onnx_vision.graph_ops(out / IMAGE_FILE) & set(
                        onnx_vision.FUSED_OPS))
            if TEXT in comparator.modalities:
                tokens = _example_tokens(comparator, batch, token_dtype)
                tower, columns = columns_text_tower(comparator, tokens) if batch_dynamic else (text_tower(
                    comparator), False)
                used = _export(tower, tokens, out / TEXT_FILE, TEXT_INPUT, TEXT_OUTPUT,
                               opset, batch_dynamic, used, length_dynamic=columns)
                graphs[TEXT] = {"file": TEXT_FILE, "input": TEXT_INPUT, "output": TEXT_OUTPUT,
                                "input_dtype": token_dtype, "input_shape": ["N", int(tokens.shape[1])],
                                "output_shape": ["N", comparator.embed_dim]}
                if columns:  # any length up to the context; features read at the argmax (end-of-text) token
                    graphs[TEXT]["dynamic_length"] = "argmax"
    finally:
        comparator.train(was_training)
    if not graphs:
        raise UnsupportedError(f"{comparator.card.alias} has neither an image nor a text tower to export")
    if not batch_dynamic:
        for g in graphs.values():
            g["input_shape"][0] = g["output_shape"][0] = 1
    return graphs, used


def _example_pixels(comparator, batch: int):
    import torch

    size = comparator.image_size
    if size is None:
        raise UnsupportedError(f"{comparator.card.alias} does not say its image size; cannot export its image tower")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, int(h), int(w), generator=gen).to(comparator.device)


def _example_tokens(comparator, batch: int, token_dtype: str):
    import torch

    texts = ["a photo of a cat", "a diagram of two dogs"][:batch]
    tokens = comparator.tokenize(texts, truncate=True)
    return tokens.to(comparator.device, getattr(torch, token_dtype))


def _export(module, example, path: Path, input_name: str, output_name: str, opset, batch_dynamic: bool,
            exporter: str, length_dynamic: bool = False) -> str:
    """Export one tower; returns the exporter that did it."""
    import torch

    big = sum(p.numel() * p.element_size() for p in module.parameters()) > LARGE_WEIGHTS
    if exporter in ("auto", "torchscript"):
        try:
            _export_torchscript(module, example, path, input_name, output_name, opset, batch_dynamic,
                                length_dynamic)
            return "torchscript"
        except OSError:  # the file system refused the write (a full disk, ulimit -f): no exporter can do better
            raise
        except Exception as exc:  # noqa: BLE001 - "auto" falls back to the other exporter
            if exporter == "torchscript":
                raise UnsupportedError(f"the TorchScript ONNX exporter cannot export {path.stem} "
                                       f"({type(exc).__name__}: {str(exc).strip()[:300]}); "
                                       "try exporter='dynamo'") from exc
            warn_user(f"TorchScript ONNX export of {path.stem} failed ({type(exc).__name__}); using dynamo")
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError:
        raise BackendMissingError("the dynamo ONNX exporter needs onnxscript; pip install onnxscript "
                                  "(or pip install 'clipzoo[onnx]')") from None
    kwargs: dict[str, Any] = {}
    if batch_dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
        if length_dynamic:
            kwargs["dynamic_shapes"][0][1] = torch.export.Dim("length", min=1, max=int(example.shape[1]))
    program = torch.onnx.export(module, (example,), None, dynamo=True, input_names=[input_name],
                                output_names=[output_name], opset_version=opset or 18, verbose=False,
                                **kwargs)
    program.save(str(path), external_data=big)
    return "dynamo"


def _export_torchscript(module, example, path, input_name, output_name, opset, batch_dynamic,
                        length_dynamic: bool = False) -> None:
    import torch

    axes = {input_name: {0: "N"}, output_name: {0: "N"}} if batch_dynamic else None
    if axes and length_dynamic:
        axes[input_name][1] = "L"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:  # nn.MultiheadAttention's inference fast path (several heads, no grad) is an op ONNX has no export for
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings
            torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[input_name],
                              output_names=[output_name], opset_version=opset or 17, dynamic_axes=axes,
                              do_constant_folding=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


# --------------------------------------------------------------------------------------------- check
def check_graphs(comparator, out: Path, graphs: dict, token_dtype: str) -> dict | None:
    """Largest |onnxruntime - eager| on fresh inputs at batch 1 and 3 (None without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import torch

    result = {}
    with torch.no_grad(), static_text_shapes():
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
                warn_user(f"{comparator.card.alias}: the exported {modality} graph differs from eager by "
                          f"{diff:.2e} (max abs)")
    return result
