"""The HTTP service and web page: ``create_app(index)`` -> a FastAPI app; ``clipzoo serve INDEX`` runs it.

:func:`run` serves an app in the foreground (what the CLI does); :func:`running` serves it on a
background thread for notebooks and tests and yields its base URL.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["create_app", "run", "running"]


def create_app(*args: Any, **kwargs: Any):
    """See :func:`clipzoo.serve.app.create_app` (imported lazily: FastAPI loads only when serving)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def run(app: Any, host: str = "127.0.0.1", port: int = 5020, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@contextlib.contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
            timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on a background thread; yields ``http://host:port`` (port 0: a free one) and stops
    the server on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=2)
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
