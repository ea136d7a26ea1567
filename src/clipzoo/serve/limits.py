"""The service's limits and defaults, and the checks that keep their 400 messages.

The request models (:mod:`clipzoo.serve.schemas`) bound counts and sizes with these constants, so
FastAPI refuses what is out of range with a 422. What a model cannot say — an empty or too long text
inside a list, a prompt template without its ``{}`` — is checked here and answered with a 400
(:class:`~clipzoo.errors.ClipzooError`), through the dependencies in :mod:`clipzoo.serve.deps`.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..constants import DEFAULT_MAX_BODY_BYTES, DEFAULT_TEMPLATE, DEFAULT_THUMB_SIZE  # noqa: F401 (re-exported)
from ..errors import ClipzooError

MAX_K = 1000
"""Most search results one request may ask for."""
MAX_TEXT_CHARS = 2000
"""Longest text (query, label, text to rank or embed), in characters."""
MAX_LABELS = 2000
"""Most labels one /classify request may send."""
MAX_EMBED_TEXTS = 256
MAX_EMBED_IMAGES = 32
MAX_RANK_TEXTS = 1000
MAX_TEMPLATE_CHARS = 500

DEFAULT_MAX_PENDING = 256
"""Model jobs allowed to wait at once; more are shed with 503."""
MIN_BODY_BYTES = 1024


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def check_texts(texts: Sequence[str], field: str) -> list[str]:
    """``texts`` as a list, each non-blank and at most :data:`MAX_TEXT_CHARS` long (else 400)."""
    for i, t in enumerate(texts):
        if not t.strip():
            raise ClipzooError(f"{field}[{i}] is empty; send non-empty strings")
        if len(t) > MAX_TEXT_CHARS:
            raise ClipzooError(f"{field}[{i}] is {len(t)} characters, more than {MAX_TEXT_CHARS}")
    return list(texts)


def check_template(template: str) -> str:
    """``template`` if it is a format string with one ``{}`` for the label (else 400)."""
    try:
        template.format("label")
    except (KeyError, IndexError, ValueError) as exc:
        raise ClipzooError(f"template {template!r} is not a format string with one '{{}}' "
                           f"({one_line(exc)})") from None
    if "{}" not in template:
        raise ClipzooError(f"template {template!r} has no '{{}}' for the label")
    return template
