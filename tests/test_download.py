"""URL downloads: verified by full SHA256, never keeping a partial or corrupt file."""
from __future__ import annotations

import hashlib
import http.server
import re
import threading

import pytest

import clipzoo
from clipzoo.download import download_url
from clipzoo.errors import DownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802
        if self.path == "/cut.bin":  # promise 1 MiB, send half, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path.endswith(".html"):  # a login / error page answered with 200
            self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", "many" if self.path.startswith("/neglen") else str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler.files
    srv.shutdown()


def test_download_verifies_and_caches(server, tmp_path):
    base, files = server
    files["/w.bin"] = PAYLOAD
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = download_url(base + "/w.bin", sha, tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    files["/w.bin"] = b"changed"  # a second call uses the verified cached file
    assert download_url(base + "/w.bin", sha, tmp_path, progress=False).read_bytes() == PAYLOAD


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    base, files = server
    files["/bad.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="checksum mismatch for .*/bad.bin: expected sha256 0000"):
        download_url(base + "/bad.bin", "0" * 64, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_keeps_nothing(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="was interrupted"):
        download_url(base + "/cut.bin", None, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_file_is_fetched_again(server, tmp_path):
    base, files = server
    files["/c.bin"] = PAYLOAD
    (tmp_path / "c.bin").write_bytes(b"half a file")
    path = download_url(base + "/c.bin", hashlib.sha256(PAYLOAD).hexdigest(), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_missing_url_is_a_clear_error(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="cannot download .*/nope.bin .*HTTP Error 404"):
        download_url(base + "/nope.bin", None, tmp_path, progress=False)


def test_registered_url_model_loads(server, tmp_path, tiny_files):
    """A card whose source is a URL + SHA256 (as OpenAI's are) downloads, verifies and loads."""
    base, files = server
    data = tiny_files["openai_jit"].read_bytes()
    files["/tiny.pt"] = data
    card = clipzoo.register(architecture="clip", publisher="test", id="tiny-url", url=base + "/tiny.pt",
                            sha256=hashlib.sha256(data).hexdigest())
    try:
        comp = clipzoo.load(card.alias, cache_dir=str(tmp_path))
        ref = clipzoo.load(str(tiny_files["openai_jit"]))
        assert comp.encode_text("a cat").equal(ref.encode_text("a cat"))
    finally:
        clipzoo.REGISTRY.unregister(card.alias)


def test_pretrained_weights_fall_back_from_hub_to_url(server, tmp_path, tiny_files):
    """open_clip pretrained tags try their hub repo, then their URL; when both fail the error names both."""
    from clipzoo.backends.open_clip_plan import _fetch_pretrained
    from clipzoo.errors import ModelNotCachedError

    base, files = server
    card = clipzoo.REGISTRY.resolve("open_clip:ViT-B-32/laion2b_s34b_b79k")  # no digest of its own
    files["/ok.pt"] = data = tiny_files["openai_jit"].read_bytes()
    path = _fetch_pretrained(card, {"hf_hub": "someone/not-cached/", "url": base + "/ok.pt"}, tmp_path)
    assert path.read_bytes() == data
    with pytest.raises(ModelNotCachedError) as err:
        _fetch_pretrained(card, {"hf_hub": "someone/not-cached/", "url": base + "/missing.pt"}, tmp_path)
    msg = str(err.value)
    assert msg.startswith("cannot fetch the weights of [clip - laion - ViT-B-32/laion2b_s34b_b79k] from any of its sources")  # noqa: E501
    assert "'someone/not-cached'" in msg and "/missing.pt" in msg and "HTTP Error 404" in msg
    # an OpenAI card's own SHA256 guards the URL: a different file is refused and not kept
    openai_card = clipzoo.REGISTRY.resolve("[clip - openai - ViT-B/32]")
    with pytest.raises(ModelNotCachedError, match="checksum mismatch .*expected sha256 40d36571"):
        _fetch_pretrained(openai_card, {"hf_hub": "someone/not-cached/", "url": base + "/ok.pt"}, tmp_path / "o")
    assert not any((tmp_path / "o").iterdir())


def test_a_server_that_never_answers_fails_in_one_line_within_the_timeout(tmp_path, monkeypatch):
    """Offline or a dead host: the download gives up after DOWNLOAD_TIMEOUT_S with one line, keeping nothing."""
    import socket
    import time

    import clipzoo.constants

    monkeypatch.setattr(clipzoo.constants, "DOWNLOAD_TIMEOUT_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # connections are queued by the kernel, and nobody ever answers them
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/weights.bin"
    t0 = time.perf_counter()
    try:
        with pytest.raises(DownloadError) as err:
            download_url(url, cache_dir=tmp_path, progress=False)
    finally:
        silent.close()
    assert time.perf_counter() - t0 < 5
    folder = hashlib.sha256(url.encode()).hexdigest()[:16]  # one folder per URL without a checksum
    assert str(err.value) == (f"cannot download {url} (timed out); check the URL and the network, "
                              f"or place the file at {tmp_path / folder / 'weights.bin'} yourself")
    assert list(tmp_path.iterdir()) == []


def test_two_urls_of_one_file_name_are_two_files(server, tmp_path):
    """Without a checksum the cache was keyed by the file name: the second URL's model was the first one's,
    never requested."""
    base, files = server
    files["/a/model.bin"], files["/b/model.bin"] = b"first", b"second"
    first = download_url(base + "/a/model.bin", None, tmp_path, progress=False)
    second = download_url(base + "/b/model.bin", None, tmp_path, progress=False)
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second") and first.name == second.name
    assert download_url(base + "/a/model.bin", None, tmp_path, progress=False) == first  # still cached


@pytest.mark.parametrize("path, said", [
    ("/login.html", "answered with an HTML page, not a file (a login, error or index page?)"),
    ("/neglen.bin", "announced a length of 'many', which is not a number of bytes"),  # was a ValueError
])
def test_what_is_no_file_is_refused_and_not_kept(server, tmp_path, path, said):
    base, files = server
    files[path] = b"<html>please log in</html>"
    with pytest.raises(DownloadError, match=re.escape(said)):
        download_url(base + path, None, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_remote_folder_listing_names_outside_its_copy_is_refused(tmp_path):
    """fetch_remote wrote a listed name holding '..' outside the cache folder."""
    fsspec = pytest.importorskip("fsspec")
    from fsspec.implementations.memory import MemoryFile

    from clipzoo.download import fetch_remote

    fs = fsspec.filesystem("memory")
    fs.pipe("/bkt-trav/model/open_clip_config.json", b"{}")
    fs.store["/bkt-trav/model/../../../../ESCAPED.txt"] = MemoryFile(fs, "/x", b"outside")
    try:
        with pytest.raises(DownloadError, match=r"lists a file named '\.\./\.\./\.\./\.\./ESCAPED.txt', which "
                                                r"would be written outside its copy; nothing was fetched$"):
            fetch_remote("memory://bkt-trav/model", tmp_path / "cache")
    finally:
        fs.rm("/bkt-trav", recursive=True)
        fs.store.pop("/bkt-trav/model/../../../../ESCAPED.txt", None)
    assert not any(p.name == "ESCAPED.txt" for p in tmp_path.parent.rglob("ESCAPED.txt"))
