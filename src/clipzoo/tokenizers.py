"""OpenAI CLIP's byte-pair tokenizer, token for token.

open_clip ships a copy of this tokenizer that differs from OpenAI's in two corner cases: its special
tokens are spelled ``<start_of_text>`` / ``<end_of_text>`` (so a literal ``<|endoftext|>`` in a text
is one token for OpenAI and seven for open_clip, and the other way round), and it collapses
whitespace with ``str.split`` instead of the ``\\s+`` regex. This module follows openai/CLIP's
``simple_tokenizer.py`` exactly (MIT License, Copyright (c) 2021 OpenAI) and reads the same BPE
merges file, the one open_clip installs.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import cache, lru_cache

import ftfy
import regex as re

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
DEFAULT_CONTEXT_LENGTH = 77


BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges, as open_clip's package ships them


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


def basic_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class OpenAITokenizer:
    """OpenAI's ``SimpleTokenizer`` plus a ``__call__`` shaped like open_clip's tokenizers.

    ``encode``/``decode``/``encoder``/``decoder``/``bpe`` are OpenAI's; ``__call__(texts, context_length)``
    pads to the context and truncates (last token EOT) as open_clip's tokenizers do; :meth:`tokenize`
    is ``clip.tokenize`` (raises OpenAI's RuntimeError for a too-long text unless ``truncate``).
    """

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
        vocab.extend([SOT, EOT])
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {SOT: SOT, EOT: EOT}
        self.pat = re.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",  # noqa: E501
                              re.IGNORECASE)
        self.vocab_size = len(self.encoder)
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.all_special_ids = [self.sot_token_id, self.eot_token_id]
        self.context_length = context_length

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
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

    def encode(self, text: str) -> list[int]:
        bpe_tokens: list[int] = []
        text = whitespace_clean(basic_clean(text)).lower()
        for token in re.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[bpe_token] for bpe_token in self.bpe(token).split(" "))
        return bpe_tokens

    def decode(self, tokens) -> str:
        tokens = tokens.tolist() if hasattr(tokens, "tolist") else tokens
        text = "".join(self.decoder[int(token)] for token in tokens)
        return bytearray([self.byte_decoder[c] for c in text]).decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts: str | list[str], context_length: int = DEFAULT_CONTEXT_LENGTH,
                 truncate: bool = False):
        """``clip.tokenize``: a LongTensor [N, context_length]; a too-long text raises OpenAI's RuntimeError."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        all_tokens = [[self.sot_token_id] + self.encode(text) + [self.eot_token_id] for text in texts]
        result = torch.zeros(len(all_tokens), context_length, dtype=torch.long)
        for i, tokens in enumerate(all_tokens):
            if len(tokens) > context_length:
                if truncate:
                    tokens = tokens[:context_length]
                    tokens[-1] = self.eot_token_id
                else:
                    raise RuntimeError(f"Input {texts[i]} is too long for context length {context_length}")
            result[i, :len(tokens)] = torch.tensor(tokens)
        return result

    def __call__(self, texts: str | list[str], context_length: int | None = None):
        """open_clip's tokenizer call: pad to the context, truncate silently (last token EOT)."""
        return self.tokenize(texts, context_length or self.context_length, truncate=True)


@cache
def shared() -> OpenAITokenizer:
    """One process-wide instance (reading the merges file takes ~0.1 s)."""
    return OpenAITokenizer()
