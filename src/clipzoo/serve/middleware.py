"""The service's ASGI middleware: the request body limit (413) and the request metrics."""
from __future__ import annotations

import json
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServiceMetrics


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


async def send_json(send: Send, status: int, detail: str) -> None:
    """Answer ``{"detail": detail}`` with ``status`` straight from the middleware (and close the connection)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
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
            self.metrics.requests.inc(method=scope.get("method", ""), route=route, status=str(status[0]))
            self.metrics.latency.observe(time.perf_counter() - t0, route=route)
