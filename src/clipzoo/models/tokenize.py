"""Texts -> token ids for the text towers: open_clip tokenizers and Hugging Face tokenizers, with the too-long
check every clipzoo model shares (a text longer than the context raises :class:`~clipzoo.errors.BadTextError`
naming it, unless ``truncate``)."""
from __future__ import annotations

from typing import Any

from ..inputs import text_items, too_long_error

__all__ = ["TextTokenizer", "tokenize_checked", "token_count", "tokenize_with"]


def tokenize_checked(tokenizer, texts, context_length: int, truncate: bool = False):
    """Token ids from an open_clip-style tokenizer; a text longer than the context raises
    :class:`BadTextError` naming it unless ``truncate``."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not truncate:
        for text in texts:
            n = token_count(tokenizer, text)
            if n is not None and n > context_length:
                raise too_long_error(text, n, context_length)
    return tokenizer(texts)


def token_count(tokenizer, text: str) -> int | None:
    """Tokens a text needs, special tokens included; None when the tokenizer gives no way to count."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip SimpleTokenizer
        return len(tokenizer.encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None:
        clean = getattr(tokenizer, "clean_fn", None)
        ids = inner(clean(text) if clean else text, truncation=False)["input_ids"]
        return len(ids)
    return None


def tokenize_with(tokenizer, texts: Any, context_length: int, truncate: bool):
    """Token ids (N, context_length) of a Hugging Face tokenizer, padded its way; a too-long text raises unless
    ``truncate``."""
    texts = text_items(texts)
    if not truncate:
        ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        for text, row in zip(texts, ids):
            if len(row) > context_length:
                raise too_long_error(text, len(row), context_length)
    out = tokenizer(texts, padding="max_length", truncation=True, max_length=context_length,
                    return_tensors="pt")
    return out["input_ids"].long()


class TextTokenizer:
    """texts -> LongTensor (N, context_length), padded the tokenizer's way (picklable, for DataLoader workers)."""

    def __init__(self, tokenizer, context_length: int, kind: str, lower_case: bool = False):
        self.tokenizer, self.context_length, self.kind = tokenizer, int(context_length), kind
        self.lower_case = lower_case

    def __call__(self, texts, truncate: bool = True):
        texts = text_items(texts)
        if self.lower_case:
            texts = [t.lower() for t in texts]
        if self.kind == "open_clip":
            return tokenize_checked(self.tokenizer, texts, self.context_length, truncate)
        return tokenize_with(self.tokenizer, texts, self.context_length, truncate)
