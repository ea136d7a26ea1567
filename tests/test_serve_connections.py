"""Issue 17 §2, Connections: a concurrency cap, header and keep-alive timeouts, a cap on an incomplete
request, repeated log lines collapsed, the Host allow-list, 415 for what a cross-site form can post, CORS
off unless asked for. Servers listen on 127.0.0.1 only."""
from __future__ import annotations

import http.client
import io
import json
import logging
import selectors
import socket
import time
from urllib.parse import urlsplit

import pytest

from _serve_common import app, built, client  # noqa: F401 (fixtures)

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

HALF_OPEN = 2000
"""Idle half-open connections the first test holds (scaled down where the open-file limit is lower)."""


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def _request(addr, method="GET", path="/health", body=None, headers=None, timeout=5.0):
    conn = http.client.HTTPConnection(*addr, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=hdrs)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _closed_by_server(socks, wait: float) -> set[int]:
    """Indices of ``socks`` the server closed (EOF or reset) within ``wait`` seconds."""
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    closed: set[int] = set()
    deadline = time.monotonic() + wait
    try:
        while len(closed) < len(socks):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(min(left, 0.2)):
                try:
                    data = key.fileobj.recv(65536)
                except (ConnectionResetError, OSError):
                    data = b""
                if not data:
                    closed.add(key.data)
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
    return closed


def _half_open_count() -> int:
    """HALF_OPEN, or what the hard open-file limit allows (each connection costs this process two fds:
    the test is client and server at once)."""
    if resource is None:
        return 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard == resource.RLIM_INFINITY or hard >= 4500:
        return HALF_OPEN
    n = max(100, (hard - 500) // 2)
    print(f"the hard open-file limit is {hard}: holding {n} half-open connections, not {HALF_OPEN}")
    return n


class _Bytes(logging.Handler):
    """Counts the bytes and keeps the lines the server logs."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.stream = io.StringIO()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record):
        self.stream.write(self.format(record) + "\n")

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def _capture_server_log() -> _Bytes:
    handler = _Bytes()
    for name in ("uvicorn", "uvicorn.access"):
        logging.getLogger(name).addHandler(handler)
    return handler


def _release(handler: _Bytes) -> None:
    for name in ("uvicorn", "uvicorn.access"):
        logging.getLogger(name).removeHandler(handler)


def test_connections_half_open_held_while_clients_are_answered(app):  # noqa: F811
    """2,000 idle half-open connections (request headers never finished, or never begun) are held while a
    normal client gets every answer in <= 1 s; the header timeout then closes them all; the log stays
    under 1 MB and the timeout's line is written at most LOG_REPEAT_BURST times."""
    from clipzoo.serve import running
    from clipzoo.serve.connections import ConnectionLimits, install_repeat_filter
    from clipzoo.serve.limits import LOG_REPEAT_BURST

    n = _half_open_count()
    header_timeout = 6.0
    install_repeat_filter().clear()
    socks: list[socket.socket] = []
    with running(app, log_level="info", limits=ConnectionLimits(header_timeout=header_timeout)) as url:
        log = _capture_server_log()
        addr = _address(url)
        try:
            t_open = time.monotonic()
            for i in range(n):  # half send a request line and headers that never end, half send nothing
                s = socket.create_connection(addr, timeout=10)
                if i % 2:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: open\r\n")  # no blank line
                socks.append(s)
            assert not _closed_by_server(socks, 0.3), "the server closed half-open connections early"
            times = []
            for i in range(8):
                t = time.monotonic()
                if i % 2:
                    status, body = _request(addr, "POST", "/search", {"text": "a red circle", "k": 3})
                    assert status == 200 and len(json.loads(body)["hits"]) == 3
                else:
                    status, body = _request(addr)
                    assert status == 200 and json.loads(body)["status"] == "ok"
                times.append(time.monotonic() - t)
            held_for = time.monotonic() - t_open
            assert held_for < header_timeout, f"opening {n} connections took {held_for:.1f} s"
            assert max(times) <= 1.0, times
            closed = _closed_by_server(socks, header_timeout + 15)
            assert len(closed) == n, f"{n - len(closed)} half-open connections still open"
            assert time.monotonic() - t_open >= header_timeout - 0.5
            status, _ = _request(addr)
            assert status == 200
        finally:
            for s in socks:
                s.close()
            _release(log)
    text = log.text
    assert len(text.encode()) < 1_000_000, len(text)
    timeouts = text.count("closed a connection that sent no complete request headers within 6 s")
    assert 1 <= timeouts <= LOG_REPEAT_BURST, timeouts


def test_connections_concurrency_cap(app):  # noqa: F811
    """Connections beyond limit_concurrency + CONNECTION_MARGIN are closed at once (bounded fds); between
    the two, requests get 503; under the limit, 200."""
    from clipzoo.serve import running
    from clipzoo.serve.connections import ConnectionLimits
    from clipzoo.serve.limits import CONNECTION_MARGIN

    limit = 16
    cap = limit + CONNECTION_MARGIN
    with running(app, limits=ConnectionLimits(limit_concurrency=limit)) as url:
        addr = _address(url)
        socks = []
        try:
            for _ in range(cap + 20):
                socks.append(socket.create_connection(addr, timeout=5))
                time.sleep(0.002)  # accepted in order
            closed = _closed_by_server(socks, 2.0)
            assert closed == set(range(cap, cap + 20)), sorted(closed)
            for s in socks[30:]:
                s.close()
            del socks[30:]
            status, body = _eventually(addr, 503)
            assert status == 503 and b"Service Unavailable" in body
            for s in socks[5:]:
                s.close()
            del socks[5:]
            assert _eventually(addr, 200)[0] == 200
        finally:
            for s in socks:
                s.close()


def _eventually(addr, status: int, within: float = 5.0) -> tuple[int, bytes]:
    """GET /health until it answers ``status`` (the server notices closed connections asynchronously)."""
    deadline = time.monotonic() + within
    while True:
        try:
            got = _request(addr)
        except (ConnectionError, http.client.HTTPException) as exc:
            got = (0, repr(exc).encode())
        if got[0] == status or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def _raw_exchange(addr, payload: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Send ``payload``; read until the server closes; (what came back, seconds until it closed)."""
    with socket.create_connection(addr, timeout=wait) as s:
        t = time.monotonic()
        s.sendall(payload)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks), time.monotonic() - t


def test_connections_keep_alive_and_incomplete_request_caps(app):  # noqa: F811
    """An idle keep-alive connection closes after keep_alive_timeout; request headers over
    max_incomplete_bytes are a 400; headers just under it are served."""
    from clipzoo.serve import running
    from clipzoo.serve.connections import ConnectionLimits
    from clipzoo.serve.limits import MAX_INCOMPLETE_REQUEST_BYTES

    with running(app, limits=ConnectionLimits(keep_alive_timeout=1.0)) as url:
        addr = _address(url)
        out, took = _raw_exchange(addr, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200") and 0.8 <= took <= 4.0, (out[:40], took)
        big = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (MAX_INCOMPLETE_REQUEST_BYTES + 4096)
        out, took = _raw_exchange(addr, big)
        assert out.startswith(b"HTTP/1.1 400") and b"Invalid HTTP request" in out and took < 3.0
        fits = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Big: "
                + b"a" * (MAX_INCOMPLETE_REQUEST_BYTES // 2) + b"\r\n\r\n")
        out, _ = _raw_exchange(addr, fits)
        assert out.startswith(b"HTTP/1.1 200")


def test_connections_late_bodies_are_cut_and_bodies_without_the_token_refused_unread(built):  # noqa: F811
    """A request whose body is not complete body_timeout after its headers is closed, also when it trickles a
    byte at a time (it held a connection slot for as long as the client liked); a body request without the
    token gets its 401 before its body is read, and the connection is closed at once."""
    from clipzoo.serve import create_app, running
    from clipzoo.serve.connections import ConnectionLimits

    body_timeout = 2.0
    head = (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n")
    app = create_app(built.index, token="tok")
    with running(app, limits=ConnectionLimits(body_timeout=body_timeout)) as url:
        addr = _address(url)
        out, took = _raw_exchange(addr, head + b"\r\n{", wait=10)
        assert out.startswith(b"HTTP/1.1 401") and b"missing bearer token" in out and took < 1.0, (out[:60], took)
        out, took = _raw_exchange(addr, head + b"Authorization: Bearer wrong\r\n\r\n{", wait=10)
        assert out.startswith(b"HTTP/1.1 401") and b"wrong bearer token" in out and took < 1.0, (out[:60], took)
        stalled = socket.create_connection(addr, timeout=10)
        trickling = socket.create_connection(addr, timeout=10)
        try:
            t0 = time.monotonic()
            for s in (stalled, trickling):
                s.sendall(head + b"Authorization: Bearer tok\r\n\r\n{")
            closed_at: dict[int, float] = {}
            while len(closed_at) < 2 and time.monotonic() - t0 < body_timeout + 8:
                if 1 not in closed_at:
                    try:
                        trickling.sendall(b" ")  # a byte every 0.25 s: progress, never the whole body
                    except OSError:
                        closed_at[1] = time.monotonic() - t0
                if 0 not in closed_at and _closed_by_server([stalled], 0.25):
                    closed_at[0] = time.monotonic() - t0
                assert _request(addr)[0] == 200  # others are answered meanwhile
            assert sorted(closed_at) == [0, 1], closed_at
            assert all(body_timeout - 0.5 <= t <= body_timeout + 5 for t in closed_at.values()), closed_at
        finally:
            stalled.close()
            trickling.close()
        status, _ = _request(addr, "POST", "/search", {"text": "a red circle", "k": 1},
                             {"Authorization": "Bearer tok"})
        assert status == 200  # a whole body in time is served


def test_connections_repeated_log_lines_collapse():
    """The same line passes LOG_REPEAT_BURST times per window; the next that passes counts the rest."""
    from clipzoo.serve.connections import RepeatFilter

    logger = logging.getLogger("clipzoo.test.repeats")
    logger.propagate = False
    handler = _Bytes()
    logger.addHandler(handler)
    repeat = RepeatFilter(burst=3, window=0.3)
    logger.addFilter(repeat)
    try:
        for i in range(500):
            logger.warning("Invalid HTTP request received.")
            if i == 0:
                try:
                    raise ValueError("boom")
                except ValueError:
                    logger.exception("a traceback")
        logger.warning("another line %d", 7)
        time.sleep(0.35)
        logger.warning("Invalid HTTP request received.")
    finally:
        logger.removeHandler(handler)
    lines = handler.text.splitlines()
    assert lines.count("WARNING clipzoo.test.repeats Invalid HTTP request received.") == 3
    assert "WARNING clipzoo.test.repeats Invalid HTTP request received. (and 497 more like it in 0.3 s)" in lines
    assert "WARNING clipzoo.test.repeats another line 7" in lines
    assert sum("Traceback" in x for x in lines) == 1


# ------------------------------------------------------------------ Host, content type, CORS
def test_connections_host_allow_list(built, client):  # noqa: F811
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app, running

    for ok in ("localhost:5020", "127.0.0.1", "[::1]:8080", "LOCALHOST", "testserver"):
        assert client.get("/health", headers={"host": ok}).status_code == 200, ok
    r = client.get("/health", headers={"host": "evil.example:80"})
    assert r.status_code == 400
    assert r.json()["detail"] == ("Host 'evil.example:80' is not allowed: this server answers only to its own "
                                  "address and localhost; start it with --allowed-host evil.example to accept "
                                  "that name")
    assert client.post("/search", json={"text": "a circle"}, headers={"host": "rebind.attacker"}).status_code == 400
    app2 = create_app(built.index, model=built.model, allowed_hosts=["photos.example.org", "*.lan"])
    with TestClient(app2) as c:
        assert c.get("/health", headers={"host": "photos.example.org:8443"}).status_code == 200
        assert c.get("/health", headers={"host": "nas.home.lan"}).status_code == 200
        assert c.get("/health", headers={"host": "lan"}).status_code == 400
        assert c.get("/health", headers={"host": "example.org"}).status_code == 400
    with running(app2) as url:  # a real server: the bound address is accepted, another name is not
        addr = _address(url)
        assert _request(addr)[0] == 200
        assert _request(addr, headers={"Host": "evil.example"})[0] == 400
        assert _request(addr, headers={"Host": f"localhost:{addr[1]}"})[0] == 200


def test_connections_json_endpoints_refuse_cross_site_form_types(client):  # noqa: F811
    body = json.dumps({"text": "a red circle", "k": 2})
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
        r = client.post("/search", content=body, headers={"content-type": ctype})
        assert r.status_code == 415, ctype
        media = ctype.split(";")[0].lower()
        assert r.json()["detail"] == (f"POST /search does not take {media}: send JSON with 'Content-Type: "
                                      "application/json' (or a multipart/form-data form with the image file)")
    assert client.post("/embed", data={"texts": "a"}).status_code == 415  # an urlencoded form
    assert client.post("/search", json={"text": "a red circle", "k": 2}).status_code == 200
    assert client.post("/search", content=body).status_code == 200  # no type (clip-retrieval's ClipClient)
    from _serve_common import png_bytes

    r = client.post("/search", files={"image": ("x.png", png_bytes(), "image/png")}, data={"k": "2"})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2  # the page's FormData upload
    assert client.get("/health", headers={"content-type": "text/plain"}).status_code == 200


def test_connections_cors_off_unless_an_origin_is_given(built, client):  # noqa: F811
    from fastapi.testclient import TestClient

    from clipzoo.errors import ClipzooError
    from clipzoo.serve import create_app

    preflight = {"origin": "https://app.example.org", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    r = client.options("/search", headers=preflight)
    assert "access-control-allow-origin" not in r.headers and r.status_code == 405
    r = client.get("/health", headers={"origin": "https://app.example.org"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    app2 = create_app(built.index, model=built.model, cors_origins=["https://app.example.org"])
    with TestClient(app2) as c:
        r = c.options("/search", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.org"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = c.options("/search", headers={**preflight, "origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = c.post("/search", json={"text": "a star", "k": 1}, headers={"origin": "https://app.example.org"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.org"
        r = c.post("/search", json={"text": "a star", "k": 1}, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with pytest.raises(ClipzooError, match="CORS origin 'app.example.org' is not an origin; give scheme://host"):
        create_app(built.index, model=built.model, cors_origins=["app.example.org"])


def test_connections_cli_flags(built, monkeypatch):  # noqa: F811
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    import clipzoo.serve
    from clipzoo.cli import app as cli
    from clipzoo.serve.connections import ConnectionLimits

    served = {}
    monkeypatch.setattr(clipzoo.serve, "run", lambda app, **kw: served.update(app=app, **kw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", str(built.index), "--port", str(port), "--allowed-host", "photos.lan",
            "--cors-origin", "https://app.example.org", "--max-batch", "4", "--max-wait-ms", "2",
            "--limit-concurrency", "100", "--header-timeout", "3", "--keep-alive-timeout", "2", "--body-timeout", "30"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert served["limits"] == ConnectionLimits(limit_concurrency=100, header_timeout=3.0, keep_alive_timeout=2.0,
                                                body_timeout=30.0)
    batcher = served["app"].state.service.batcher
    assert (batcher.max_batch, batcher.max_wait) == (4, 0.002)
    with TestClient(served["app"]) as c:
        assert c.get("/health", headers={"host": "photos.lan"}).status_code == 200
        assert c.get("/health", headers={"host": "other.lan"}).status_code == 400
        r = c.get("/health", headers={"origin": "https://app.example.org"})
        assert r.headers["access-control-allow-origin"] == "https://app.example.org"
    bad = CliRunner().invoke(cli, ["serve", str(built.index), "--port", str(port), "--header-timeout", "0"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1] == \
        "error: header_timeout must be a positive number of seconds, got 0.0"
    bad = CliRunner().invoke(cli, ["serve", str(built.index), "--port", str(port), "--max-batch", "0"])
    assert bad.exit_code == 2
    assert "max_batch must be at least 1 (1: no batching), got 0" in bad.output.strip().splitlines()[-1]


def test_connections_open_file_limit_lowers_the_cap(monkeypatch, caplog):
    """The soft open-file limit is raised to the hard one; a cap that does not fit is lowered, in one line."""
    import clipzoo.serve.connections as connections
    from clipzoo.serve.connections import ConnectionLimits, raise_nofile_limit
    from clipzoo.serve.limits import CONNECTION_MARGIN, RESERVED_FDS

    class FakeResource:
        RLIMIT_NOFILE, RLIM_INFINITY = 7, -1
        limits = (512, 1024)

        def getrlimit(self, which):
            return self.limits

        def setrlimit(self, which, value):
            self.limits = value

    fake = FakeResource()
    monkeypatch.setattr(connections, "resource", fake)
    with caplog.at_level(logging.WARNING, logger="clipzoo.serve"):
        got = raise_nofile_limit(ConnectionLimits(limit_concurrency=4096, header_timeout=3.0))
    assert fake.limits == (1024, 1024)
    room = 1024 - RESERVED_FDS - CONNECTION_MARGIN
    assert got == ConnectionLimits(limit_concurrency=room, header_timeout=3.0)
    assert caplog.messages == [f"the open-file limit is 1024: serving at most {room} connections at once (not 4096)"]
    assert raise_nofile_limit(ConnectionLimits(limit_concurrency=100)) == ConnectionLimits(limit_concurrency=100)
