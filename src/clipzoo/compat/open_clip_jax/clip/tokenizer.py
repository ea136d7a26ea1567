"""open_clip_jax's tokenizer (``clip/tokenizer.py``, a TensorFlow port of keras-nlp's byte-pair tokenizer) in
plain Python, with CLIP's vocabulary and merges (clipzoo's :mod:`~clipzoo.tokenizers`).

``tokenize(texts, context_len=77)`` -> int32 ``[n, context_len]``, as open_clip_jax computes it: strip ASCII
whitespace, collapse ``[\\t\\n\\f\\r ]+`` to one space, lowercase **ASCII only** (``tf.strings.lower``), split
with its regular expressions (RE2 semantics: ``\\s`` is ASCII), byte-pair merge each piece with ``</w>`` on its
last symbol, wrap in start/end tokens, pad with 0 — and **truncate without keeping the end token**. For
everyday text (ASCII, at most 75 tokens) that is open_clip's tokenizer token for token; the differences are
open_clip_jax's: no ftfy / HTML unescaping, non-ASCII capitals kept, a cut text ends without ``<end_of_text>``.
Checked against open_clip_jax's TensorFlow tokenizer on awkward texts (tests/data/open_clip_jax_reference.npz).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import regex

from ....tokenizers import shared
from .common import Tensor, as_tensor

ASCII_STRIP = "\t\n\v\f\r "  # tf.strings.strip (absl's ASCII whitespace)
RE2_SPACE = "\t\n\f\r "  # RE2's \s
SPECIAL_WHITESPACES = "\u00a0\u2009\u202f\u3000"
MARK = "\u096c"  # "६", keras-nlp's marker before a space
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
COLLAPSE = regex.compile(f"[{RE2_SPACE}]+")
MARK_SPACE = regex.compile(f"( )([^{RE2_SPACE}{SPECIAL_WHITESPACES}])")
MARK_END = regex.compile(f"([{RE2_SPACE}]{SPECIAL_WHITESPACES})\\Z")  # a sequence, as in the original: inert
SPLIT_PATTERN_1 = regex.compile(
    f"'s|'t|'re|'ve|'m|'ll|'d|[{RE2_SPACE}{SPECIAL_WHITESPACES}]+[\n\r\t\f{MARK}{SPECIAL_WHITESPACES}]|\\p{{L}}+|"
    f"[\\p{{N}}]|[^{RE2_SPACE}\\p{{L}}\\p{{N}}{SPECIAL_WHITESPACES}]+")
SPLIT_PATTERN_2 = regex.compile(f"[{RE2_SPACE}{MARK}{SPECIAL_WHITESPACES}]\\Z")
DROPPED = (" ", MARK)  # "Spaces are not tokenized"


def regex_split(text: str, pattern: regex.Pattern) -> list[str]:
    """``tensorflow_text.regex_split`` with the delimiters kept: the pieces between matches and the matches."""
    out, last = [], 0
    for m in pattern.finditer(text):
        if m.start() > last:
            out.append(text[last:m.start()])
        out.append(m.group())
        last = m.end()
    if last < len(text):
        out.append(text[last:])
    return out


def split_words(text: str) -> list[str]:
    """The pieces of one text that are byte-pair encoded, in order."""
    text = COLLAPSE.sub(" ", text.strip(ASCII_STRIP)).translate(ASCII_LOWER)
    text = MARK_END.sub("\\1" + MARK, MARK_SPACE.sub(MARK + "\\1\\2", text))
    words = [piece for word in regex_split(text, SPLIT_PATTERN_1) for piece in regex_split(word, SPLIT_PATTERN_2)]
    return [w for w in words if w not in DROPPED]


def encode(text: str) -> list[int]:
    """Token ids of one text, without start/end tokens."""
    bpe = shared()
    ids: list[int] = []
    for word in split_words(text):
        symbols = "".join(bpe.byte_encoder[b] for b in word.encode("utf-8"))
        ids.extend(bpe.encoder[piece] for piece in bpe.bpe(symbols).split(" "))
    return ids


def tokenize(inputs: Any, context_len: int | None = 77) -> "Tensor | list[Tensor]":
    """open_clip_jax's ``tokenize``: one text or several -> int32 ``[n, context_len]`` (``._numpy()`` works).

    ``context_len=None`` gives the unpadded token lists (open_clip_jax's ragged output), one array each."""
    if isinstance(inputs, (str, bytes)):
        inputs = [inputs]
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in np.asarray(inputs, dtype=object).ravel()]
    bpe = shared()
    rows = [[bpe.sot_token_id, *encode(text), bpe.eot_token_id] for text in texts]
    if not context_len:
        return [as_tensor(np.asarray(row, np.int32)) for row in rows]
    out = np.zeros((len(rows), context_len), np.int32)
    for i, row in enumerate(rows):
        row = row[:context_len]  # cut as open_clip_jax cuts: the end token goes with the rest
        out[i, :len(row)] = row
    return as_tensor(out)
