"""Error answers: every error body is ``{"detail": "<one line>"}`` and untrusted input never makes a 500.

A :class:`~clipzoo.errors.ClipzooError` is a 400 (a :class:`~clipzoo.errors.NotFoundError` a 404, a
:class:`~clipzoo.comparator.TemplateError` a 422, an image over the pixel limits a 413) with the server's
folders scrubbed from its message; a body FastAPI finds invalid is a 422 whose ``detail`` sums up
the first errors (``errors`` lists them); HTTP errors keep their status and headers; a client that
disconnects mid-body is a 499 with no traceback logged; anything else is a 500 that names only the
exception's type, its traceback written to the server log once (:class:`UnexpectedErrors`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ClipzooError, NotFoundError, one_line
from ..image_bytes import ImageTooLargeError
from ..templates import TemplateError
from .middleware import send_json

log = logging.getLogger("clipzoo.serve")
CLIENT_CLOSED = 499


def install_handlers(app: FastAPI) -> None:
    """Register the service's exception handlers on ``app`` (whose ``state.service`` is set)."""
    app.add_exception_handler(ClipzooError, clipzoo_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)


async def clipzoo_error(request: Request, exc: ClipzooError) -> JSONResponse:
    status = 404 if isinstance(exc, NotFoundError) else 422 if isinstance(exc, TemplateError) else \
        413 if isinstance(exc, ImageTooLargeError) else 400
    return JSONResponse({"detail": request.app.state.service.scrub(one_line(exc))}, status_code=status)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    request.app.state.service.metrics.rejected.inc(reason="invalid")
    errors = list(exc.errors())
    return JSONResponse({"detail": validation_detail(errors), "errors": clean_errors(errors)}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": exc.detail if isinstance(exc.detail, str) else str(exc.detail)},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """The client closed the connection before sending its whole body: no one to answer, not a server
    error — one debug line, no traceback; 499 (nginx's "client closed request") in the metrics."""
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "the client closed the connection before the request was complete"},
                        status_code=CLIENT_CLOSED)


class UnexpectedErrors:
    """An exception no handler answers -> 500 ``internal error (<type>); see the server log``, its traceback
    logged once. (A handler registered for ``Exception`` answers too, but Starlette then raises the exception
    again, and uvicorn logs a second traceback.) Re-raised when the answer has already started."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - what no handler answered
            if started:
                raise
            log.exception("unexpected error serving %s %s", scope.get("method"), scope.get("path"))
            await send_json(send, 500, f"internal error ({type(exc).__name__}); see the server log")


def _location(err: dict) -> list:
    """Where an error is, inside the body (FastAPI's leading ``"body"`` dropped)."""
    loc = list(err.get("loc", ()))
    return loc[1:] if loc[:1] == ["body"] else loc


def validation_detail(errors: Sequence[dict]) -> str:
    """``invalid request: field: message; …`` for the first five errors."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in _location(err) if x not in ("body",))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def clean_errors(errors: Sequence[dict]) -> list[dict]:
    """The first 20 errors as plain ``loc``, ``msg``, ``type`` (no input echoed back)."""
    return [{"loc": _location(e), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors[:20]]
