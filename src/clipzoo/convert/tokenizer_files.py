"""OpenAI CLIP's tokenizer as transformers' ``CLIPTokenizer``, built offline from the BPE file open_clip ships.

OpenAI's byte-level BPE: the 256 byte symbols, the same with ``</w>``, the 48894 merges of
``bpe_simple_vocab_16e6.txt.gz``, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407) — the
49408 ids of open_clip's ``SimpleTokenizer`` and of the hub's ``openai/clip-vit-*`` ``vocab.json``.
"""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

from ..constants import OPENAI_VOCAB_SIZE

SOT, EOT = "<|startoftext|>", "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges): the contents of OpenAI CLIP's ``vocab.json`` and ``merges.txt``."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path) as f:
        lines = f.read().decode("utf-8").split("\n")
    n_merges = OPENAI_VOCAB_SIZE - 2 * 256 - 2  # 48894: all ids but the byte symbols (plain and </w>), SOT, EOT
    merges = [tuple(m.split()) for m in lines[1:1 + n_merges]]
    units = list(bytes_to_unicode().values())
    tokens = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(context_length: int = 77):
    """A ``CLIPTokenizer`` whose ids equal open_clip's ``SimpleTokenizer`` ones up to ``<|endoftext|>``.

    It pads with ``<|endoftext|>`` as OpenAI's hub folders do (open_clip pads with 0; the causal text
    tower pools at the first end token, so the padding changes no feature). Not ``pad_token="!"`` as some
    LAION conversions have: a special ``!`` is then matched inside text ("hi!" loses its ``!</w>``).
    Differences that remain are HF's, not the conversion's: HF's tokenizer does not run ``ftfy`` (curly
    quotes stay curly, mojibake is not repaired).
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    vocab, merges = dict(vocab), list(merges)  # the cached copy stays untouched
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length, pad_token=EOT)
