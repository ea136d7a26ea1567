"""Issue 17 §7: offline, a download that cannot connect fails in <= 10 s with one line, no retry spam.

Against a closed local port (connection refused) and a blackhole (a server that accepts and never answers):
direct URL downloads give up after ``DOWNLOAD_TIMEOUT_S`` (10 s; 1 s here to keep the test short), and hub
files are read from the local cache only once one connection attempt to the hub's host failed — instead of
huggingface_hub's five retries with back-off (~40 s of "Retrying in 8s" lines)."""
from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from clipzoo import constants, download
from clipzoo.cli import app
from clipzoo.download import download_url, hub_file
from clipzoo.errors import DownloadError, ModelNotCachedError


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return port


@pytest.fixture
def blackhole():
    """A server that accepts connections and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    for c in held:
        c.close()
    srv.close()


def test_download_timeout_is_at_most_10_s():
    assert constants.DOWNLOAD_TIMEOUT_S <= 10 and constants.HUB_PROBE_TIMEOUT_S <= 10


def test_closed_port_fails_fast_with_one_line(closed_port, tmp_path):
    url = f"http://127.0.0.1:{closed_port}/model.pt"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_url(url, None, tmp_path, progress=False)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    folder = hashlib.sha256(url.encode()).hexdigest()[:16]  # a URL without a checksum: a folder of its own
    assert msg == (f"cannot download {url} (<urlopen error [Errno 111] Connection refused>); check the URL and the "
                   f"network, or place the file at {tmp_path / folder / 'model.pt'} yourself")
    assert "\n" not in msg and list(tmp_path.iterdir()) == []


def test_blackhole_times_out_with_one_line(blackhole, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "DOWNLOAD_TIMEOUT_S", 1.0)
    url = f"http://127.0.0.1:{blackhole}/model.pt"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"^cannot download .*/model.pt \((<urlopen error )?timed out>?\); check"):
        download_url(url, None, tmp_path, progress=False)
    assert 0.9 < time.monotonic() - t0 < 4  # the timeout, once: no retry
    assert list(tmp_path.iterdir()) == []


def test_hub_unreachable_reads_the_cache_only(closed_port, tmp_path, monkeypatch, caplog):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(download, "_probe", {})
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # no proxy: the hub's host is tried directly
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    with pytest.raises(ModelNotCachedError) as err:
        hub_file("someone/tiny-model", "open_clip_model.safetensors", cache_dir=tmp_path)
    assert time.monotonic() - t0 < 5
    assert str(err.value) == (
        "cannot fetch 'open_clip_model.safetensors' of hub repo 'someone/tiny-model': it is not in the local Hugging "
        f"Face cache and the hub cannot be reached (cannot connect to 127.0.0.1:{closed_port}: Connection refused); "
        "download it once where the hub is reachable (or set HF_HOME to a cache that holds it), or pass a local "
        "folder")
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_cli_load_of_an_unreachable_url_is_one_line(closed_port, tmp_path, image_files):
    import clipzoo.backends.open_clip  # noqa: F401  (imported first: the bound is on the download, not imports)

    url = f"http://127.0.0.1:{closed_port}/tiny.pt"
    card = clipzoo.register(architecture="clip", publisher="test", id="offline-url", url=url, sha256="0" * 64)
    try:
        t0 = time.monotonic()
        result = CliRunner().invoke(app, ["compare", card.alias, "--image", image_files[0], "--text", "a cat",
                                          "--cache-dir", str(tmp_path)], env={"COLUMNS": "200"})
        assert time.monotonic() - t0 < 10
    finally:
        clipzoo.REGISTRY.unregister(card.alias)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and url in lines[0], result.stderr
    assert "Connection refused" in lines[0] and "Retrying" not in result.output


def test_behind_a_proxy_the_hub_is_not_probed_directly(closed_port, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://hub.invalid:{closed_port}")
    monkeypatch.setattr(download, "_probe", {})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert download.hub_unreachable() is None  # huggingface_hub goes through the proxy: its own errors then
    monkeypatch.delenv("HTTPS_PROXY")
    assert download.hub_unreachable().startswith("cannot connect to hub.invalid:")
