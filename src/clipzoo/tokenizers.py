"""OpenAI CLIP's byte-pair tokenizer, token for token.

open_clip ships a copy of this tokenizer that differs from OpenAI's in two corner cases: its special
tokens are spelled ``<start_of_text>`` / ``<end_of_text>`` (so a literal ``<|endoftext|>`` in a text
is one token for OpenAI and six for open_clip, and a literal ``<end_of_text>`` one for open_clip and
seven for OpenAI), and it collapses whitespace with ``str.split`` instead of the ``\\s+`` regex.
:class:`OpenAITokenizer` follows openai/CLIP's ``simple_tokenizer.py`` exactly (MIT License, Copyright
(c) 2021 OpenAI); :class:`OpenClipTokenizer` is open_clip's ``SimpleTokenizer`` with its default arguments,
token for token, without importing open_clip (which imports torch). Both read the same BPE merges file,
the one open_clip installs.

``encode(text, max_tokens)`` stops once ``max_tokens`` ids are made: the ids are the first ``max_tokens`` of
the whole text's, so a too-long check or a cut to the context costs the context, not the text (the whole
text is still cleaned first, as the originals clean it, so the ids kept are theirs bit for bit).
"""
from __future__ import annotations

import gzip
import heapq
import html
import importlib.util
import os
from collections.abc import Callable
from functools import cache, lru_cache

import ftfy
import regex as re

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
DEFAULT_CONTEXT_LENGTH = 77


BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges, as open_clip's package ships them
LONG_WORD = 48  # a word of more byte symbols is merged by heap_bpe: the same merges in O(n log n), not O(n²)


@lru_cache
def default_bpe() -> str:
    """The path of CLIP's BPE file inside the installed open_clip, found without importing open_clip (which
    imports torch): JAX and MindSpore users tokenise with no PyTorch loaded."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, BPE_FILE)
        if os.path.isfile(path):
            return path
    from open_clip.tokenizer import default_bpe as open_clip_bpe

    return open_clip_bpe()


@lru_cache
def bytes_to_unicode() -> dict:
    """The reversible byte -> printable unicode character map of GPT-2 / CLIP's BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word: tuple) -> set:
    pairs = set()
    prev = word[0]
    for char in word[1:]:
        pairs.add((prev, char))
        prev = char
    return pairs


def heap_bpe(ranks: dict, token: str) -> str:
    """The BPE of one word exactly as the reference loop makes it — repeatedly the lowest-ranked adjacent pair,
    merged at all its places left to right without overlap — with a heap of pairs and a linked list of symbols:
    O(n log n) where the loop is O(n²) (a 16,000-letter word took 8.6 s, a 1 MB one hours)."""
    symbols = [*token[:-1], token[-1] + "</w>"]
    n = len(symbols)
    after, before = list(range(1, n + 1)), list(range(-1, n - 1))
    alive = [True] * n
    heap: list = []

    def push(i: int) -> None:  # the pair that starts at symbol i, if it is a merge
        j = after[i]
        rank = ranks.get((symbols[i], symbols[j])) if j < n else None
        if rank is not None:
            heapq.heappush(heap, (rank, i, symbols[i], symbols[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        rank, merged = heap[0][0], []
        while heap and heap[0][0] == rank:  # every place of that pair, left to right (the heap orders by place)
            _, i, first, second = heapq.heappop(heap)
            j = after[i] if alive[i] else n
            if j < n and symbols[i] == first and symbols[j] == second:  # not consumed by a merge on its left
                symbols[i], alive[j], after[i] = first + second, False, after[j]
                if after[j] < n:
                    before[after[j]] = i
                merged.append(i)
        for i in merged:  # the new pairs count from the next round on, as the loop recomputes its pairs
            if before[i] >= 0:
                push(before[i])
            push(i)
    out, i = [], 0
    while i < n:
        out.append(symbols[i])
        i = after[i]
    return " ".join(out)


def basic_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def open_clip_whitespace_clean(text: str) -> str:
    """open_clip's ``whitespace_clean``: ``str.split`` (which also splits at \\x1c–\\x1f and \\x85)."""
    return " ".join(text.split()).strip()


class ClipBPE:
    """CLIP's byte-pair tokenizer; the subclasses set the special tokens and the text cleaning."""

    special_tokens: tuple[str, str] = (SOT, EOT)

    def __init__(self, bpe_path: str | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with gzip.open(bpe_path or default_bpe()) as f:
            merges = f.read().decode("utf-8").split("\n")
        merges = merges[1:49152 - 256 - 2 + 1]
        merges = [tuple(merge.split()) for merge in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        for merge in merges:
            vocab.append("".join(merge))
        vocab.extend(self.special_tokens)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {t: t for t in self.special_tokens}
        special = "|".join(re.escape(t) for t in self.special_tokens)
        self.pat = re.compile(special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                              re.IGNORECASE)
        self.vocab_size = len(self.encoder)
        self.sot_token_id = self.encoder[self.special_tokens[0]]
        self.eot_token_id = self.encoder[self.special_tokens[1]]
        self.all_special_ids = [self.sot_token_id, self.eot_token_id]
        self.context_length = context_length

    def clean(self, text: str) -> str:
        """The text as the BPE sees it (OpenAI's cleaning: ftfy, HTML entities, ``\\s+`` runs, lower case)."""
        return whitespace_clean(basic_clean(text)).lower()

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        if len(token) > LONG_WORD:  # not cached: a long word is rarely seen twice
            return heap_bpe(self.bpe_ranks, token)
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """The BPE ids of ``text``; with ``max_tokens``, only its first ``max_tokens`` (the words after them are
        never looked at: a too-long check or a cut costs the context, not the text)."""
        return bpe_ids(self, self.clean(text), max_tokens)

    def decode(self, tokens) -> str:
        tokens = tokens.tolist() if hasattr(tokens, "tolist") else tokens
        text = "".join(self.decoder[int(token)] for token in tokens)
        return bytearray([self.byte_decoder[c] for c in text]).decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts: str | list[str], context_length: int = DEFAULT_CONTEXT_LENGTH,
                 truncate: bool = False):
        """``clip.tokenize``: a LongTensor [N, context_length]; a too-long text raises OpenAI's RuntimeError."""
        return bpe_rows(self, [texts] if isinstance(texts, str) else texts, context_length, truncate)

    def __call__(self, texts: str | list[str], context_length: int | None = None):
        """open_clip's tokenizer call: pad to the context, truncate silently (last token EOT)."""
        return self.tokenize(texts, context_length or self.context_length, truncate=True)


class OpenAITokenizer(ClipBPE):
    """OpenAI's ``SimpleTokenizer`` plus a ``__call__`` shaped like open_clip's tokenizers.

    ``encode``/``decode``/``encoder``/``decoder``/``bpe`` are OpenAI's; ``__call__(texts, context_length)``
    pads to the context and truncates (last token EOT) as open_clip's tokenizers do; :meth:`tokenize`
    is ``clip.tokenize`` (raises OpenAI's RuntimeError for a too-long text unless ``truncate``).
    """


class OpenClipTokenizer(ClipBPE):
    """open_clip's ``SimpleTokenizer()`` (default arguments: ``clean="lower"``, no reduction mask), token for
    token: specials spelled ``<start_of_text>`` / ``<end_of_text>`` (same ids as OpenAI's), whitespace collapsed
    with ``str.split``. What open_clip pairs with an open_clip folder whose config names no tokenizer
    (``open_clip.get_tokenizer("local-dir:…")``), so the embedded model tokenises alike in every precision."""

    special_tokens = ("<start_of_text>", "<end_of_text>")

    def clean(self, text: str) -> str:
        return open_clip_whitespace_clean(basic_clean(text)).lower()


@cache
def shared() -> OpenAITokenizer:
    """One process-wide instance (reading the merges file takes ~0.1 s)."""
    return OpenAITokenizer()


@cache
def shared_open_clip() -> OpenClipTokenizer:
    """One process-wide :class:`OpenClipTokenizer` (the embedded model's NumPy text tower)."""
    return OpenClipTokenizer()


# --------------------------------------------------------------------------- any CLIP BPE, counted or cut early
def is_bpe(tokenizer) -> bool:
    """Whether ``tokenizer`` is CLIP's BPE whose ids are ``[SOT] + encode(text) + [EOT]``: clipzoo's, or open_clip's
    ``SimpleTokenizer`` with no reduction mask (duck-typed: open_clip is not imported here)."""
    if isinstance(tokenizer, ClipBPE):
        return True
    kind = type(tokenizer)
    return (kind.__name__ == "SimpleTokenizer" and kind.__module__.startswith("open_clip")
            and getattr(tokenizer, "reduction_fn", None) is None and callable(getattr(tokenizer, "clean_fn", None)))


def bpe_ids(tokenizer, clean: str, max_tokens: int | None = None) -> list[int]:
    """``encode``'s loop over an already cleaned text, stopping after ``max_tokens`` ids: the ids made are the
    first ``max_tokens`` of the whole text's, bit for bit."""
    ids: list[int] = []
    if max_tokens is not None and max_tokens <= 0:
        return ids
    byte_encoder, encoder = tokenizer.byte_encoder, tokenizer.encoder
    for match in tokenizer.pat.finditer(clean):
        token = "".join(byte_encoder[b] for b in match.group().encode("utf-8"))
        word = tokenizer.bpe(token) if len(token) <= LONG_WORD or isinstance(tokenizer, ClipBPE) \
            else heap_bpe(tokenizer.bpe_ranks, token)  # open_clip's own loop is quadratic in the word
        ids.extend(encoder[bpe_token] for bpe_token in word.split(" "))
        if max_tokens is not None and len(ids) >= max_tokens:
            return ids[:max_tokens]
    return ids


def encode_prefix(tokenizer, text: str, max_tokens: int | None = None) -> list[int]:
    """The first ``max_tokens`` BPE ids (all without it) of a :func:`is_bpe` tokenizer."""
    if isinstance(tokenizer, ClipBPE):
        return tokenizer.encode(text, max_tokens)
    return bpe_ids(tokenizer, tokenizer.clean_fn(text), max_tokens)


def bpe_rows(tokenizer, texts: list[str], context_length: int, truncate: bool,
             too_long: "Callable[[str], Exception] | None" = None):
    """The padded LongTensor [N, context_length] of a :func:`is_bpe` tokenizer, each text tokenised only as far as
    the context (ids equal to the whole text's, cut as the originals cut: the first context − 1, then EOT); a
    too-long text raises ``too_long(text)`` (default: OpenAI's RuntimeError) unless ``truncate``."""
    import numpy as np
    import torch

    result = np.zeros((len(texts), context_length), dtype=np.int64)  # filled row by row, then one tensor (a
    for i, text in enumerate(texts):  # torch.tensor per row cost more than the BPE of a short caption)
        body = encode_prefix(tokenizer, text, max(context_length - 1, 0))  # one more than fits: too long or not
        tokens = [tokenizer.sot_token_id, *body, tokenizer.eot_token_id]
        if len(tokens) > context_length:
            if not truncate:
                if too_long is not None:
                    raise too_long(text)
                raise RuntimeError(f"Input {texts[i]} is too long for context length {context_length}")
            tokens = tokens[:context_length]
            tokens[-1] = tokenizer.eot_token_id
        result[i, :len(tokens)] = tokens
    return torch.from_numpy(result)


def token_count(tokenizer, text: str, limit: int | None = None) -> int | None:
    """Tokens ``text`` needs, special tokens included; None when the tokenizer gives no way to count. With
    ``limit``, a CLIP BPE stops counting past it: the count is exact up to ``limit`` and ``limit + 1`` beyond."""
    if is_bpe(tokenizer):
        return len(encode_prefix(tokenizer, text, None if limit is None else max(limit - 1, 0))) + 2
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip's, with a reduction mask
        return len(tokenizer.encode(text)) + 2
    if hasattr(tokenizer, "kind") and hasattr(tokenizer, "lower_case"):  # clipzoo's TextTokenizer
        return token_count(tokenizer.tokenizer, text.lower() if tokenizer.lower_case else text, limit)
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "convert_tokens_to_ids"):  # open_clip's HFTokenizer
        clean = getattr(tokenizer, "clean_fn", None)
        return len(inner(clean(text) if clean else text, truncation=False, verbose=False)["input_ids"])
    if hasattr(tokenizer, "convert_tokens_to_ids"):  # a Hugging Face tokenizer
        return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])
    return None
