"""The service's limits and defaults, and the checks that keep their 400 messages.

The request models (:mod:`clipzoo.serve.schemas`) bound counts and sizes with these constants, so
FastAPI refuses what is out of range with a 422. What a model cannot say — an empty or too long text
inside a list — is checked here and answered with a 400 (:class:`~clipzoo.errors.ClipzooError`), through
the dependencies in :mod:`clipzoo.serve.deps`. A prompt template is data: only ``{}`` / ``{label}`` are
substituted, literally; any other brace, and a template over :data:`MAX_TEMPLATE_CHARS`, is a 422.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..constants import (  # noqa: F401 (re-exported)
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_LIMIT_CONCURRENCY,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_TEMPLATE,
    DEFAULT_THUMB_SIZE,
)
from ..errors import ClipzooError
from ..templates import TemplateError, repeated_label, require_placeholder

MAX_K = 1000
"""Most search results one request may ask for."""
MAX_TEXT_CHARS = 2000
"""Longest text (query, text to rank or embed), in characters."""
MAX_LABELS = 1000
"""Most labels one /classify request may send."""
MAX_LABEL_CHARS = 200
"""Longest label a /classify request may send, in characters."""
MAX_EMBED_TEXTS = 256
MAX_EMBED_IMAGES = 32
MAX_RANK_TEXTS = 1000
MAX_TEMPLATE_CHARS = 256
MAX_PARTITION_CHARS = 1024
"""Longest partition name a request may send (a folder's name, or a label); its 404 repeats it."""
MAX_ITEM_ID = 2**63 - 1
"""Largest id an index can hold (SQLite's integer); larger ids in a body are a 422."""
DECODE_SLOTS = 2
"""Uploads decoded at full size at once, in the whole server (the rest wait): bounds decoded memory."""
TRIM_AFTER_PIXELS = 8_000_000
"""A request that decoded at least this many pixels hands the freed memory back to the system after."""

DEFAULT_MAX_PENDING = 256
"""Model jobs allowed to wait at once; more are shed with 503."""
MIN_BODY_BYTES = 1024

# --- connections (issue 17 §2; :mod:`clipzoo.serve.connections`)
CONNECTION_MARGIN = 64
"""Connections over the concurrency limit that are still answered (503); beyond, they are closed at once."""
RESERVED_FDS = 256
"""File descriptors kept for index and model files, logs and the listening socket."""
DEFAULT_BACKLOG = 2048
"""Connections the kernel queues before the server accepts them."""
MAX_INCOMPLETE_REQUEST_BYTES = 16 * 1024
"""Longest request line plus headers (h11's max incomplete event size); longer is a 400."""
LOG_REPEAT_BURST = 5
LOG_REPEAT_WINDOW_S = 60.0
"""The same log line is written at most LOG_REPEAT_BURST times per LOG_REPEAT_WINDOW_S seconds."""
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Host header values always accepted (with the address the server is reached on)."""
REFUSED_BODY_TYPES = ("text/plain", "application/x-www-form-urlencoded")
"""Body types a cross-site HTML form can send without a CORS preflight: 415 on every body route."""


def check_texts(texts: Sequence[str], field: str) -> list[str]:
    """``texts`` as a list, each non-blank and at most :data:`MAX_TEXT_CHARS` long (else 400)."""
    for i, t in enumerate(texts):
        if not t.strip():
            raise ClipzooError(f"{field}[{i}] is empty; send non-empty strings")
        if len(t) > MAX_TEXT_CHARS:
            raise ClipzooError(f"{field}[{i}] is {len(t)} characters, more than {MAX_TEXT_CHARS}")
    return list(texts)


def check_template(template: str) -> str:
    """``template`` if it is plain text with a ``{}`` (or ``{label}``) for the label and no other brace
    (else a 422: :class:`~clipzoo.templates.TemplateError`); it is never run as a format string."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"template is {len(template)} characters, more than the limit of {MAX_TEMPLATE_CHARS}")
    return require_placeholder(template)


def check_labels(labels: Sequence[str]) -> list[str]:
    """``labels`` checked as texts (:func:`check_texts`) and each given once — also once in Unicode NFC, where two
    spellings of one word would split its probability — as a vocabulary file must be (else 400)."""
    labels = check_texts(labels, "labels")
    repeated = repeated_label(labels)
    if repeated:
        raise ClipzooError(f"labels lists {repeated}; keep each label once")
    return labels


def query_vector(values: Sequence[float], dim: int, field: str, model_name: str) -> np.ndarray:
    """A query vector sent as numbers -> float32 of length 1, normalised in float64 first: finite numbers of any
    scale (1e308, 1e-46) keep their direction, where a float32 cast overflowed to infinity or underflowed to 0.
    A 400 that says what is wrong: the wrong length, a value that is not finite, all zeros."""
    if len(values) != dim:
        raise ClipzooError(f"{field} has {len(values)} values; this index's model ({model_name}) makes {dim}")
    vector = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        raise ClipzooError(f"{field} holds a value that is not a finite number (NaN or infinity)")
    scale = float(np.abs(vector).max())
    if scale == 0.0:
        raise ClipzooError(f"{field} is all zeros: it has no direction to search by")
    vector = vector / scale  # the largest value is ±1: the norm can neither overflow nor underflow
    return (vector / np.linalg.norm(vector)).astype(np.float32)
