"""JSON text that is always valid UTF-8, whatever names it holds.

A file name that is not UTF-8 reaches Python as a string with lone surrogates (``os.fsdecode``: byte 0xE9 ->
``"\\udce9"``); ``json.dumps(..., ensure_ascii=False)`` keeps them as they are, and encoding the text then fails
(a traceback, after the ``.npy`` beside it was written) or prints bytes no JSON reader takes. Here each lone
surrogate is written as its ``\\uXXXX`` escape: readable names stay readable, and the odd one reads back as the
same string (``os.fsencode`` gives the file's bytes again).
"""
from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["LONE_SURROGATE", "json_text"]

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone UTF-16 surrogate: what Python makes of bytes that are not UTF-8 (file names, command-line arguments)."""


def json_text(obj: Any, **dumps_options: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False, **dumps_options)`` with every lone surrogate escaped."""
    text = json.dumps(obj, ensure_ascii=False, **dumps_options)
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
