"""Prompt templates are data, not format strings: ``"a photo of a {}."`` takes the label where ``{}``
(or ``{label}``, or CLIP_benchmark's ``{c}``) stands, substituted literally. Any other brace — a format
field, a format spec such as ``{:x>10000000}``, an escape ``{{`` — is a :class:`TemplateError` naming the
template, so a template from a request can never run ``str.format`` (no huge widths, no attribute
lookups). :func:`clipzoo.comparator.format_template` fills a template; this module is torch-free so the
CLI and the index can check templates without loading the model stack.

``escapes=True`` (what ``clipzoo eval`` passes for CLIP_benchmark's template files, which it fills with
``str.format(c=...)``) also takes ``{{`` and ``}}`` as a literal ``{`` and ``}``, as ``str.format`` does; every
other brace is still refused, and the substitution stays literal.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from .errors import ClipzooError, shown_text

__all__ = ["TEMPLATE_FIELD", "TemplateError", "fill_template", "template_parts"]

TEMPLATE_FIELD = re.compile(r"\{(?:label|c)?\}")
"""Where a prompt template takes the label: ``{}``, ``{label}`` or CLIP_benchmark's ``{c}``."""


class TemplateError(ClipzooError, ValueError):
    """A prompt template with a brace that is not a label placeholder (templates are data, not format strings)."""


_ESCAPED_TOKEN = re.compile(r"\{\{|\}\}|\{(?:label|c)?\}|[{}]")
"""With ``escapes``: an escaped brace, a label placeholder, or a lone brace (refused), scanned left to right as
``str.format`` scans them (``{{c}}`` is the literal ``{c}``)."""


def _brace_error(template: str, escapes: bool) -> TemplateError:
    return TemplateError(f"prompt template {shown_text(template, 80)} has a brace that is not a label placeholder; "
                         "templates are plain text with '{}' (or '{label}') where the label goes"
                         + (" and '{{' / '}}' for a literal brace" if escapes else ""))


def template_parts(template: str, escapes: bool = False) -> list[str]:
    """The literal pieces of ``template`` around its label placeholders; a :class:`TemplateError` naming
    the template as given when any other ``{`` or ``}`` is left (a format field, a format spec, an escape unless
    ``escapes``: then ``{{`` / ``}}`` are literal braces in the pieces)."""
    if not isinstance(template, str):
        raise TemplateError(f"prompt template must be a string, got {type(template).__name__}")
    if not escapes:
        parts = TEMPLATE_FIELD.split(template)
        if any("{" in part or "}" in part for part in parts):
            raise _brace_error(template, escapes)
        return parts
    parts, piece, pos = [], [], 0
    for token in _ESCAPED_TOKEN.finditer(template):
        piece.append(template[pos:token.start()])
        pos = token.end()
        text = token.group()
        if text in ("{", "}"):
            raise _brace_error(template, escapes)
        if text in ("{{", "}}"):
            piece.append(text[0])
        else:
            parts.append("".join(piece))
            piece = []
    parts.append("".join(piece) + template[pos:])
    return parts


def require_placeholder(template: str, escapes: bool = False) -> str:
    """``template`` when it is plain text with a ``{}`` (or ``{label}``) where the label goes and no other brace;
    a :class:`TemplateError` otherwise — without one every label gets the same prompt, and the same score. The
    one check of the library, the CLI and the service."""
    if len(template_parts(template, escapes)) < 2:
        raise TemplateError(f"prompt template {shown_text(template, 80)} has no '{{}}' where the label goes; "
                            "e.g. 'a photo of a {}.'")
    return template


def template_list(templates: Any, default: Sequence) -> list:
    """Templates as a list (``default`` when None or empty): one string is one template, not its characters; each
    string needs its placeholder (:func:`require_placeholder`); a callable is kept as it is."""
    items = [templates] if isinstance(templates, str) else list(templates or default)
    for t in items:
        if not callable(t):
            require_placeholder(t)
    return items


def fill_template(template: str, label: str, escapes: bool = False) -> str:
    """``template`` with each ``{}``, ``{label}`` or ``{c}`` replaced by ``label``, literally (with ``escapes``,
    ``{{`` and ``}}`` become ``{`` and ``}``, as ``str.format`` makes them)."""
    return str(label).join(template_parts(template, escapes))


def repeated_label(labels: Sequence[str]) -> str | None:
    """What to say of the first label ``labels`` lists twice — also twice in Unicode NFC, where two spellings of one
    word would split its probability — as ``"'cat' more than once"``; None when each is there once."""
    seen: dict[str, str] = {}
    for label in labels:
        key = unicodedata.normalize("NFC", label)
        if key in seen:
            first = seen[key]
            again = "" if first == label else f" (also as {label!r}: the same text in another Unicode form)"
            return f"{first!r} more than once{again}"
        seen[key] = label
    return None
