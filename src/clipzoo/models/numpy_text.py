"""The embedded model's text tower in NumPy, read from its packed weights: a one-shot text query without torch.

``clipzoo search INDEX TEXT`` on an index of the embedded model (``clipzoo/tiny-shapes``) spent most of its
wall time importing torch (results/latency.json: ``import torch`` alone ~1.9 s of 2.5 s) to run a 3-layer,
128-wide text transformer on one sentence. :class:`NumpyTextTower` runs the same network — open_clip's
``CLIP.encode_text`` as :mod:`clipzoo.models.plain_clip` builds it: token + position embeddings, pre-norm
residual blocks with causal multi-head attention and an exact-GELU MLP, the final LayerNorm, the end-of-text
token's row through the text projection — on the packed ``tiny-shapes.safetensors`` (read with
``safetensors.numpy``, the fp16 weights widened as :func:`clipzoo.packing.materialise` widens them), with the
same tokenizer (open_clip's, :class:`clipzoo.tokenizers.OpenClipTokenizer`) and the same long-text policies. Its
features equal the torch model's within 1e-5 (``tests/test_issue22_numpy_text.py``).

:func:`embedded_text_tower` gives the tower for a model spec that names an embedded model (its alias, or the
unpacked folder an index records), else None — the caller then loads the model as usual.
"""
from __future__ import annotations

import math
import os
from functools import cache

import numpy as np
from safetensors.numpy import load_file

from ..catalog.embedded import EMBEDDED, cache_folder, packed_files, packed_meta
from ..constants import COUNTED_TOKENS_MAX
from ..errors import BadTextError, ClipzooError
from ..inputs import split_long_text, text_items, text_policy, too_long_error
from ..packing import ROWS_KEY
from ..tokenizers import shared_open_clip

__all__ = ["NumpyTextTower", "embedded_text_tower", "embedded_name"]

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, as open_clip's text tower uses
_ERF = np.frompyfunc(math.erf, 1, 1)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * weight + bias


def gelu(x: np.ndarray) -> np.ndarray:
    """torch's exact GELU, x·Φ(x), with the error function of the C library."""
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(x.dtype))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class NumpyTextTower:
    """An embedded model's text tower: ``encode_text(texts)`` -> float32 features (N, D), L2-normalised."""

    def __init__(self, name: str, model_cfg: dict, weights: dict[str, np.ndarray], token_ids: list[int]):
        text = model_cfg["text_cfg"]
        if model_cfg.get("quick_gelu"):
            raise ClipzooError(f"embedded model {name!r}: the NumPy text tower runs exact GELU only")
        self.name, self.embed_dim = name, int(model_cfg["embed_dim"])
        self.context_length, self.heads = int(text.get("context_length", 77)), int(text.get("heads", 8))
        self.layers = int(text.get("layers", 12))
        self.w = {k: v.astype(np.float64) for k, v in weights.items()}  # fp16 in the package; computed in fp64
        rows = self.w.pop(ROWS_KEY)
        self.table = np.vstack([rows, np.zeros((1, rows.shape[1]))])  # packed rows + one zero row
        self.row_of = {int(t): i for i, t in enumerate(token_ids)}  # token id -> packed row (others: zero row)
        self.tokenizer = shared_open_clip()  # open_clip's, as the torch model's in every precision

    @classmethod
    def from_package(cls, name: str) -> "NumpyTextTower":
        meta_path, weights_path = packed_files(name)
        meta = packed_meta(name, (meta_path, weights_path))
        if meta is None:
            raise ClipzooError(f"the packed weights of the embedded model {name!r} are missing from this install "
                               f"({weights_path}); reinstall clipzoo")
        keys = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
        weights = {k: v for k, v in load_file(str(weights_path)).items() if k.startswith(keys)}
        return cls(name, meta["model_cfg"], weights, meta["token_ids"])

    # ------------------------------------------------------------------ tokens
    def token_ids(self, text: str, truncate: bool = False) -> list[int]:
        """``[SOT] + BPE + [EOT]`` of one text; longer than the context: cut (last token EOT) when ``truncate``,
        else the :class:`BadTextError` every clipzoo model raises. Tokenised only as far as the context."""
        tok = self.tokenizer
        ids = [tok.sot_token_id, *tok.encode(text, self.context_length - 1), tok.eot_token_id]
        if len(ids) > self.context_length:
            if not truncate:
                raise too_long_error(text, len(tok.encode(text, COUNTED_TOKENS_MAX - 1)) + 2, self.context_length)
            ids = ids[:self.context_length]
            ids[-1] = tok.eot_token_id
        return ids

    def fits_context(self, text: str) -> bool:
        return len(self.tokenizer.encode(text, self.context_length - 1)) + 2 <= self.context_length

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text)) + 2

    # ------------------------------------------------------------------ network
    def _block(self, i: int, x: np.ndarray) -> np.ndarray:
        p = f"transformer.resblocks.{i}."
        w, n, h = self.w, x.shape[0], self.heads
        y = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = np.split(y @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"], 3, axis=-1)
        d = q.shape[-1] // h
        q, k, v = (t.reshape(n, h, d).transpose(1, 0, 2) for t in (q, k, v))  # (heads, n, d)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d) + np.triu(np.full((n, n), -np.inf), 1)
        attn = (softmax(scores) @ v).transpose(1, 0, 2).reshape(n, h * d)
        x = x + attn @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        y = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        y = gelu(y @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"])
        return x + y @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]

    def encode_ids(self, ids: list[int]) -> np.ndarray:
        """Unnormalised features of one token sequence (no padding: the tower is causal and pooled at the
        end-of-text token, so the padding the torch model carries changes nothing before it)."""
        rows = [self.row_of.get(t, len(self.table) - 1) for t in ids]
        x = self.table[rows] + self.w["positional_embedding"][:len(ids)]
        for i in range(self.layers):
            x = self._block(i, x)
        x = layer_norm(x, self.w["ln_final.weight"], self.w["ln_final.bias"])
        return x[int(np.argmax(ids))] @ self.w["text_projection"]

    def encode_text(self, texts: "str | list[str]", normalize: bool = True, long_text: "str | None" = None,
                    truncate: bool = False) -> np.ndarray:
        """Texts -> float32 features (N, D), as the torch model's ``encode_text`` with the same ``long_text``
        policy (``error``, the default, ``truncate``, ``chunks``) and the same errors."""
        texts = text_items(texts)
        policy = text_policy(truncate, long_text, "error")
        out = []
        for text in texts:
            if policy == "chunks" and not self.fits_context(text):
                pieces = split_long_text(text, self.fits_context, self.count_tokens, self.context_length)
                feats = [self.encode_ids(self.token_ids(p, truncate=True)) for p in pieces]
                out.append(np.mean([f / np.linalg.norm(f) for f in feats], axis=0))
            else:
                out.append(self.encode_ids(self.token_ids(text, truncate=policy != "error")))
        feats = np.stack(out)
        if normalize:
            feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
        return feats.astype(np.float32)

    def query_vector(self, query: str, long_text: str = "truncate") -> np.ndarray:
        """One search text -> its normalised features [D] (a blank text is the search's own error)."""
        if not isinstance(query, str) or not query.strip():
            raise BadTextError("the search text is empty; pass some words to search for")
        return self.encode_text([query], long_text=long_text)[0]


def embedded_name(spec: "str | os.PathLike | None") -> "str | None":
    """The embedded model a spec names — its alias (``clipzoo/tiny-shapes``, ``tiny-shapes``) or the folder it
    unpacks to (what an index records) — else None."""
    if spec is None:
        return None
    text = os.fspath(spec).strip()
    for name in EMBEDDED:
        if text.lower() in (name, f"clipzoo/{name}"):
            return name
        meta = packed_meta(name)
        if meta is not None and os.path.abspath(os.path.expanduser(text)) == str(cache_folder(name, meta)):
            return name
    return None


@cache
def _tower(name: str) -> NumpyTextTower:
    return NumpyTextTower.from_package(name)


def embedded_text_tower(spec: "str | os.PathLike | None") -> "NumpyTextTower | None":
    """The NumPy text tower of the embedded model ``spec`` names (loaded once per process), else None."""
    name = embedded_name(spec)
    return None if name is None else _tower(name)
