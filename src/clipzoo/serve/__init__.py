"""The HTTP service and web page: ``create_app(index)`` -> a FastAPI app; ``clipzoo serve INDEX`` runs it.

:func:`run` serves an app in the foreground (what the CLI does); :func:`running` serves it on a
background thread for notebooks and tests and yields its base URL. Callers look ``run`` up on this
package when they call it (``serving.run(app)``), so tests can replace it.

Without FastAPI installed the package still imports, and :func:`create_app` raises
:class:`~clipzoo.errors.MissingExtraError` naming what to install.
"""
from __future__ import annotations

from typing import Any

from ..extras import missing
from .server import DEFAULT_HOST, DEFAULT_PORT, run, running

try:
    from .app import create_app
except ModuleNotFoundError as exc:  # FastAPI (or one of its parts) is not installed
    _ABSENT = (exc.name or "").split(".")[0]
    if _ABSENT not in ("fastapi", "starlette", "pydantic", "anyio", "multipart"):
        raise

    def create_app(*args: Any, **kwargs: Any):
        """Unavailable: FastAPI is not installed (raises :class:`~clipzoo.errors.MissingExtraError`)."""
        raise missing(_ABSENT, "the HTTP service")

__all__ = ["create_app", "run", "running", "DEFAULT_HOST", "DEFAULT_PORT"]
