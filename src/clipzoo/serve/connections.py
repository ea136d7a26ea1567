"""Connections the server holds, bounded: what 21,000 half-open requests taught (issue 17 §2).

- **A concurrency cap** (:attr:`ConnectionLimits.limit_concurrency`): uvicorn answers 503 to requests
  beyond it, and :func:`guarded_protocol`'s protocol closes a *connection* at once when the open ones
  exceed it by :data:`~clipzoo.serve.limits.CONNECTION_MARGIN`, so file descriptors stay bounded;
  the listen ``backlog`` bounds what waits to be accepted.
- **A header timeout**: a connection that has not sent a complete request line and headers within
  ``header_timeout`` seconds of connecting (or of its first byte after a keep-alive pause) is closed —
  uvicorn alone keeps such a half-open connection forever. Idle keep-alive connections close after
  ``keep_alive_timeout`` (uvicorn's own timer).
- **A body timeout**: a request whose body is not complete ``body_timeout`` seconds after its headers has its
  connection closed — a body trickled a byte every few seconds (or never sent after a ``Content-Length``) held a
  connection slot for as long as the client liked.
- **A cap on an incomplete request** (``max_incomplete_bytes``, h11's max incomplete event size): a
  request line plus headers longer than that is a 400.
- **Repeated log lines collapse** (:class:`RepeatFilter`): the same line at most ``burst`` times per
  ``window`` seconds; the next one that passes says how many were left out.
- **No token in the log** (:class:`TokenRedactor`): a ``token=`` query parameter (a page opened as ``/?token=…``)
  is written ``token=[redacted]`` in the access log.
- :func:`raise_nofile_limit`: the process's soft RLIMIT_NOFILE raised to its hard limit (the cap is
  lowered to fit what is left, with one line saying so).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import ClipzooError
from .limits import (
    CONNECTION_MARGIN,
    DEFAULT_BACKLOG,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_LIMIT_CONCURRENCY,
    LOG_REPEAT_BURST,
    LOG_REPEAT_WINDOW_S,
    MAX_INCOMPLETE_REQUEST_BYTES,
    RESERVED_FDS,
)

try:
    import resource
except ImportError:  # Windows: no RLIMIT_NOFILE to raise
    resource = None  # type: ignore[assignment]

SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn")
log = logging.getLogger("clipzoo.serve")


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections and for how long the server holds them (defaults in :mod:`.limits`)."""

    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY
    backlog: int = DEFAULT_BACKLOG
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    max_incomplete_bytes: int = MAX_INCOMPLETE_REQUEST_BYTES
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("limit_concurrency", "backlog", "max_incomplete_bytes"):
            if int(getattr(self, name)) < 1:
                raise ClipzooError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout", "keep_alive_timeout", "body_timeout"):
            if not float(getattr(self, name)) > 0:
                raise ClipzooError(f"{name} must be a positive number of seconds, got {getattr(self, name)}")

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """The part of ``uvicorn.Config(...)`` these limits set."""
        return {"limit_concurrency": self.limit_concurrency, "backlog": self.backlog,
                "timeout_keep_alive": self.keep_alive_timeout,
                "h11_max_incomplete_event_size": self.max_incomplete_bytes,
                "http": guarded_protocol(self.header_timeout, self.body_timeout,
                                         self.limit_concurrency + CONNECTION_MARGIN)}


def raise_nofile_limit(limits: ConnectionLimits) -> ConnectionLimits:
    """Raise the soft RLIMIT_NOFILE to the hard limit; lower ``limit_concurrency`` to fit it if needed."""
    if resource is None:
        return limits
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return limits
    room = int(soft) - RESERVED_FDS - CONNECTION_MARGIN
    if limits.limit_concurrency > room > 0:
        log.warning("the open-file limit is %d: serving at most %d connections at once (not %d)",
                    soft, room, limits.limit_concurrency)
        return dataclasses.replace(limits, limit_concurrency=room)
    return limits


class RepeatFilter(logging.Filter):
    """Lets the same log line (logger, level, formatted text) through at most ``burst`` times per
    ``window`` seconds; the first one let through after that says how many like it were left out.
    Remembers at most ``max_keys`` distinct lines (least recently seen forgotten first)."""

    def __init__(self, burst: int = LOG_REPEAT_BURST, window: float = LOG_REPEAT_WINDOW_S, max_keys: int = 1024):
        super().__init__("clipzoo-repeats")
        self.burst, self.window, self.max_keys = int(burst), float(window), int(max_keys)
        self._seen: "OrderedDict[tuple, list]" = OrderedDict()  # key -> [window start, passed, suppressed]
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every line seen (a fresh window for each)."""
        with self._lock:
            self._seen.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: let logging report it
            return True
        key = (record.name, record.levelno, text)
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[0] >= self.window:
                suppressed = state[2] if state is not None else 0
                self._seen[key] = [now, 1, 0]
                self._seen.move_to_end(key)
                while len(self._seen) > self.max_keys:
                    self._seen.popitem(last=False)
                if suppressed:
                    record.msg, record.args = f"{text} (and {suppressed} more like it in {self.window:g} s)", None
                return True
            self._seen.move_to_end(key)
            if state[1] < self.burst:
                state[1] += 1
                return True
            state[2] += 1
            if record.exc_info:  # a suppressed traceback is not kept alive either
                record.exc_info = None
            return False


class TokenRedactor(logging.Filter):
    """Writes the value of a ``token=`` query parameter as ``[redacted]`` in the server's log lines (uvicorn's
    access line holds the request's path with its query string)."""

    PATTERN = re.compile(r"([?&;]token=)[^&#;\s\"]*", re.IGNORECASE)

    def __init__(self) -> None:
        super().__init__("clipzoo-token-redactor")

    def redact(self, value: Any) -> Any:
        return self.PATTERN.sub(r"\1[redacted]", value) if isinstance(value, str) and "=" in value else value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) for a in record.args)
        return True


def install_token_redactor() -> TokenRedactor:
    """Put one :class:`TokenRedactor` first on the server's loggers (before the repeat filter reads the line);
    once: later calls return the same one."""
    for f in logging.getLogger(SERVER_LOGGERS[0]).filters:
        if isinstance(f, TokenRedactor):
            return f
    redactor = TokenRedactor()
    for name in SERVER_LOGGERS:
        logging.getLogger(name).filters.insert(0, redactor)
    return redactor


def install_repeat_filter(burst: int = LOG_REPEAT_BURST, window: float = LOG_REPEAT_WINDOW_S) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on the server's loggers (once; later calls return the same one)."""
    for name in SERVER_LOGGERS:
        for f in logging.getLogger(name).filters:
            if isinstance(f, RepeatFilter):
                return f
    repeat = RepeatFilter(burst, window)
    for name in SERVER_LOGGERS:
        logging.getLogger(name).addFilter(repeat)
    return repeat


_PROTOCOLS: dict[tuple[float, float, int], type] = {}


def guarded_protocol(header_timeout: float, body_timeout: float, max_connections: int) -> type:
    """uvicorn's h11 protocol with header and body timeouts and a hard cap on open connections (a class)."""
    key = (float(header_timeout), float(body_timeout), int(max_connections))
    if key not in _PROTOCOLS:
        _PROTOCOLS[key] = _make_protocol(*key)
    return _PROTOCOLS[key]


def _make_protocol(header_timeout: float, body_timeout: float, max_connections: int) -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        """Closes a connection over the cap at once, and one whose request headers or body are late."""

        header_timer: Any = None
        body_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.logger.warning("refused a connection: %d are open, the limit is %d",
                                    len(self.connections), max_connections)
                transport.abort()
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            if self.header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self.header_timer is not None:
                self.header_timer.cancel()  # the request's headers are in
                self.header_timer = None
            if self.conn.their_state is h11.SEND_BODY:
                if self.body_timer is None:  # the headers are in, the body is not
                    self.body_timer = self.loop.call_later(body_timeout, self._body_late)
            elif self.body_timer is not None:
                self.body_timer.cancel()  # the body is in
                self.body_timer = None

        def connection_lost(self, exc: "Exception | None") -> None:
            for timer in (self.header_timer, self.body_timer):
                if timer is not None:
                    timer.cancel()
            self.header_timer = self.body_timer = None
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self.header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_late(self) -> None:
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.info("closed a connection that sent no complete request headers within %g s",
                                 header_timeout)
                self.transport.close()

        def _body_late(self) -> None:
            self.body_timer = None
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                self.logger.info("closed a connection whose request body was not complete within %g s of its "
                                 "headers", body_timeout)
                self.transport.close()

    return GuardedH11Protocol
