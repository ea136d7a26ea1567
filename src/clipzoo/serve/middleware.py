"""The service's ASGI middleware: the request body limit (413), the request metrics, the Host allow-list
(400), the body types a cross-site form could send (415), the bearer token of a request with a body (401
before the body is read) and the headers every response carries (:class:`SecurityHeaders`)."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ClipzooError
from .limits import LOCAL_HOSTS, REFUSED_BODY_TYPES
from .metrics import ServiceMetrics

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HTTP_METHODS = BODY_METHODS | {"GET", "HEAD", "OPTIONS"}
"""The methods the metrics count by name; any other is counted as "other" (a name per request would grow the
metrics without bound)."""
MISSING_TOKEN = ("missing bearer token: send 'Authorization: Bearer <token>'", "Bearer")
WRONG_TOKEN = ("wrong bearer token", 'Bearer error="invalid_token"')
TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
"""What a token may hold: visible ASCII (letters, digits, punctuation; no space). Browsers send only Latin-1 in a
header, curl sends UTF-8, and a space or control character is cut or refused on the way: only these characters
reach the server the same from every client. The page (static/app.js) holds the same rule."""
HTML_CSP = "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
"""The Content-Security-Policy of an HTML answer that sets none itself (/docs, /redoc): no other site may frame it.
The page (``/``) sets its own, stricter one (``routers/service.py``)."""


def header(scope: Scope, name: bytes) -> "str | None":
    """The first value of the request header ``name`` (lower-case bytes, as ASGI gives them), or None."""
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), None)


def check_token(token: "str | None") -> "str | None":
    """``token`` (None for none), or a :class:`~clipzoo.errors.ClipzooError` when it holds a character no HTTP
    client sends as it is (:data:`TOKEN_CHARS`): such a server would start and then refuse every client."""
    if not token:
        return None
    bad = next((c for c in token if not TOKEN_CHARS.fullmatch(c)), None)
    if bad is not None:
        raise ClipzooError(f"the token holds {bad!r} (U+{ord(bad):04X}), which an HTTP client cannot send as it is: "
                           "use visible ASCII only (letters, digits, punctuation; no spaces), e.g. "
                           "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    return token


def bearer_problem(authorization: "str | None", token: str) -> "tuple[str, str] | None":
    """None when ``authorization`` (the header's value, decoded as Latin-1 as ASGI servers do) is ``Bearer
    <token>``; else the 401's detail and its ``WWW-Authenticate`` value. The header's bytes are compared with the
    token's in constant time (their SHA-256, so the time says nothing of the token's length either). The one check
    of the routes' dependency and of :class:`TokenGuard`."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return MISSING_TOKEN
    sent = hashlib.sha256(given.encode("latin-1", "replace")).digest()
    if not hmac.compare_digest(sent, hashlib.sha256(token.encode()).digest()):
        return WRONG_TOKEN
    return None


class BodyTooLarge(StarletteHTTPException):
    """413: a request body over the server's limit."""

    def __init__(self, limit: int, seen: "int | None" = None):
        size = f" ({seen:,} bytes)" if seen is not None else ""
        super().__init__(413, f"request body too large{size}: the limit is {limit:,} bytes "
                              f"({limit / 2**20:.1f} MiB); send a smaller image (or start the server with "
                              "a larger --max-body-mb)")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: refused up front on ``Content-Length``, and counted as it
    streams (chunked uploads, or a client that lies about its length)."""

    def __init__(self, app: ASGIApp, limit: int, on_reject: Callable[[], None] = lambda: None):
        self.app, self.limit, self.on_reject = app, int(limit), on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_json(send, 400, "invalid Content-Length header")
        if declared is not None and declared > self.limit:
            self.on_reject()
            return await send_json(send, 413, BodyTooLarge(self.limit, declared).detail)
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    self.on_reject()
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no handler turned it into a response
            if started:
                raise
            await send_json(send, 413, exc.detail)


async def send_json(send: Send, status: int, detail: str, headers: "tuple[tuple[bytes, bytes], ...]" = ()) -> None:
    """Answer ``{"detail": detail}`` with ``status`` straight from the middleware (and close the connection)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts requests by method, route template and status; times them; tracks requests in flight."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        self.metrics.in_flight.add(1)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.add(-1)
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = "/static" if scope.get("path", "").startswith("/static/") else "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.inc(method=method if method in HTTP_METHODS else "other", route=route,
                                      status=str(status[0]))
            self.metrics.latency.observe(time.perf_counter() - t0, route=route)


def host_name(value: str) -> str:
    """A Host header's name without its port, lower-case (``[::1]:80`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuard:
    """400 unless the request's Host is allowed: the address the server was reached on (the bound host),
    the localhost names, and ``allowed`` (exact names, ``*.example.org`` for its subdomains, ``*`` for any).
    Stops DNS rebinding: a page on another name cannot talk to a server bound to localhost."""

    def __init__(self, app: ASGIApp, allowed: "tuple[str, ...]" = (), on_reject: Callable[[], None] = lambda: None):
        self.app, self.on_reject = app, on_reject
        names = [host_name(h) for h in allowed if h.strip()]
        self.any = "*" in names
        self.exact = frozenset(LOCAL_HOSTS) | {n for n in names if not n.startswith("*.")}
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))

    def allows(self, host: str, scope: Scope) -> bool:
        if self.any:
            return True
        name = host_name(host)
        server = scope.get("server") or ("",)
        return (name in self.exact or name == str(server[0]).lower()
                or (bool(self.suffixes) and name.endswith(self.suffixes)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = header(scope, b"host")
        if host is not None and self.allows(host, scope):
            return await self.app(scope, receive, send)
        self.on_reject()
        shown = "no Host header" if host is None else f"Host {host[:100]!r} is not allowed"
        name = "NAME" if host is None else (host_name(host)[:100] or "NAME")
        await send_json(send, 400, f"{shown}: this server answers only to its own address and localhost; "
                                   f"start it with --allowed-host {name} to accept that name")


class ContentTypeGuard:
    """415 for a request body sent as ``text/plain`` or ``application/x-www-form-urlencoded``: what a
    cross-site HTML form (or a no-preflight fetch) can post. The API takes JSON, and multipart forms for
    image files; a body with no Content-Type is read as JSON. ``plain_text_paths``: read-only routes that
    take text/plain as JSON because a client we speak for sends it (clip-retrieval's front end posts its
    JSON as text/plain); without CORS a cross-site page cannot read their answers."""

    def __init__(self, app: ASGIApp, on_reject: Callable[[], None] = lambda: None,
                 plain_text_paths: "frozenset[str]" = frozenset()):
        self.app, self.on_reject, self.plain_text_paths = app, on_reject, frozenset(plain_text_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") in BODY_METHODS:
            media = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
            plain_json = media == "text/plain" and scope.get("path") in self.plain_text_paths
            if media in REFUSED_BODY_TYPES and not plain_json:
                self.on_reject()
                return await send_json(send, 415, (
                    f"{scope['method']} {scope.get('path', '')} does not take {media}: send JSON with "
                    "'Content-Type: application/json' (or a multipart/form-data form with the image file)"))
        await self.app(scope, receive, send)


class TokenGuard:
    """With a ``token``, a request with a body (POST, PUT, PATCH, DELETE) that does not carry it gets its 401 here,
    before its body is read, and its connection is closed. The routes' dependency checks the token only after
    FastAPI has read the body: a client without the token could hold a connection open by trickling a body
    (every body route needs the token when the server has one)."""

    def __init__(self, app: ASGIApp, token: "str | None", on_reject: Callable[[], None] = lambda: None):
        self.app, self.token, self.on_reject = app, token, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is not None and scope["type"] == "http" and scope.get("method") in BODY_METHODS:
            problem = bearer_problem(header(scope, b"authorization"), self.token)
            if problem is not None:
                self.on_reject()
                return await send_json(send, 401, problem[0], ((b"www-authenticate", problem[1].encode()),))
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Every answer says ``X-Content-Type-Options: nosniff`` and ``X-Frame-Options: DENY``; an HTML answer without a
    Content-Security-Policy of its own gets :data:`HTML_CSP` (``frame-ancestors 'none'``): the page, /docs and
    /redoc cannot be framed by another site (clickjacking). A header a route set itself is kept."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("Content-Security-Policy", HTML_CSP)
            await send(message)

        await self.app(scope, receive, send_with_headers)
