"""Serving an app with uvicorn: :func:`run` in the foreground (what the CLI does), :func:`running` on a
background thread for notebooks and tests.

Both serve with :class:`~clipzoo.serve.connections.ConnectionLimits` (a concurrency cap, header and
keep-alive timeouts, a cap on an incomplete request), collapse repeated log lines
(:class:`~clipzoo.serve.connections.RepeatFilter`) and write no ``token=`` value in the access log
(:class:`~clipzoo.serve.connections.TokenRedactor`)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..constants import SERVE_HOST, SERVE_PORT
from ..extras import require
from .connections import ConnectionLimits, install_repeat_filter, install_token_redactor, raise_nofile_limit

DEFAULT_HOST = SERVE_HOST
DEFAULT_PORT = SERVE_PORT


def run(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info",
        limits: "ConnectionLimits | None" = None) -> None:
    """Serve ``app`` with uvicorn until interrupted (Ctrl-C), within ``limits`` (default: :mod:`.limits`)."""
    uvicorn = require("uvicorn", "serving over HTTP")
    limits = raise_nofile_limit(limits or ConnectionLimits())
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                            **limits.uvicorn_kwargs())
    install_token_redactor()
    install_repeat_filter()
    uvicorn.Server(config).run()


@contextlib.contextmanager
def running(app: Any, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning",
            timeout: float = 30.0, limits: "ConnectionLimits | None" = None) -> Iterator[str]:
    """Serve ``app`` on a background thread; yields ``http://host:port`` (port 0: a free one) and stops
    the server on exit."""
    uvicorn = require("uvicorn", "serving over HTTP")
    limits = raise_nofile_limit(limits or ConnectionLimits())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=2, **limits.uvicorn_kwargs())
    install_token_redactor()
    install_repeat_filter()
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
