"""Where a run writes: a local folder, or any fsspec URL (``memory://run1``, ``s3://bucket/run``, ``gs://…``).

A :class:`Location` is a folder. Local paths (and ``file://`` URLs) keep the plain-filesystem behaviour —
temporary file + ``os.replace`` for every checkpoint, so a crash never leaves a half-written one. Remote
locations go through fsspec: a file is written to a temporary name next to its final one with
``fs.open(…, "wb")`` and then moved (``fs.mv``) onto it, so ``latest`` never names a partial upload on
filesystems whose move is atomic, and at worst a stray ``.tmp-*`` object is left on object stores whose
"move" is copy + delete. Reading back (resume) uses ``fs.open(…, "rb")``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ClipzooError, write_refused
from ..files import remove_dead_temporaries, url_filesystem
from .config import ConfigError

__all__ = ["Location", "MetricsLog", "is_remote", "torch_load_url", "url_exists", "scratch_dir", "write_error",
           "remove_stale_temporaries", "refused_write", "refused_os_error", "TEMPORARY"]


def _protocol(url: str) -> "str | None":
    if "://" not in url:
        return None
    return url.split("://", 1)[0].lower()


def is_remote(url: "str | os.PathLike") -> bool:
    """True for a URL of a filesystem other than the local one (``file://`` counts as local)."""
    return _protocol(str(url)) not in (None, "file", "local")


class Location:
    """A folder, local or remote, with the few operations training needs."""

    def __init__(self, url: "str | os.PathLike"):
        text = str(url)
        self.url = text
        if not is_remote(text):
            if _protocol(text):
                text = text.split("://", 1)[1]
            self.local: "Path | None" = Path(text)
            self.fs = None
            self.path = str(self.local)
            return
        self.fs, self.path = url_filesystem(text, ConfigError)
        self.local = None
        self.path = self.path.rstrip("/")

    # ------------------------------------------------------------------ names
    @property
    def remote(self) -> bool:
        return self.local is None

    def child(self, *parts: str) -> "Location":
        if self.local is not None:
            return Location(self.local.joinpath(*parts))
        return Location(self.url.rstrip("/") + "/" + "/".join(parts))

    def name_of(self, *parts: str) -> str:
        """The full name of a file inside: a local path, or the URL."""
        if self.local is not None:
            return str(self.local.joinpath(*parts))
        return self.url.rstrip("/") + "/" + "/".join(parts)

    def _rpath(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts) if parts else self.path

    def __str__(self) -> str:
        return self.url if self.remote else str(self.local)

    # ------------------------------------------------------------------ files
    def exists(self, *parts: str) -> bool:
        if self.local is not None:
            return self.local.joinpath(*parts).exists()
        return self.fs.exists(self._rpath(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        if self.local is not None:
            return self.local.joinpath(*parts).read_bytes()
        with self.fs.open(self._rpath(*parts), "rb") as f:
            return f.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def write_bytes(self, name: str, data: bytes, kept: str = "") -> str:
        """Write ``data`` to file ``name`` atomically (temporary name, then rename / move); a write the file system
        refuses is one line (``kept``: what is safe, for its end). Returns its name."""
        tmp = f".{name}.tmp-{os.getpid()}"
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            with refused_write(self.local / name, self.local / tmp, kept):
                (self.local / tmp).write_bytes(data)
                os.replace(self.local / tmp, self.local / name)
            return str(self.local / name)
        with self._remote_write(name, tmp, kept):
            self.fs.makedirs(self.path, exist_ok=True)
            with self.fs.open(self._rpath(tmp), "wb") as f:
                f.write(data)
            self.fs.mv(self._rpath(tmp), self._rpath(name))
        return self.name_of(name)

    @contextlib.contextmanager
    def _remote_write(self, name: str, tmp: "str | None" = None, kept: str = ""):
        """Remote only: a write the filesystem refuses (a full or read-only bucket, a denied request: fsspec raises
        OSErrors) becomes :func:`write_error`'s one line naming the URL, ``tmp`` removed."""
        try:
            yield
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(Exception):
                    self.fs.rm(self._rpath(tmp))
            raise write_error(self.name_of(name) if name else self.url, exc, kept) from None

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode("utf-8"))

    def append_text(self, name: str, text: str) -> None:
        """Local only: append to a file (remote logs are rewritten whole, see :class:`MetricsLog`)."""
        assert self.local is not None
        self.local.mkdir(parents=True, exist_ok=True)
        with open(self.local / name, "a", encoding="utf-8") as f:
            f.write(text)

    def glob_names(self, pattern: str) -> list[str]:
        """Names (not paths) of the files inside that match ``pattern``, sorted."""
        if self.local is not None:
            return sorted(p.name for p in self.local.glob(pattern))
        try:
            found = self.fs.glob(self._rpath(pattern))
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in found)

    def torch_save(self, name: str, obj: Any, kept: str = "") -> str:
        """``torch.save`` to file ``name`` atomically; a write the disk refuses is one line (``kept``: what is safe,
        for its end) and leaves no temporary file."""
        import torch

        if self.local is not None:  # straight to disk: no second copy of the state in memory
            self.local.mkdir(parents=True, exist_ok=True)
            tmp = self.local / f".{name}.tmp-{os.getpid()}"
            with refused_write(self.local / name, tmp, kept), open(tmp, "wb") as f:
                out = _KeptError(f)
                try:
                    torch.save(obj, out)
                except RuntimeError:  # torch says only "unexpected pos …": the OSError behind it, if any
                    if out.error is None:
                        raise
                    raise out.error from None
                f.close()
                os.replace(tmp, self.local / name)
            return str(self.local / name)
        buf = io.BytesIO()
        torch.save(obj, buf)
        return self.write_bytes(name, buf.getvalue(), kept)

    def upload_dir(self, local_dir: Path, replace: bool = True) -> None:
        """Remote only: copy a local folder's files here (file by file; what was here is removed first)."""
        assert self.local is None
        with self._remote_write(""):
            if replace and self.fs.exists(self.path):
                self.fs.rm(self.path, recursive=True)
            self.fs.makedirs(self.path, exist_ok=True)
            for f in sorted(Path(local_dir).rglob("*")):
                if f.is_file():
                    rel = f.relative_to(local_dir).as_posix()
                    target = self._rpath(rel)
                    parent = posixpath.dirname(target)
                    if parent:
                        self.fs.makedirs(parent, exist_ok=True)
                    self.fs.put_file(str(f), target)


TEMPORARY = re.compile(r"\..+\.tmp-(\d+)")  # .NAME.tmp-PID: what write_bytes, torch_save and save_trained write


def remove_stale_temporaries(folder: "Path | None") -> list[str]:
    """Remove the temporaries of our naming in the local ``folder`` whose process is gone (a run killed while it
    saved, or one that died of a full disk, left ``.step_0000004.pt.tmp-PID`` for good). At a run's start, with the
    run lock held: this process's own temporaries are stale too. The names removed."""
    if folder is None or not folder.is_dir():
        return []
    return [p.name for p in remove_dead_temporaries(folder, TEMPORARY, ours_too=True)]


class _KeptError:
    """A file for ``torch.save`` that keeps the OSError of a refused write (torch swallows it)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def refused_os_error(exc: BaseException) -> "OSError | None":
    """The OSError behind a failed write: ``exc`` itself, or the one safetensors names (``I/O error: File too large
    (os error 27)``); None for another failure."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1)))) if found else None


def write_error(path: "str | os.PathLike", exc: OSError, kept: str = "") -> ClipzooError:
    """The one line of a write the file system refused (:func:`clipzoo.errors.write_refused`: a full disk or quota,
    a file size limit, a read-only disk, permissions)."""
    return write_refused(os.fspath(path), exc, elsewhere=" (or pass another --output / checkpoint_dir)", kept=kept)


@contextlib.contextmanager
def refused_write(path: Path, tmp: Path, kept: str = ""):
    """A write of ``path`` through ``tmp`` (a file or a folder): on any failure ``tmp`` is removed, and a write the
    file system refused becomes one line (:func:`write_error`)."""
    try:
        yield
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        refused = refused_os_error(exc)
        if refused is not None:
            raise write_error(path, refused, kept) from None
        raise


def torch_load_url(url: str):
    """``torch.load(weights_only=True)`` of a local path or an fsspec URL."""
    import torch

    if not is_remote(url):
        path = url.split("://", 1)[1] if _protocol(url) else url
        return torch.load(path, map_location="cpu", weights_only=True)
    loc = Location(url)
    with loc.fs.open(loc.path, "rb") as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def url_exists(url: str) -> bool:
    if not is_remote(url):
        path = url.split("://", 1)[1] if _protocol(url) else url
        return Path(path).exists()
    loc = Location(url)
    return loc.fs.exists(loc.path)


class MetricsLog:
    """The run's metrics as JSON lines (one per logged step), rank 0 only.

    Local: appended line by line as steps are logged. Remote: kept in memory and rewritten whole (temporary
    name + move) at every checkpoint and at the end — object stores cannot append. On resume the lines of
    steps after the resumed step are dropped, so the log reads as one uninterrupted run.
    """

    def __init__(self, url: str, resume_step: "int | None"):
        self.url = url
        loc = Location(url)
        if loc.local is not None:
            self.folder, self.name = Location(loc.local.parent), loc.local.name
        else:
            self.folder, self.name = Location(url.rsplit("/", 1)[0]), url.rsplit("/", 1)[1]
        kept: list[str] = []
        if resume_step is not None and self.folder.exists(self.name):
            for line in self.folder.read_text(self.name).splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except ValueError:
                    continue
        self.lines = kept
        self.folder.write_text(self.name, "".join(line + "\n" for line in kept))

    def add(self, record: dict) -> None:
        line = json.dumps(record, default=float)
        self.lines.append(line)
        if not self.folder.remote:
            self.folder.append_text(self.name, line + "\n")

    def flush(self) -> None:
        if self.folder.remote:
            self.folder.write_text(self.name, "".join(line + "\n" for line in self.lines))



_SCRATCH: dict[str, str] = {}


def scratch_dir(output: str) -> str:
    """A local folder (one per run output) for what a remote run stages before upload (tensorboard events,
    held-out images)."""
    if output not in _SCRATCH:
        _SCRATCH[output] = tempfile.mkdtemp(prefix="clipzoo-run-")
    return _SCRATCH[output]
