"""``clip.simple_tokenizer`` of the openai ``clip`` drop-in (:func:`clipzoo.compat.clip.install`): OpenAI's BPE
tokenizer as openai's module names it (``SimpleTokenizer(bpe_path=default_bpe())``, ``encode`` / ``decode``)."""
from __future__ import annotations

from ..tokenizers import OpenAITokenizer as SimpleTokenizer
from ..tokenizers import basic_clean, bytes_to_unicode, default_bpe, get_pairs, whitespace_clean

__all__ = ["SimpleTokenizer", "basic_clean", "bytes_to_unicode", "default_bpe", "get_pairs", "whitespace_clean"]
