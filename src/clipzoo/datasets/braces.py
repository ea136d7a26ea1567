"""Counting the names a brace pattern (``shard-{000000..001023}.tar``) expands to, without listing them, in the
grammar of the ``braceexpand`` package (which lists a whole range in memory before yielding its first name)."""
from __future__ import annotations

import re

__all__ = ["brace_count"]

_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")


def brace_count(pattern: str) -> int:
    """How many names ``braceexpand(pattern)`` yields (unbalanced braces count 1: braceexpand then says why)."""
    total, start, depth, pos = 1, 0, 0, 0
    while pos < len(pattern):
        char = pattern[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "{":
            start = pos if depth == 0 else start
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                return 1
            if depth == 0:
                total *= _expression_count(pattern[start + 1:pos])
        pos += 1
    return total if depth == 0 else 1


def _expression_count(expr: str) -> int:
    if match := _INT_RANGE.match(expr):
        first, last, step = int(match[1]), int(match[2]), (int(match[3]) or 1) if match[3] else 1
        return len(range(first, last + 1, step) if first < last else range(first, last - 1, -step))
    if match := _CHAR_RANGE.match(expr):
        from braceexpand import make_char_range

        return len(make_char_range(*match.groups()))
    parts = _top_level_split(expr)
    if parts is None:  # no comma outside inner braces: "{expr}" stays, its inner braces expand
        return brace_count(expr)
    return sum(brace_count(p) for p in parts)


def _top_level_split(seq: str) -> "list[str] | None":
    """``seq`` cut at its commas outside inner braces (None: no such comma, or unbalanced braces)."""
    parts, start, depth, pos = [], 0, 0, 0
    while pos < len(seq):
        char = seq[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(seq[start:pos])
            start = pos + 1
        pos += 1
    if depth != 0 or not parts:
        return None
    return [*parts, seq[start:]]
