"""Texts -> token ids for the text towers: open_clip tokenizers and Hugging Face tokenizers, with the too-long
check every clipzoo model shares (a text longer than the context raises :class:`~clipzoo.errors.BadTextError`
naming it, unless ``truncate``). CLIP's BPE is tokenised only as far as the context (one token more, to tell a
too-long text), so a huge text costs what its kept tokens cost; the ids are the whole text's, bit for bit."""
from __future__ import annotations

from typing import Any

from ..constants import COUNTED_TOKENS_MAX
from ..inputs import check_unicode, text_items, too_long_error
from ..tokenizers import bpe_rows, is_bpe, token_count

__all__ = ["TextTokenizer", "tokenize_checked", "token_count", "tokenize_with"]


def tokenize_checked(tokenizer, texts, context_length: int, truncate: bool = False):
    """Token ids from an open_clip-style tokenizer; a text longer than the context raises
    :class:`BadTextError` naming it unless ``truncate``, and a text that is not valid Unicode always does."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    check_unicode(texts)
    rows = getattr(tokenizer, "context_length", None) or context_length  # what its own call pads to
    if is_bpe(tokenizer) and rows == context_length:  # checked and cut in one pass, as far as the context only
        return bpe_rows(tokenizer, texts, rows, truncate, lambda text: too_long_error(
            text, token_count(tokenizer, text, COUNTED_TOKENS_MAX), context_length))
    if not truncate:
        for text in texts:
            n = token_count(tokenizer, text, context_length)
            if n is not None and n > context_length:
                raise too_long_error(text, token_count(tokenizer, text, COUNTED_TOKENS_MAX), context_length)
    if is_bpe(tokenizer):  # its own call would BPE-encode the whole text before cutting it
        return bpe_rows(tokenizer, texts, rows, True)
    return tokenizer(texts)


def tokenize_with(tokenizer, texts: Any, context_length: int, truncate: bool):
    """Token ids (N, context_length) of a Hugging Face tokenizer, padded its way; a too-long text raises unless
    ``truncate``. A long text is tokenised only as far as a beginning of it, cut at a space, that holds more than the
    context (:func:`head`): its ids are the whole text's (a 10 MB line took 8 s and 2 GB)."""
    texts = text_items(texts)
    heads = [head(tokenizer, text, context_length) for text in texts]
    if not truncate:
        ids = tokenizer(heads, truncation=False, verbose=False)["input_ids"]
        for text, row in zip(texts, ids):
            if len(row) > context_length:
                whole = head(tokenizer, text, COUNTED_TOKENS_MAX)
                n = hf_count(tokenizer, whole) if len(whole) == len(text) else COUNTED_TOKENS_MAX + 1
                raise too_long_error(text, n, context_length)
    out = tokenizer(heads, padding="max_length", truncation=True, max_length=context_length,
                    return_tensors="pt")
    return out["input_ids"].long()


HEAD_MARGIN = 8  # tokens past the context a text's beginning keeps, so that what is cut never reaches the kept ids


def hf_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])


def head(tokenizer, text: str, context_length: int) -> str:
    """The shortest beginning of ``text``, cut before a space (a word boundary for every tokenizer's
    pre-tokenizer), of at least ``context_length`` + :data:`HEAD_MARGIN` tokens, tried at 4 times the length each
    time (linear in what it keeps); ``text`` itself when it is shorter or has no such space."""
    size = max(64 * context_length, 1024)
    while size < len(text):
        cut = text.rfind(" ", 0, size)
        if cut > 0 and hf_count(tokenizer, text[:cut]) >= context_length + HEAD_MARGIN:
            return text[:cut]
        size *= 4
    return text


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
