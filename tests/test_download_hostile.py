"""URL downloads against a hostile or failing world: servers that send nothing, trickle or stop half way, a cache
the disk refuses, downloads killed mid-way, checksums open_clip carries as a prefix, URLs that are no download."""
from __future__ import annotations

import ast
import errno
import hashlib
import http.server
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import clipzoo
import clipzoo.constants
import clipzoo.download
from clipzoo.download import download_url, sha256_in_url
from clipzoo.errors import ClipzooError, DownloadError

PAYLOAD = bytes(range(256)) * 64  # 16 KiB
STOP = threading.Event()  # set at teardown: handlers that wait or trickle end


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}
    hits: dict[str, int] = {}

    def _head(self, length=None, extra=()):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in extra:
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def do_GET(self):  # noqa: N802
        path = self.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path.startswith("/zero/"):  # an empty body announced as such
            self._head(0)
        elif path.startswith("/empty/"):  # no length, closed at once
            self._head()
        elif path.startswith("/nolen/"):  # no length, the whole body, a clean close: a complete file per HTTP
            self._head()
            self.wfile.write(PAYLOAD)
        elif path.startswith("/chunkcut/"):  # chunked, the connection ends inside a chunk
            self._head(extra=[("Transfer-Encoding", "chunked")])
            self.wfile.write(b"%x\r\n" % len(PAYLOAD) + PAYLOAD[:1000])
        elif path.startswith("/trickle/"):  # 1 byte each 20 ms of 400: about 50 bytes/s
            self._head(400)
            for _ in range(400):
                if STOP.wait(0.02):
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:  # the client gave up (or was killed)
                    return
        elif path.startswith("/halfopen/"):  # 500 of 1024 bytes, then silence
            self._head(1024)
            self.wfile.write(PAYLOAD[:500])
            self.wfile.flush()
            STOP.wait(10)
        elif path.startswith("/loop/"):
            self.send_response(302)
            self.send_header("Location", path)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/huge/"):  # announces a petabyte
            self._head(10 ** 15)
            try:
                self.wfile.write(PAYLOAD)
            except OSError:  # refused before reading
                pass
        else:
            body = self.files.get(path)
            if body is None:
                self.send_error(404)
                return
            self._head(len(body))
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    STOP.clear()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.files
    STOP.set()
    srv.shutdown()
    srv.server_close()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ 1. the umask
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_cached_download_gets_the_mode_the_umask_gives(server, tmp_path, umask, mode):
    """mkstemp's 0600 was kept: a cache built as root (a docker image) or shared was unreadable to other users."""
    base, files = server
    files["/m.bin"] = PAYLOAD
    old = os.umask(umask)
    try:
        path = download_url(base + "/m.bin", hashlib.sha256(PAYLOAD).hexdigest(), tmp_path, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


# ------------------------------------------------------------------ 2. empty and cut bodies
@pytest.mark.parametrize("path", ["/zero/tiny.safetensors", "/empty/tiny.safetensors"])
def test_an_empty_body_is_never_cached(server, tmp_path, path):
    """`Content-Length: 0` counted as "no length" and the empty file was cached for good: every later load failed
    on it without fetching again."""
    base, _ = server
    url = base + path
    for attempt in (1, 2):
        with pytest.raises(DownloadError) as err:
            download_url(url, None, tmp_path, progress=False)
        assert str(err.value) == (f"{url} answered with an empty body (0 bytes), not a file; check the URL — "
                                  "nothing was kept")
        assert _Handler.hits[path] == attempt  # asked again: nothing was cached
    assert list(tmp_path.iterdir()) == []


def test_a_body_of_unknown_length_is_kept_only_when_it_ends_cleanly(server, tmp_path):
    """HTTP ends a body without a length by closing the connection: a clean close is the whole file; a stream that
    ends with an error (a chunk cut short) is refused and nothing is kept."""
    base, _ = server
    assert download_url(base + "/nolen/m.bin", None, tmp_path, progress=False).read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match=r"^download of .*/chunkcut/m\.bin was interrupted after 1000 bytes "
                                            r"\(.*\); nothing was kept — run again$"):
        download_url(base + "/chunkcut/m.bin", None, tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut").exists() or _files(tmp_path / "cut") == []


# ------------------------------------------------------------------ 3. open_clip's checksum prefix
RELEASE = "/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-quickgelu-laion400m_e32-46683a32.pt"


def test_open_clip_release_urls_carry_a_sha256_prefix():
    assert sha256_in_url("https://github.com" + RELEASE) == "46683a32"
    assert sha256_in_url("https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/"
                         "vit_b_32-laion2b_e16-af8dbd0c.pth") == "af8dbd0c"
    openai = ("https://openaipublic.azureedge.net/clip/models/"
              "40d3657155a9f7c1e2b7e8f4a4b5cbbe2a0dd48c69df0a71b5b4a6e1a35e1b8c/ViT-B-32.pt")
    assert sha256_in_url(openai) == "40d3657155a9f7c1e2b7e8f4a4b5cbbe2a0dd48c69df0a71b5b4a6e1a35e1b8c"
    assert sha256_in_url("https://example.com/weights/vit_b_32-laion400m_e32-46683a32.pt") is None  # not open_clip's
    assert sha256_in_url("https://github.com/mlfoundations/x/releases/model-e32.pt") is None  # no hex suffix


def test_an_open_clip_release_file_whose_sha256_does_not_start_as_named_is_refused(server, tmp_path):
    """open_clip refuses a file whose SHA-256 does not start with the 8 hex digits its release file name ends with;
    clipzoo accepted and cached it (the fallback when the hub copy cannot be fetched)."""
    from clipzoo.backends.open_clip_plan import _fetch_pretrained

    base, files = server
    files[RELEASE] = PAYLOAD  # sha256 9f72…, not 46683a32…
    card = clipzoo.REGISTRY.resolve("open_clip:ViT-B-32/laion2b_s34b_b79k")
    with pytest.raises(DownloadError) as err:
        _fetch_pretrained(card, {"url": base + RELEASE}, tmp_path)
    assert str(err.value) == (f"checksum mismatch for {base + RELEASE}: expected sha256 46683a32…, got "
                              f"{hashlib.sha256(PAYLOAD).hexdigest()}; the download is corrupt or the file changed "
                              "upstream — nothing was kept")
    assert list(tmp_path.iterdir()) == []
    good = RELEASE.replace("46683a32", hashlib.sha256(PAYLOAD).hexdigest()[:8])
    files[good] = PAYLOAD
    path = _fetch_pretrained(card, {"url": base + good}, tmp_path)
    assert path == tmp_path / good.rsplit("/", 1)[1] and path.read_bytes() == PAYLOAD


# ------------------------------------------------------------------ 4. slow servers
def test_a_trickling_server_fails_in_bounded_time_with_one_line(server, tmp_path, monkeypatch):
    """A server sending a byte now and then reset the per-read timeout for ever: no error, no output."""
    monkeypatch.setattr(clipzoo.constants, "DOWNLOAD_TIMEOUT_S", 0.5)
    base, _ = server
    url = base + "/trickle/model.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_url(url, None, tmp_path, progress=False)
    assert time.monotonic() - t0 < 3  # the whole body would take 8 s
    assert re.fullmatch(rf"download of {re.escape(url)} is too slow: \d+ bytes in the last [01] s \(under 1024 "
                        r"bytes/s\) after \d+ bytes; nothing was kept — check the network and run again",
                        str(err.value)), str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_transfer_counts_the_bytes_it_received(server, tmp_path, monkeypatch):
    """"interrupted after 0 bytes" was said though 500 had arrived: 1 MiB reads buffered them."""
    monkeypatch.setattr(clipzoo.constants, "DOWNLOAD_TIMEOUT_S", 0.5)
    base, _ = server
    url = base + "/halfopen/model.bin"
    with pytest.raises(DownloadError) as err:
        download_url(url, None, tmp_path, progress=False)
    assert str(err.value) == (f"download of {url} was interrupted after 500 bytes (timed out); nothing was kept — "
                              "run again")


def test_the_download_timeout_constants_are_documented():
    """DOWNLOAD_TIMEOUT_S's docstring sat after HUB_PROBE_TIMEOUT_S's, documenting nothing."""
    tree = ast.parse(Path(clipzoo.constants.__file__).read_text())
    docs = {}
    for node, after in zip(tree.body, tree.body[1:]):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant):
            docs[node.targets[0].id] = after.value.value
    assert docs["DOWNLOAD_TIMEOUT_S"].startswith("Seconds a download may wait to connect")
    assert docs["DOWNLOAD_MIN_BYTES_PER_S"].startswith("Slowest transfer a download keeps")
    assert docs["HUB_PROBE_TIMEOUT_S"].startswith("How long clipzoo waits for the hub's host")


# ------------------------------------------------------------------ 5. killed downloads
def test_the_partial_file_of_a_killed_download_is_removed_by_the_next_download(server, tmp_path):
    """SIGKILL (the OOM killer, `timeout -s KILL`, slurm) skips every cleanup: its .part file, up to the model's
    size, stayed in the cache for good."""
    base, files = server
    cache = tmp_path / "cache"
    script = ("import sys; from clipzoo.download import download_url; "
              "download_url(sys.argv[1], None, sys.argv[2], progress=False)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", script, base + "/trickle/model.bin", str(cache)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not list(cache.rglob("*.part")) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        parts = list(cache.rglob("*.part"))
        assert [p.name.split(".")[2] for p in parts] == [str(child.pid)]  # model.bin.PID.XXXXXXXX.part
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert list(cache.rglob("*.part")) == parts  # left behind
    files["/other/w.bin"] = PAYLOAD  # the next download into that cache, of another URL
    download_url(base + "/other/w.bin", hashlib.sha256(PAYLOAD).hexdigest(), cache, progress=False)
    assert list(cache.rglob("*.part")) == []


def test_partial_files_of_running_processes_are_kept(server, tmp_path):
    base, files = server
    live = tmp_path / f"w.bin.{os.getppid()}.abcd1234.part"  # our parent runs: its download goes on
    ours = tmp_path / f"w.bin.{os.getpid()}.abcd1234.part"  # another thread of this process
    other = tmp_path / "notes.part"  # not a download's temporary
    for p in (live, ours, other):
        p.write_bytes(b"partial")
    files["/w.bin"] = PAYLOAD
    download_url(base + "/w.bin", hashlib.sha256(PAYLOAD).hexdigest(), tmp_path, progress=False)
    assert live.exists() and ours.exists() and other.exists()


# ------------------------------------------------------------------ 6. the local disk refuses
def test_a_file_size_limit_is_said_as_the_local_write_it_is(server, tmp_path):
    """EFBIG (ulimit -f) was "download … was interrupted …; run again", blaming the transfer."""
    base, files = server
    files["/big/model.bin"] = PAYLOAD
    script = ("import sys; from clipzoo.download import download_url\n"
              "try: download_url(sys.argv[1], None, sys.argv[2], progress=False)\n"
              "except Exception as exc: print(type(exc).__name__, exc)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script, base + "/big/model.bin", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))).stdout
    folder = hashlib.sha256((base + "/big/model.bin").encode()).hexdigest()[:16]
    assert out == (f"DownloadError cannot write {tmp_path / folder / 'model.bin'} (File too large): check the disk, "
                   "the file size limit (ulimit -f) and the folder's permissions (or set --cache-dir / "
                   "CLIPZOO_CACHE), then rerun (nothing was kept)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_said_as_such(server, tmp_path, monkeypatch):
    base, files = server
    files["/full/model.bin"] = PAYLOAD

    class FullDisk:
        def __init__(self, fd, mode):
            self.f = open(fd, mode)  # noqa: SIM115

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(clipzoo.download.os, "fdopen", FullDisk)
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(DownloadError) as err:
        download_url(base + "/full/model.bin", sha, tmp_path, progress=False)
    assert str(err.value) == (f"no space left writing {tmp_path / 'model.bin'}; free some space (or set --cache-dir "
                              "/ CLIPZOO_CACHE) and rerun (nothing was kept)")
    assert list(tmp_path.iterdir()) == []


def test_an_announced_length_larger_than_the_free_space_is_refused_before_writing(server, tmp_path):
    base, _ = server
    url = base + "/huge/model.bin"
    with pytest.raises(DownloadError) as err:
        download_url(url, None, tmp_path, progress=False)
    folder = tmp_path / hashlib.sha256(url.encode()).hexdigest()[:16]
    assert re.fullmatch(rf"{re.escape(url)} is 1,000,000,000,000,000 bytes, more than the [\d,]+ bytes free in "
                        rf"{re.escape(str(folder))}; free some space \(or set --cache-dir / CLIPZOO_CACHE\) — nothing "
                        "was kept", str(err.value)), str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["cache_is_a_file", "name_too_long"])
def test_a_cache_the_file_system_refuses_is_one_download_error(server, tmp_path, case):
    """A cache folder that cannot be made, or a URL file name too long for the file system, escaped as a bare
    OSError (past the `except DownloadError` fallbacks of the library)."""
    base, files = server
    cache = tmp_path / "cache"
    name = "model.bin"
    if case == "cache_is_a_file":
        cache.write_text("not a folder")
        cache = cache / "url"
    else:
        name = "m" * 300 + ".bin"
    files["/" + name] = PAYLOAD
    with pytest.raises(DownloadError, match=r"^cannot write .*\((Not a directory|File exists|File name too long)\): "
                                            r"check the disk, .* then rerun \(nothing was kept\)$"):
        download_url(base + "/" + name, hashlib.sha256(PAYLOAD).hexdigest(), cache, progress=False)


# ------------------------------------------------------------------ 7. the stale-file race
def test_a_stale_cached_file_another_process_removed_first_is_fetched(server, tmp_path, monkeypatch):
    """Two processes found one stale cached file; the second to unlink it died of FileNotFoundError."""
    base, files = server
    files["/race/m.bin"] = PAYLOAD
    (tmp_path / "m.bin").write_bytes(b"stale")
    real = clipzoo.download.sha256_of

    def digest_then_lose_the_race(path, *args):
        digest = real(path, *args)
        Path(path).unlink()  # the other process removes it between our check and our unlink
        return digest

    monkeypatch.setattr(clipzoo.download, "sha256_of", digest_then_lose_the_race)
    path = download_url(base + "/race/m.bin", hashlib.sha256(PAYLOAD).hexdigest(), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD


# ------------------------------------------------------------------ 9. malformed card checksums
@pytest.mark.parametrize("sha", ["785b0751", "not-a-hash", "0" * 63 + "g"])
def test_a_malformed_sha256_is_refused_at_registration(sha):
    """An 8-hex prefix or a non-hex value was registered; each load then downloaded the whole file and reported a
    "checksum mismatch … the download is corrupt"."""
    with pytest.raises(ClipzooError) as err:
        clipzoo.register(architecture="clip", publisher="test", id="bad-sha", url="https://example.com/m.pt",
                         sha256=sha)
    assert str(err.value) == (f"register(): sha256 must be the file's SHA-256, 64 hex digits, got {sha!r} "
                              "(`sha256sum FILE` prints it); or leave it out")
    assert "[clip - test - bad-sha]" not in [c.alias for c in clipzoo.list_models(publisher="test")]


def test_a_full_sha256_in_either_case_registers():
    card = clipzoo.register(architecture="clip", publisher="test", id="good-sha", url="https://example.com/m.pt",
                            sha256="AB" * 32)
    clipzoo.REGISTRY.unregister(card.alias)


# ------------------------------------------------------------------ 10. a remote URL ending in `..`
@pytest.mark.parametrize("tail", ["..", "."])
def test_a_remote_url_ending_in_dot_dot_is_refused(tmp_path, tail):
    """`memory://bucket/x/..` was copied into CACHE/remote/, outside its own hashed folder."""
    fsspec = pytest.importorskip("fsspec")
    from fsspec.implementations.memory import MemoryFile

    from clipzoo.download import fetch_remote

    fs = fsspec.filesystem("memory")
    fs.store["/bkt-dots/x/../escape.bin"] = MemoryFile(fs, "/x", b"outside")
    fs.pipe("/bkt-dots/x/model.bin", b"model")
    url = f"memory://bkt-dots/x/{tail}"
    try:
        with pytest.raises(DownloadError) as err:
            fetch_remote(url, tmp_path / "cache")
    finally:
        fs.rm("/bkt-dots", recursive=True)
        fs.store.pop("/bkt-dots/x/../escape.bin", None)
    assert str(err.value) == (f"model URL {url!r} ends in {tail!r}; name the model file or folder itself — nothing "
                              "was fetched")
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ 11. http and https only
@pytest.mark.parametrize("url", ["file:///etc/hostname", "ftp://127.0.0.1:1/model.bin",
                                 "data:application/octet-stream;base64,QUJD"])
def test_only_http_and_https_urls_are_downloaded(tmp_path, url):
    """`file:///dev/zero` was copied until the disk or the file size limit gave out, `file:///etc/hostname` copied
    into the URL cache."""
    with pytest.raises(DownloadError) as err:
        download_url(url, None, tmp_path, progress=False)
    assert str(err.value) == (f"cannot download {url!r}: only http:// and https:// URLs are downloaded; load a local "
                              "file by its path, or a model at an fsspec URL (s3://, gs://, …) by that URL")
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_loop_is_one_line(server, tmp_path):
    """urllib's redirect-loop error runs to three lines; the DownloadError quoting it is one."""
    base, _ = server
    with pytest.raises(DownloadError) as err:
        download_url(base + "/loop/model.bin", None, tmp_path, progress=False)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"cannot download {base}/loop/model.bin (HTTP Error 302: The HTTP server "
                                      "returned a redirect error that would lead to an infinite loop. The last 30x "
                                      "error message")
