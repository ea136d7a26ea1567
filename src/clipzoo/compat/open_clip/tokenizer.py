"""``open_clip.tokenizer`` through the shim: open_clip's tokenizers (``SimpleTokenizer``, ``tokenize``,
``decode``, ``HFTokenizer``, …) name for name, plus :class:`ComparatorTokenizer`, open_clip's call
convention over the tokenizer of a model clipzoo loads (HF transformers, sentence-transformers, …)."""
from __future__ import annotations

import torch

from ...errors import UnsupportedError
from ._passthrough import passthrough
from ._real import submodule

_real = submodule("tokenizer")
tokenize = _real.tokenize
decode = _real.decode
SimpleTokenizer = _real.SimpleTokenizer


class ComparatorTokenizer:
    """open_clip's tokenizer call convention over a Comparator's ``tokenize``: pads to the model's
    context and truncates a too-long text, as open_clip's tokenizers do."""

    def __init__(self, comparator, context_length: int | None = None):
        self.comparator = comparator
        self.context_length = context_length or comparator.context_length

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        wanted = context_length or self.context_length
        if wanted and self.comparator.context_length and wanted != self.comparator.context_length:
            raise UnsupportedError(f"{self.comparator.card.alias} tokenizes to {self.comparator.context_length} "
                                   f"tokens; context_length={wanted} does not apply to it")
        return self.comparator.tokenize([texts] if isinstance(texts, str) else list(texts), truncate=True)


__getattr__, __dir__, __all__ = passthrough("tokenizer", globals())
