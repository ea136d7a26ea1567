"""Writing files so that an interrupted write never leaves a half file at the destination."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .processes import pid_alive

__all__ = ["NOT_REGULAR", "atomic_write", "atomic_write_text", "build_folder_once", "check_output_file",
           "expand_files", "file_problem", "folder_files", "inside", "model_fingerprint", "special_file",
           "tar_end_problem", "url_filesystem", "walk_folder"]

NOT_REGULAR = "is not a regular file (a fifo, a socket or a device)"
"""What is said of a path :func:`special_file` refuses."""


def inside(real_path: str, real_root: str) -> bool:
    """Whether ``real_path`` (resolved) is ``real_root`` (resolved) or below it."""
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def special_file(path: "str | os.PathLike") -> bool:
    """Whether ``path`` exists and is neither a regular file nor a folder — a fifo, a socket, a device: reading
    one can wait for ever (a fifo passed as an image, a label list or a model hung the command)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def tar_end_problem(block: bytes, offset: int) -> "str | None":
    """Why a tar whose walk stopped at byte ``offset`` (of its uncompressed stream) was cut short, from ``block``,
    what was read there (up to 512 bytes); None where ``block`` is the end-of-archive marker (zeros; a file cut
    inside the marker lost nothing). Python's ``tarfile`` ends its walk without a word at a cut or damaged header
    and at the end of the file, so a shard cut between two members read as a whole, shorter one."""
    if not block:
        return f"the file ends at byte {offset:,} without the end-of-archive marker"
    if block.strip(b"\0"):  # the walk stopped at a cut or damaged header, not at the end-of-archive zeros
        return f"{'a cut' if len(block) < 512 else 'no'} tar header at byte {offset:,}"
    return None


def atomic_write(path: "str | os.PathLike", write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path`` (its folder is created), then
    rename it to ``path``; on any error the temporary file is removed and ``path`` is left as it was. The file
    gets the mode a plain ``open(path, "w")`` gives a new file, ``0o666`` less the umask (mkstemp's 0600 made
    every such output unreadable to the group), whether or not it replaces one — as the ``.npy`` files
    streamed beside it are."""
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # a file system without modes (some FUSE, SMB mounts)
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask, read without changing it where Linux says it (``/proc/self/status``); elsewhere
    set and restored under a lock (the only way POSIX gives; another thread creating a file meanwhile would see
    umask 022 for that instant)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def atomic_write_text(path: "str | os.PathLike", text: str) -> Path:
    """``text`` as UTF-8 at ``path`` through :func:`atomic_write` (whole or not at all; a link there is replaced)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def check_output_file(path: "str | os.PathLike | None", inputs, flag: str, error: type, *,
                      fix: "str | None" = None, read_whole_folders: bool = True) -> None:
    """Before any work: ``error`` when the output file ``path`` is a folder, is one of ``inputs`` (files or
    folders — the entry given, or the file a link there points to; None, URLs and names that are no path here are
    passed over) or, with ``read_whole_folders`` (eval: it reads its data folder whole), an existing file inside an
    input folder: writing there would destroy what the run reads. ``fix``: what the message tells the user to do
    (by default "pass a file name" for a folder, "choose another file" for an input).
    (The write itself replaces a link at ``path``, never its target: :func:`atomic_write`.) Without
    ``read_whole_folders`` (``clipzoo embed``, given the very files it reads, possibly many) a file no input names
    is replaced — a previous run's output — and only an input of the same name, or a link, costs a path lookup.
    A local ``path`` whose folder cannot take it (a file where a folder goes, a folder that is not writable) is
    ``error`` too, said now rather than as a raw errno after the run."""
    if path is None:
        return
    shown = os.fspath(path)
    p = Path(os.path.expanduser(shown))
    if p.is_dir() and not p.is_symlink():
        raise error(f"{flag} {shown!r} is a folder; {fix or 'pass a file name'}")
    if "://" not in shown:
        above = p.parent  # the nearest folder that exists: the write creates the rest in it
        while not os.path.lexists(above) and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise error(f"{flag} {shown!r} cannot be written: {os.fspath(above)!r} is "
                        f"{'a file, ' if above.is_file() else ''}not a folder; choose another place")
        try:  # the one sure test (as root, os.access says yes to a read-only mount and to /proc)
            tempfile.TemporaryFile(dir=above).close()
        except OSError as exc:
            raise error(f"{flag} {shown!r} cannot be written: folder {os.fspath(above)!r} takes no new file "
                        f"({exc.strerror or exc}); choose another place") from None
    if not os.path.lexists(p):  # nothing there to destroy
        return
    entry = os.path.join(os.path.realpath(p.parent), p.name)  # what the write replaces
    for given in inputs:
        q = None if given is None else os.path.expanduser(os.fspath(given))
        if q is None or "://" in q:  # a data set's name, a URL: nothing to destroy here
            continue
        if not read_whole_folders and os.path.basename(q) != p.name and not os.path.islink(q):
            continue  # another name, not a link: another file
        if not os.path.lexists(q):
            continue
        places = {os.path.join(os.path.realpath(os.path.dirname(q) or "."), os.path.basename(q)),
                  os.path.realpath(q)}
        folder = os.path.realpath(q) if read_whole_folders and os.path.isdir(q) else None
        if entry in places or (folder and entry.startswith(folder.rstrip(os.sep) + os.sep)):
            what = "is the input" if entry in places else "is a file in the input folder"
            raise error(f"{flag} {shown!r} {what} {os.fspath(given)!r}: writing there would destroy it; "
                        f"{fix or 'choose another file'}")


def checked_file(path: "str | os.PathLike", noun: str, error: type, folder_fix: str) -> tuple[Path, str]:
    """``path`` (``~`` expanded) and its spelling as given, when it is a file; otherwise ``error`` naming it as
    ``noun``: missing ("check the path") or a folder (``folder_fix`` says what to pass instead)."""
    shown = os.fspath(path)
    p = Path(os.path.expanduser(shown))
    if not p.exists():
        raise error(f"{noun} {shown!r} does not exist; check the path")
    if p.is_dir():
        raise error(f"{noun} {shown!r} is a folder; {folder_fix}")
    if special_file(p):
        raise error(f"{noun} {shown!r} {NOT_REGULAR}; pass a file")
    return p, shown


def expand_files(paths, suffixes: tuple[str, ...], error: type, kind: str) -> list[str]:
    """Files stay as given; a folder becomes its files with one of ``suffixes`` (any case; recursively, sorted),
    as ``clipzoo index build`` walks a folder: hidden files and hidden folders skipped, and only regular files
    that stay inside the folder (a link leading out of it, a fifo, a socket, a device are left out; linked
    folders are not entered). A path that does not exist, a folder without such files, or no paths at all raise
    ``error`` naming it (``kind``: "image", "audio", … for the messages)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    noun = "image" if kind == "image" else f"{kind} file"
    out: list[str] = []
    for given in paths:
        path = Path(os.path.expanduser(os.fspath(given)))
        if path.is_dir():
            found = folder_files(path, suffixes)
            if not found:
                raise error(f"folder {os.fspath(given)!r} holds no {kind} files ({', '.join(suffixes)}); "
                            "check the path")
            out.extend(found)
        elif special_file(path):
            raise error(f"{noun} {os.fspath(given)!r} {NOT_REGULAR}; pass a file")
        elif path.exists():
            out.append(str(path))
        else:
            raise error(f"{noun} {os.fspath(given)!r} does not exist; check the path")
    if not out:
        raise error(f"no {kind} given; pass {kind} files or folders" if kind != "image"
                    else "no images given; pass image files or folders")
    return out


def file_problem(path: "str | os.PathLike", real_root: str) -> str | None:
    """Why the file at ``path`` may not be read under the folder whose real path is ``real_root`` (None: it
    may): its real path leaves the folder (a link out of it), or it is not a regular file (a folder, fifo,
    device)."""
    real = os.path.realpath(path)
    if not inside(real, real_root):
        return "outside the indexed folder (a link to a file elsewhere); not read"
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file; not read"
    return None


def walk_folder(root: "str | os.PathLike", suffixes: "frozenset[str] | set[str] | tuple[str, ...]",
                exclude: "str | os.PathLike | None" = None) -> Iterator[tuple[str, "str | None"]]:
    """``(path, problem)`` for each file under ``root`` with one of ``suffixes`` (any case), in walk order with
    subfolders sorted: hidden files and folders, and the folder ``exclude``, skipped; linked folders not entered.
    ``problem`` is :func:`file_problem`'s (None for a regular file that stays inside ``root``). The one walk
    behind ``clipzoo index build`` and the folders ``clipzoo embed`` and the library expand."""
    real_root = os.path.realpath(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (skip is None or Path(dirpath, d).resolve() != skip))
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in suffixes:
                continue
            path = os.path.join(dirpath, name)
            yield path, file_problem(path, real_root)


def folder_files(root: Path, suffixes: tuple[str, ...]) -> list[str]:
    """The regular files under ``root`` with one of ``suffixes`` that stay inside it, sorted
    (:func:`walk_folder`'s rules; see :func:`expand_files`)."""
    return sorted(path for path, problem in walk_folder(root, suffixes) if problem is None)


def build_folder_once(folder: "str | os.PathLike", build: Callable[[Path], object], marker: str) -> Path:
    """Create the cache folder ``folder`` by ``build(tmp)`` into a temporary sibling, then rename it into place.

    ``marker`` is the file ``build`` writes last: a folder holding it is complete. If another process or thread
    completed ``folder`` meanwhile — before our build ended or between our check and our rename — its result is
    kept (never removed under its readers) and ours dropped; a failed build leaves nothing.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if not (folder / marker).is_file():
            _rename_into_place(tmp, folder, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _rename_into_place(tmp: Path, folder: Path, marker: str) -> None:
    """``tmp`` renamed to ``folder``, unless a complete ``folder`` (holding ``marker``) took the place first; an
    incomplete one left there (no marker: not a finished build) is moved aside and removed, then ours renamed."""
    try:
        os.replace(tmp, folder)
        return
    except OSError:
        if (folder / marker).is_file():
            return
    aside = folder.with_name(f"{folder.name}.stale-{os.getpid()}-{threading.get_ident()}")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:  # another builder moved it aside first
        pass
    else:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink()
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / marker).is_file():
            raise


def model_fingerprint(spec: "str | os.PathLike", exclude: "str | os.PathLike | None" = None) -> "str | None":
    """SHA-256 over each file of a local model (name, size, its first and last MiB); None for a registry spec.
    A retrained model changes every tensor, so its first and last MiB; hashing whole files would cost seconds.
    What keys the caches of a local model's derived files (its ONNX exports, ``runtime="auto"``'s choice) and what
    an index records of its model: a folder's own stat does not change when a file inside is rewritten. Files
    under ``exclude`` are left out (a cache folder kept inside the model folder: each export changed the key)."""
    path = Path(spec)
    if not path.is_absolute() or not path.exists():
        return None
    skip = os.path.realpath(exclude) if exclude is not None else None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(path).parts) and not (
        skip and inside(os.path.realpath(p), skip)))[:1000]
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{size}\0".encode("utf-8", "surrogatepass"))
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()


def url_filesystem(url: str, error: type) -> "tuple[Any, str]":
    """fsspec's ``(filesystem, path)`` for ``url``. A filesystem whose package is missing (s3fs, gcsfs,
    adlfs, …) or a URL fsspec cannot use raises ``error`` with one line naming the URL and the fix."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise error(f"{url}: the fsspec filesystem for {protocol}:// is not installed ({err}); pip install the "
                    "matching package (s3fs, gcsfs, adlfs, …)") from None
    except ValueError as err:
        raise error(f"{url}: not a usable fsspec URL ({err})") from None
    except OSError as err:  # a filesystem that connects when made (ftp://, sftp://): no such host, refused, …
        raise error(f"{url}: cannot reach it ({err.__class__.__name__}: {err})") from None


def remove_dead_temporaries(folder: "str | os.PathLike", pattern: "re.Pattern[str]", *,
                            ours_too: bool = False) -> list[Path]:
    """Remove the files and folders directly in ``folder`` whose name matches ``pattern`` in full — a temporary's
    naming, its first group the PID of the process that wrote it — when that process is gone (a run killed by
    SIGKILL or the OOM killer, or one that died of a full disk, left them for good). ``ours_too``: this process's
    own count as gone (a run's start, under its lock: nothing of ours is being written). The paths removed."""
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if not match:
            continue
        pid = int(match.group(1))
        if (pid == os.getpid() and not ours_too) or (pid != os.getpid() and pid_alive(pid)):
            continue
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(path)
    return removed
