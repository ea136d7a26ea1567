"""Opening a Milvus: one ``MilvusClient`` per URI in a process, and the one-line errors when it cannot be opened.

A server URI (``http://HOST:19530``) is used as it is; a Milvus Lite database is a ``.db`` path (made absolute:
one client per database in a process). Milvus Lite allows **one process per database**: it holds an advisory lock
on ``FILE.db/LOCK`` while open, so a second process (a build or ``clipzoo search`` beside a running ``clipzoo
serve`` on the same index) cannot open it; :func:`connect` says so in one line instead of Milvus Lite's logged
traceback followed by pymilvus's "Open local milvus failed". A path that holds something else (a file, a folder
of other files) is named and left alone: it is never taken for a broken index.
"""
from __future__ import annotations

import logging
import os

try:
    import fcntl
except ImportError:  # Windows: the DataDirLockedError Milvus Lite logs is the answer there
    fcntl = None
from pathlib import Path
from typing import Any

import pymilvus

from ...errors import ClipzooError, one_line
from ...extras import require
from .base import StoreUnavailableError

__all__ = ["CLIENTS", "connect", "is_server", "resolved"]

CLIENTS: dict[str, Any] = {}
"""The open clients, by resolved URI: one per Milvus (and per Milvus Lite database) in a process."""


def is_server(uri: str) -> bool:
    return "://" in uri


def resolved(uri: str) -> str:
    """A server URI as it is; a Milvus Lite file as an absolute path (one client per file in a process)."""
    return uri if is_server(uri) else os.path.abspath(os.path.expanduser(uri))


def connect(uri: str) -> Any:
    """A MilvusClient for ``uri`` (one per URI in a process). One line naming the URI when it cannot be opened:
    unreachable, a Milvus Lite file another process holds (Milvus Lite allows one process per ``.db``: a running
    ``clipzoo serve``), or a path that holds no Milvus Lite database (:class:`StoreUnavailableError`); Milvus Lite's
    own logged traceback is kept off the terminal."""
    uri = resolved(uri)
    client = CLIENTS.get(uri)
    if client is not None:
        return client
    if not is_server(uri):
        require("milvus_lite", "Milvus Lite (--store milvus with a local .db file)")
        if not uri.endswith(".db"):
            raise ClipzooError(f"Milvus Lite database {uri!r} must be a .db file; pass --uri FILE.db, or "
                               "http://HOST:19530 for a Milvus server")
        if not Path(uri).parent.is_dir():
            raise ClipzooError(f"cannot open Milvus Lite database {uri!r}: its folder does not exist; pass --uri "
                               "FILE.db in an existing folder, or http://HOST:19530 for a Milvus server")
        _check_lite_path(uri)
    caught = _Caught()
    try:
        with caught:
            client = pymilvus.MilvusClient(uri=uri, timeout=10)
    except Exception as exc:  # noqa: BLE001 - pymilvus raises MilvusException / grpc errors for any failure
        if not is_server(uri) and (caught.locked or _lock_held(uri)):
            raise StoreUnavailableError(f"Milvus Lite database {uri!r} is open in another process (a running "
                                        "`clipzoo serve`?): Milvus Lite allows one process per .db file; stop that "
                                        "process, or use a Milvus server with --uri http://HOST:19530") from None
        first = one_line(caught.first or exc, 200)
        raise StoreUnavailableError(f"cannot reach Milvus at {uri!r} ({first}); start the server, or pass --uri "
                                    "FILE.db for embedded Milvus Lite") from None
    CLIENTS[uri] = client
    return client


def _check_lite_path(uri: str) -> None:
    """A Lite path that exists must be a Milvus Lite database: a folder (Milvus Lite keeps its data in one) that is
    empty or holds its ``LOCK`` / ``collections``; a file or another folder there is left alone and named."""
    path = Path(uri)
    if path.exists() and not path.is_dir():
        raise StoreUnavailableError(f"{uri!r} is a file, not a Milvus Lite database (Milvus Lite keeps its data in a "
                                    ".db folder); it was left as it is: pass --uri with another FILE.db")
    if path.is_dir() and any(path.iterdir()) and not ((path / "LOCK").exists() or (path / "collections").is_dir()):
        raise StoreUnavailableError(f"{uri!r} is a folder that holds no Milvus Lite database; it was left as it is: "
                                    "pass --uri with another FILE.db")


def _lock_held(uri: str) -> bool:
    """Whether another process holds the ``LOCK`` of the Milvus Lite database ``uri`` (asked after an open failed)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(Path(uri) / "LOCK", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class _Caught(logging.Handler):
    """While opening a client: Milvus Lite's logger quieted (it logs a whole traceback, then pymilvus raises a
    vaguer error), the exceptions it logged kept for the one-line message."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []
        self._log = logging.getLogger("milvus_lite")
        self._propagate = self._log.propagate

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])

    @property
    def locked(self) -> bool:
        return any(type(e).__name__ == "DataDirLockedError" for e in self.errors)

    @property
    def first(self) -> BaseException | None:
        return self.errors[0] if self.errors else None

    def __enter__(self) -> "_Caught":
        self._log.addHandler(self)
        self._log.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._log.removeHandler(self)
        self._log.propagate = self._propagate
