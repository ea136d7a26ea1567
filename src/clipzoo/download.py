"""Fetching weights: direct http(s) URLs (verified by their SHA256, or open_clip's 8-digit prefix of it), the
Hugging Face hub (through its cache), and model files or folders at fsspec URLs (``s3://``, ``gs://``, ``az://``,
``memory://``, …)."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import constants
from .constants import default_cache_dir
from .errors import DownloadError, ModelNotCachedError, UnknownModelError, one_line, write_refused
from .files import build_folder_once, current_umask, remove_dead_temporaries, url_filesystem
from .progress import progress as progress_bar

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_HEX = re.compile(r"[0-9a-f]{8,64}")
_PART = re.compile(r".+\.(\d+)\.[a-z0-9_]{8}\.part")  # NAME.PID.XXXXXXXX.part: a download being written
_PER_URL = re.compile(r"[0-9a-f]{16}")  # the folder of a URL downloaded without a checksum
_BLOCK = 1 << 20
_CACHE_FIX = " (or set --cache-dir / CLIPZOO_CACHE)"


def sha256_of(path: "str | os.PathLike", chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_in_url(url: str) -> "str | None":
    """The SHA-256 a URL names: OpenAI's releases as the folder before the file name (``…/<sha256>/ViT-B-32.pt``);
    open_clip's GitHub releases (``mlfoundations`` URLs) by its first 8 hex digits, the file name's last ``-`` part
    (``…/vit_b_32-quickgelu-laion400m_e32-46683a32.pt``), a prefix :func:`download_url` checks as open_clip's
    ``download_pretrained_from_url`` does."""
    parts = url.split("?")[0].rstrip("/").split("/")
    if len(parts) >= 2 and len(parts[-2]) == 64 and _HEX.fullmatch(parts[-2]):
        return parts[-2]
    tail = os.path.splitext(parts[-1])[0].rsplit("-", 1)[-1]
    if "mlfoundations" in url and "-" in parts[-1] and _HEX.fullmatch(tail):
        return tail
    return None


def download_url(url: str, sha256: str | None = None, cache_dir: "str | os.PathLike | None" = None,
                 filename: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` (``http://`` or ``https://``) into ``cache_dir`` and return the local path.

    The file is written to a temporary name in the same folder and renamed only once complete and,
    when ``sha256`` is given, verified — so an interrupted or corrupt download never leaves a file
    that a later run would trust. A cached file is re-verified before reuse. ``sha256`` is the file's
    64 hex digits, or their first 8 or more (checked as a prefix: open_clip's release file names carry 8).
    Nothing is kept of an empty body, a body shorter than its announced length, or one that ended with an
    error; a download slower than ``DOWNLOAD_MIN_BYTES_PER_S`` fails. The cached file gets the mode the umask
    gives a new file; temporaries left by a killed download are removed by the next one into the cache.
    """
    expected = _expected_sha256(sha256, url)
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "url"
    name = os.path.basename(url.split("?")[0])
    name = filename or (name if name not in ("", ".", "..") else "download")
    per_url = expected is None and filename is None  # no checksum to tell two files of one name apart (the
    # second URL's file was the first's, never fetched): one folder per URL
    folder = root / hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16] if per_url else root
    target = folder / name
    try:
        return _download_into(url, expected, root, target, progress)
    except OSError as exc:  # the cache's file system refused: full, read-only, a size limit, a name too long
        raise DownloadError(str(write_refused(target, exc, elsewhere=_CACHE_FIX, kept=" (nothing was kept)"))) \
            from None
    finally:
        if per_url and not os.path.exists(target):
            with contextlib.suppress(OSError):  # nothing kept: not even its folder
                folder.rmdir()


def _expected_sha256(sha256: "str | None", url: str) -> "str | None":
    """``sha256`` in lower case after refusing what is no digest or prefix of one; the URL's scheme checked."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url[:200]!r}: only http:// and https:// URLs are downloaded; load a "
                            "local file by its path, or a model at an fsspec URL (s3://, gs://, …) by that URL")
    if sha256 is not None and not _HEX.fullmatch(sha256.lower()):
        raise DownloadError(f"sha256 {sha256[:80]!r} for {url} is not a SHA-256 digest (64 hex digits, or the "
                            "first 8 or more of them); check it")
    return None if sha256 is None else sha256.lower()


def _download_into(url: str, expected: "str | None", root: Path, target: Path, progress: bool) -> Path:
    """:func:`download_url` once its place is known: the cached file when it matches, else a fresh download."""
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if expected is None or sha256_of(target).startswith(expected):
            return target
        target.unlink(missing_ok=True)  # a stale or corrupt cached file (another process may remove it too)
    _remove_dead_parts(root)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.{os.getpid()}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            with contextlib.suppress(OSError):  # the mode a new file gets (mkstemp's 0600 hid it from others)
                os.fchmod(out.fileno(), 0o666 & ~current_umask())
            try:
                response = urllib.request.urlopen(url, timeout=constants.DOWNLOAD_TIMEOUT_S)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise DownloadError(f"cannot download {url} ({one_line(exc, 300)}); check the URL and the network, "
                                    f"or place the file at {target} yourself") from None
            with response:
                total = _content_length(response, url)
                _check_free_space(folder, total, url)
                with progress_bar(total, target.name, enabled=progress, unit="B") as advance:
                    received = _copy_hashing(response, out, h, advance, url)
        _check_received(url, received, total)
        digest = h.hexdigest()
        if expected is not None and not digest.startswith(expected):
            shown = expected if len(expected) == 64 else f"{expected}…"
            raise DownloadError(f"checksum mismatch for {url}: expected sha256 {shown}, got {digest}; "
                                "the download is corrupt or the file changed upstream — nothing was kept")
        os.replace(tmp, target)
        return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_dead_parts(root: Path) -> None:
    """Remove the ``.part`` files of downloads whose process is gone (killed by SIGKILL, SIGTERM, the OOM killer:
    each left a partial file of up to the model's size) in ``root`` and its per-URL folders."""
    remove_dead_temporaries(root, _PART)
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if _PER_URL.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                remove_dead_temporaries(entry.path, _PART)


def _content_length(response, url: str) -> "int | None":
    """The length the server announces (None: none), after refusing what is no file: an HTML page (a login or
    error page served with status 200 was cached as the weights) or a length that is not a number."""
    if (response.headers.get("Content-Type") or "").lower().startswith("text/html"):
        raise DownloadError(f"{url} answered with an HTML page, not a file (a login, error or index page?); check "
                            "the URL — nothing was kept")
    length = (response.headers.get("Content-Length") or "").strip()
    if not length:
        return None
    if not length.isdigit():
        raise DownloadError(f"{url} announced a length of {length[:40]!r}, which is not a number of bytes; "
                            "nothing was kept")
    return int(length)


def _check_free_space(folder: Path, total: "int | None", url: str) -> None:
    """Refuse, before writing, a file announced larger than the space left in ``folder``."""
    if total is None:
        return
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if total > free:
        raise DownloadError(f"{url} is {total:,} bytes, more than the {free:,} bytes free in {folder}; free some "
                            f"space{_CACHE_FIX} — nothing was kept")


def _check_received(url: str, received: int, total: "int | None") -> None:
    """Refuse an empty body, or one shorter than the announced length. A body of unknown length that ended
    cleanly is whole (HTTP ends it by closing the connection); one that ended with an error was refused already."""
    if received == 0:
        raise DownloadError(f"{url} answered with an empty body (0 bytes), not a file; check the URL — nothing "
                            "was kept")
    if total is not None and received != total:
        raise DownloadError(f"download of {url} was interrupted: got {received} of {total} bytes; "
                            "nothing was kept — run again")


def _copy_hashing(response, out, h, advance, url: str) -> int:
    """Copy ``response`` into ``out`` as its bytes arrive (at most 1 MiB at a time), hashing them; the number of
    bytes received. A transfer slower than ``DOWNLOAD_MIN_BYTES_PER_S`` over ``DOWNLOAD_TIMEOUT_S`` is refused."""
    received = 0
    window = constants.DOWNLOAD_TIMEOUT_S
    since, in_window = time.monotonic(), 0
    while True:
        try:
            block = response.read1(_BLOCK)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"download of {url} was interrupted after {received} bytes ({one_line(exc, 300)}); "
                                "nothing was kept — run again") from None
        if not block:
            return received
        received += len(block)
        in_window += len(block)
        out.write(block)  # an OSError here is the local disk's (download_url says so)
        h.update(block)
        advance(len(block))
        elapsed = time.monotonic() - since
        if elapsed >= window:
            if in_window < constants.DOWNLOAD_MIN_BYTES_PER_S * elapsed:
                raise DownloadError(
                    f"download of {url} is too slow: {in_window} bytes in the last {elapsed:.0f} s (under "
                    f"{constants.DOWNLOAD_MIN_BYTES_PER_S} bytes/s) after {received} bytes; nothing was kept — "
                    "check the network and run again")
            since, in_window = time.monotonic(), 0


_probe: dict[str, tuple[float, "str | None"]] = {}  # hub endpoint -> (when probed, why unreachable)


def hub_unreachable(timeout: float | None = None) -> "str | None":
    """Why the Hugging Face hub cannot be reached now (None when its host accepts a TCP connection).

    One connection attempt of at most ``HUB_PROBE_TIMEOUT_S``, remembered for a minute: offline, hub files are
    then read from the local cache only, failing in seconds with one line instead of huggingface_hub's
    retries with back-off (five "Retrying in 8s" warnings, ~40 s)."""
    import huggingface_hub.constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = hub_constants.ENDPOINT
    seen = _probe.get(endpoint)
    if seen is not None and time.monotonic() - seen[0] < 60:
        return seen[1]
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    if urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return None  # through a proxy: a direct connection proves nothing; huggingface_hub goes by the proxy
    why = None
    try:
        socket.create_connection((host, port), timeout=timeout or constants.HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        why = f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    _probe[endpoint] = (time.monotonic(), why)
    return why


def hub_file(repo: str, filename: str, cache_dir: "str | os.PathLike | None" = None,
             revision: str | None = None) -> Path:
    """One file of a hub repo through huggingface_hub's cache (offline once cached)."""
    from huggingface_hub import hf_hub_download

    why = hub_unreachable()
    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, revision=revision,
                                    local_files_only=why is not None))
    except Exception as exc:  # EntryNotFound, LocalEntryNotFound, connection errors, …
        raise _hub_error(repo, exc, filename, why) from None


def hub_snapshot(repo: str, cache_dir: "str | os.PathLike | None" = None, revision: str | None = None,
                 allow_patterns: list[str] | None = None) -> Path:
    """A hub repo folder through huggingface_hub's cache (offline once cached)."""
    from huggingface_hub import snapshot_download

    why = hub_unreachable()
    try:
        return Path(snapshot_download(repo, cache_dir=cache_dir, revision=revision, allow_patterns=allow_patterns,
                                      local_files_only=why is not None))
    except Exception as exc:
        raise _hub_error(repo, exc, None, why) from None


def hub_has_file(repo: str, filename: str, cache_dir=None) -> bool:
    try:
        hub_file(repo, filename, cache_dir)
        return True
    except ModelNotCachedError as exc:
        if getattr(exc, "missing_file", False):
            return False
        raise


def _hub_error(repo: str, exc: Exception, filename: str | None = None, why: str | None = None) -> ModelNotCachedError:
    name = type(exc).__name__
    what = f"{filename!r} of " if filename else ""
    if name in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        err = ModelNotCachedError(f"hub repo {repo!r} has no file {filename!r}")
        err.missing_file = True
        return err
    if name in ("RepositoryNotFoundError",):
        return ModelNotCachedError(f"hub repo {repo!r} does not exist (or is private); check the id")
    return ModelNotCachedError(
        f"cannot fetch {what}hub repo {repo!r}: it is not in the local Hugging Face cache and the hub "
        f"cannot be reached ({why or name}); download it once where the hub is reachable (or set HF_HOME to a "
        "cache that holds it), or pass a local folder")


def remote_protocol(spec: str) -> "str | None":
    """The fsspec protocol of a model URL (``s3``, ``gs``, ``memory``, …); None for local paths, ``file://``
    URLs and ``http(s)://`` URLs (those are fetched by :func:`download_url`)."""
    m = _SCHEME.match(spec) if isinstance(spec, str) else None
    if m is None or m.group(1).lower() in ("http", "https", "file", "local"):
        return None
    return m.group(1).lower()


def fetch_remote(url: str, cache_dir: "str | os.PathLike | None" = None) -> Path:
    """A model file or folder at an fsspec URL -> a local copy in ``cache_dir/remote/`` (what
    ``clipzoo.load("s3://bucket/run/model")`` loads).

    Copied into a temporary sibling and renamed into place only when every file arrived, so an
    interrupted copy is never loaded. The copy is reused while the remote listing — names, sizes, and the
    store's ETag or modification time — is unchanged, and fetched again when it changed (a retrained model
    written to the same URL).
    """
    fs, path = url_filesystem(url, DownloadError)
    path = path.rstrip("/")
    if path.rsplit("/", 1)[-1] in ("..", "."):  # its copy was made outside its own folder
        raise DownloadError(f"model URL {url!r} ends in {path.rsplit('/', 1)[-1]!r}; name the model file or "
                            "folder itself — nothing was fetched")
    try:
        fs.invalidate_cache(path)  # a listing cached earlier in this process may predate a retrained model
        if not fs.exists(path):
            raise UnknownModelError(f"model URL {url!r} does not exist; check the bucket and path (a model folder "
                                    "written by `clipzoo train`, or a checkpoint file)")
        if fs.isdir(path):
            files = {_relative(name, path): info for name, info in fs.find(path, detail=True).items()
                     if info.get("type", "file") != "directory"}
        else:
            files = {"": fs.info(path)}
    except UnknownModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - credentials, network, permissions: the store's own message
        raise DownloadError(f"cannot read {url} ({type(exc).__name__}: {exc}); check the URL, the credentials "
                            "and the network") from None
    _check_names(files, url)
    fingerprint = json.dumps(sorted((rel, info.get("size"), str(_version_tag(info))) for rel, info in files.items()))
    folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / "remote" / hashlib.sha256(
        url.rstrip("/").encode()).hexdigest()[:16]
    name = path.rsplit("/", 1)[-1] or "model"
    marker = folder / "listing.json"  # written last: the copy is complete, and of this listing
    if marker.is_file():
        if marker.read_text() == fingerprint:
            return folder / name
        marker.unlink()  # the remote changed: fetch it again

    def copy(tmp: Path) -> None:
        for rel in files:
            dst = tmp / name / rel if rel else tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"{path}/{rel}" if rel else path, str(dst))
            except Exception as exc:  # noqa: BLE001
                raise DownloadError(f"copy of {url} was interrupted at {rel or name} ({type(exc).__name__}: {exc}); "
                                    "nothing was kept — run again") from None
        (tmp / "listing.json").write_text(fingerprint)

    build_folder_once(folder, copy, "listing.json")
    return folder / name


def _check_names(files: dict, url: str) -> None:
    """Every name in a remote listing stays inside the copy: one holding ``..`` (or absolute) was written outside
    the cache folder."""
    for rel in files:
        parts = rel.replace("\\", "/").split("/")
        if rel and (rel.startswith("/") or any(part in ("..", ".", "") for part in parts) or "\x00" in rel):
            raise DownloadError(f"{url} lists a file named {rel[:200]!r}, which would be written outside its copy; "
                                "nothing was fetched")


def _relative(name: str, root: str) -> str:
    name, root = name.lstrip("/"), root.lstrip("/")
    return name[len(root):].lstrip("/") if name.startswith(root) else name.rsplit("/", 1)[-1]


def _version_tag(info: dict) -> object:
    for key in ("ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "last_modified", "updated", "created"):
        if info.get(key) is not None:
            return info[key]
    return None
