"""One writer at a time: :class:`IndexLock`, an exclusive ``flock`` on ``INDEX/.lock`` that records its
holder's pid.

A second writer (a build, a repair, the service's ``POST /items``) either fails at once with
:class:`IndexBusyError` naming the holder's pid, or waits (``wait=True``, ``clipzoo index build --wait``).
The lock file is removed when the lock is released, so neither outcome leaves a file behind; a holder that
dies (even by SIGKILL) releases the lock with its file descriptor, and the next writer takes it over.
Readers never take this lock: they read published generations (:mod:`clipzoo.index.generations`).
"""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ClipzooError
from .manifest import disk_full, is_disk_full, write_failed

__all__ = ["IndexLock", "IndexBusyError", "LOCK_NAME"]

LOCK_NAME = ".lock"


class IndexBusyError(ClipzooError):
    """Another process (or thread) is writing the index."""


class IndexLock:
    """``with IndexLock(index, wait=False, timeout=None):`` — the index folder's writer lock (its folder is
    created when missing). ``timeout`` (seconds, with ``wait``): give up with :class:`IndexBusyError`."""

    def __init__(self, index: "str | os.PathLike", *, wait: bool = False, timeout: float | None = None,
                 poll: float = 0.05, on_wait: "Callable[[int | None], object] | None" = None):
        self.folder = Path(os.path.abspath(os.fspath(index)))
        self.path = self.folder / LOCK_NAME
        self.wait, self.timeout, self.poll = wait, timeout, poll
        self.on_wait = on_wait  # called once, with the holder's pid, when it starts waiting
        self._fd: int | None = None

    def holder(self) -> int | None:
        """The pid recorded by the current holder (None when unknown)."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def acquire(self) -> "IndexLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise ClipzooError(f"index path {str(self.folder)!r} is a file; pass a folder for --out")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._refused(self.folder, exc) from None
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise self._refused(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not self.wait or (deadline is not None and time.monotonic() >= deadline):
                    pid = self.holder()
                    who = f"pid {pid}" if pid else "another process"
                    raise IndexBusyError(f"index {str(self.folder)!r} is being written by {who} (lock "
                                         f"{str(self.path)!r}); wait for it to finish, or pass --wait") from None
                if self.on_wait is not None:
                    self.on_wait(self.holder())
                    self.on_wait = None
                time.sleep(self.poll)
                continue
            try:  # the file we locked must still be the one at the path (a releaser unlinks it)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as exc:  # a full disk: no lock file left behind (it made "the folder" of a failed build)
                self._fd = fd
                self.release()
                raise self._refused(self.path, exc) from None
            self._fd = fd
            return self

    @staticmethod
    def _refused(path: Path, exc: OSError) -> ClipzooError:
        """One line for the lock the file system would not let us take: a full disk names the device."""
        if is_disk_full(exc):
            return disk_full(path)
        return write_failed(path, exc)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: a waiter then re-opens a fresh file
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "IndexLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
