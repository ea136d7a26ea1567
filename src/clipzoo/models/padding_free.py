"""open_clip text encoding up to a batch's longest text: the same features for less work.

An open_clip ``CLIP`` whose text tower is causal and pools at the end-of-text token never lets the columns after
a batch's last end-of-text token reach its features, so they need not be computed (a 10-token caption in a
77-token context costs ~1/7). Used by the open_clip backend (inference) and the trainer (training).
"""
from __future__ import annotations

import sys

import torch

__all__ = ["trimmable", "encode_text_padding_free", "encode_text_trimmed"]


def tracing() -> bool:
    """Exporting (TorchScript / ONNX) or compiling: the graph must keep the whole context, whose length
    may not depend on the example's tokens."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
    onnx = sys.modules.get("torch.onnx")  # not imported yet (~0.2 s): nothing is exporting
    return bool(torch.jit.is_tracing() or (onnx is not None and onnx.is_in_onnx_export()) or compiling())


def trimmable(model) -> bool:
    """An open_clip ``CLIP`` whose text tower is causal and pools at the end-of-text token: its features
    do not depend on the padding after the longest text of a batch, so that padding need not be computed."""
    open_clip = sys.modules.get("open_clip")  # not imported: the model cannot be one of its classes
    own = getattr(type(model), "trimmable_text", False)  # models.plain_clip.PlainCLIP
    return ((own or (open_clip is not None and type(model) is open_clip.CLIP))
            and getattr(model, "text_pool_type", None) in ("argmax", "eos")
            and isinstance(getattr(model, "attn_mask", None), torch.Tensor)
            and getattr(model, "positional_embedding", None) is not None)


def encode_text_padding_free(model, text: torch.Tensor) -> torch.Tensor:
    """Raw text features of a :func:`trimmable` model: :func:`encode_text_trimmed`, except while exporting
    or compiling, where open_clip's own (class) ``encode_text`` keeps the whole context."""
    if tracing():
        return type(model).encode_text(model, text)
    return encode_text_trimmed(model, text)


def encode_text_trimmed(model, text: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(text)`` computed on the columns up to the batch's last end-of-text token.

    The causal mask lets position i attend to positions ≤ i only, and pooling reads the end-of-text
    position, so the columns after the longest text never reach the features: dropping them gives the same
    features (to float rounding, ~1e-7) for a fraction of the work — a 10-token caption in a 77-token
    context costs ~1/7. open_clip's own ``encode_text`` always runs the whole context.
    """
    ends = text.argmax(dim=-1) if model.text_pool_type == "argmax" else (text == model.text_eos_id).int().argmax(dim=-1)
    n = int(ends.max()) + 1 if text.numel() else text.shape[1]
    text = text[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), ends]  # open_clip's text_global_pool ('argmax' / 'eos')
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x
