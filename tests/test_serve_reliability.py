"""The service never falls over: bad uploads, oversized bodies, path tricks, tokens, a corrupt index, load.

Issue 5, section 7. Every bad input must get a 4xx with a one-line message (never a 500) and the server
must keep serving afterwards. The load test runs 16 concurrent clients against a real uvicorn server on
127.0.0.1 for CLIPZOO_LOAD_SECONDS (default 20) seconds and prints p50/p99.
"""
from __future__ import annotations

import http.client
import io
import os
import shutil
import statistics
import struct
import threading
import time
import zlib

import pytest

pytest.importorskip("fastapi")

from _serve_common import b64, built, png_bytes  # noqa: E402,F401  (built: a fixture)

LABELS = ["circle", "square", "star"]


@pytest.fixture(scope="module")
def app(built):
    from clipzoo.serve import create_app

    return create_app(built.index, labels=LABELS, max_body_bytes=256 * 1024, model=built.model)


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def live(app):
    """The same app on a real uvicorn server on 127.0.0.1 (a free port), for the whole module."""
    from clipzoo.serve import running

    with running(app) as url:
        yield url


def still_serving(client) -> None:
    assert client.get("/health").status_code == 200
    r = client.post("/search", json={"text": "a red circle", "k": 2})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2


# ------------------------------------------------------------------ bad images
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_only_bomb(width=100_000, height=100_000) -> bytes:
    """A valid PNG header declaring 10 gigapixels, with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def real_bomb() -> bytes:
    """A real decompression bomb: an 8000×8000 (64 Mpx) all-black PNG that compresses to ~10 KB."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def corrupt(data: bytes) -> bytes:
    """The right header, garbage after it."""
    import random

    rnd = random.Random(0)
    return data[:24] + bytes(rnd.randrange(256) for _ in range(len(data) - 24))


def bad_images():
    png = png_bytes((64, 64))
    jpg = png_bytes((64, 64), fmt="JPEG")
    return {
        "zero-byte": (b"", "empty"),
        "non-image text": (b"hello, this is not an image\n" * 4, "not an image"),
        "non-image pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n", "not an image"),
        "html": (b"<!doctype html><html><body>hi</body></html>", "not an image"),
        "truncated png": (truncated(png), "truncated"),
        "truncated jpeg": (truncated(jpg, 0.4), ""),
        "corrupt png": (corrupt(png), ""),
        "corrupt jpeg": (corrupt(jpg), ""),
        "header-only bomb": (header_only_bomb(), "limit"),
        "decompression bomb": (real_bomb(), "decompression bomb"),
    }


BAD = bad_images()


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("how", ["json", "multipart"])
@pytest.mark.parametrize("route", ["/search", "/classify", "/rank"])
def test_bad_upload_is_4xx_with_a_message(client, name, how, route):
    data, fragment = BAD[name]
    extra = {"texts": ["a", "b"]} if route == "/rank" else {}
    if how == "json":
        r = client.post(route, json={"image": b64(data), **extra})
    else:
        form = {"texts": "a\nb"} if route == "/rank" else {}
        r = client.post(route, files={"image": ("upload.png", data, "image/png")}, data=form)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail
    if fragment and not (how == "json" and name == "zero-byte"):  # an empty base64 string fails validation
        assert fragment in detail, detail


def test_bad_uploads_on_the_live_server_leave_it_serving(live):
    import httpx

    with httpx.Client(base_url=live, timeout=30) as c:
        for name, (data, _) in BAD.items():
            r = c.post("/search", files={"image": ("x.png", data)})
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
            r = c.post("/embed", json={"images": [b64(data or b"x")]})
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        still_serving(c)


def test_bad_base64_and_bodies(client):
    for body, status in [({"image": "!!!not base64!!!"}, 400), ({"image": "data:image/png;base64,"}, 400)]:
        r = client.post("/search", json=body)
        assert r.status_code == status and r.json()["detail"]
    for raw in [b"{not json", b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000, b"null", b"[1, 2]",
                b'"a string"', b"", b'{"text": "\\ud800"}']:
        r = client.post("/search", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (raw[:20], r.status_code, r.text)
        assert isinstance(r.json()["detail"], str)
    r = client.post("/search", content=b'{"embedding": [' + b",".join([b"NaN"] * 32) + b"]}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["detail"]
    r = client.post("/search", files={"other": ("x.png", b"123")}, data={"text": "a"})
    assert r.status_code == 422
    still_serving(client)


def test_pixel_limit_is_per_app_and_leaves_pillow_alone(built):
    from fastapi.testclient import TestClient
    from PIL import Image

    from clipzoo.serve import create_app

    before = Image.MAX_IMAGE_PIXELS
    small = create_app(built.index, labels=LABELS, max_image_pixels=500, model=built.model)
    with TestClient(small) as c:
        r = c.post("/classify", json={"image": b64(png_bytes((32, 32)))})
        assert r.status_code == 413 and "500" in r.json()["detail"]
        assert c.post("/classify", json={"image": b64(png_bytes((16, 16)))}).status_code == 200
    assert before == Image.MAX_IMAGE_PIXELS


# ------------------------------------------------------------------ body limit
def test_oversized_body_is_413(client):
    big = b"x" * (300 * 1024)
    r = client.post("/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the streamed bytes are counted
        for _ in range(10):
            yield b"x" * (64 * 1024)

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = client.post("/classify", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413
    r = client.post("/search", json={"image": b64(big)})
    assert r.status_code == 413
    still_serving(client)


def test_a_lying_content_length_is_caught(live):
    """A client that declares a small body and sends a large one (raw HTTP on the live server)."""
    host, port = live.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/search")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    payload = b'{"text": "' + b"a" * (400 * 1024) + b'"}'
    try:
        for start in range(0, len(payload), 32 * 1024):
            piece = payload[start:start + 32 * 1024]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered 413 and closed before reading everything
    r = conn.getresponse()
    assert r.status == 413
    conn.close()
    import httpx

    with httpx.Client(base_url=live, timeout=30) as c:
        assert c.post("/search", content=b"x" * (1024 * 1024),
                      headers={"content-type": "application/json"}).status_code == 413
        still_serving(c)


# ------------------------------------------------------------------ thumbnails: ids only
# (literal dot segments are normalised away by HTTP clients: test_raw_dot_segments_on_the_live_server
# sends them byte for byte)
TRICKS = ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "-1", "1.0", "0x1", "1e3", "+1", " 1", "1%00", "%00",
          "99999", "99999999999999999999999999", "~root", "C:%5Cwindows", "1;rm", "0%0a", "１"]


@pytest.mark.parametrize("trick", TRICKS)
@pytest.mark.parametrize("route", ["/thumb", "/items"])
def test_path_tricks_and_unknown_ids_are_404(client, route, trick):
    r = client.get(f"{route}/{trick}")
    assert r.status_code == 404, (trick, r.status_code, r.text)
    assert "root:" not in r.text
    assert isinstance(r.json()["detail"], str)


def test_raw_dot_segments_on_the_live_server(live, built):
    """Paths sent byte for byte (no client normalisation) never reach a file outside the index."""
    host, port = live.removeprefix("http://").split(":")
    secret = built.root / "secret.txt"
    secret.write_text("root:x:0:0 top secret")
    for path in ["/thumb/../../../../etc/passwd", "/thumb/..%2f..%2fsecret.txt", "/thumb/../secret.txt",
                 f"/thumb/{secret}", "/thumb//etc/passwd", "/static/../secret.txt", "/static/..%2f..%2fsecret.txt",
                 "/static/%2e%2e/%2e%2e/app.py", "/thumb/%2e%2e", "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                 "/thumb/%252e%252e%252f", "/thumb/..\\..\\secret.txt"]:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 404, (path, r.status, body[:200])
        assert b"top secret" not in body and b"root:x" not in body  # the file's content never leaks


def test_thumb_of_a_file_gone_or_swapped_is_404(tmp_path):
    from fastapi.testclient import TestClient

    import clipzoo
    from clipzoo.demo import make_shapes
    from clipzoo.index import build_index
    from clipzoo.serve import create_app
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    images = make_shapes(tmp_path / "shapes", 14, image_size=32)
    model = clipzoo.load(str(write_open_clip_hub_folder(tmp_path / "m")))
    build_index(images, tmp_path / "idx", model=model, workers=0)
    with TestClient(create_app(tmp_path / "idx", model=model)) as c:
        a, b = c.post("/search", json={"text": "x", "k": 2}).json()["hits"]
        assert c.get(f"/thumb/{a['id']}").status_code == 200
        (images / b["relpath"]).unlink()
        r = c.get(f"/thumb/{b['id']}")
        assert r.status_code == 404 and "gone" in r.json()["detail"]
        target = images / a["relpath"]
        outside = tmp_path / "passwd"
        outside.write_text("root:x:0:0\n")
        target.unlink()
        target.symlink_to(outside)  # swapped for a link to a non-image after indexing
        r = c.get(f"/thumb/{a['id']}?v=2")
        assert r.status_code == 404 and "root:" not in r.text
        still_serving(c)


# ------------------------------------------------------------------ bearer token
def test_token(built):
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(built.index, labels=LABELS, token="s3cret", model=built.model)) as c:
        some = built.ids[0]
        for method, path, kwargs in [("post", "/search", {"json": {"text": "a"}}), ("get", "/info", {}),
                                     ("get", f"/items/{some}", {}), ("get", f"/thumb/{some}", {}),
                                     ("get", "/metrics", {}),
                                     ("post", "/embed", {"json": {"texts": ["a"]}}),
                                     ("post", "/classify", {"json": {"image": b64(png_bytes())}})]:
            missing = getattr(c, method)(path, **kwargs)
            assert missing.status_code == 401, path
            assert missing.headers["www-authenticate"].startswith("Bearer") and "token" in missing.json()["detail"]
            for header in ("Bearer wrong", "Bearer s3cret2", "Bearer ", "Basic czNjcmV0", "s3cret"):
                wrong = getattr(c, method)(path, headers={"Authorization": header}, **kwargs)
                assert wrong.status_code in (401, 403) and wrong.status_code != 500, (path, header)
                assert wrong.status_code == 401, (path, header, wrong.status_code)
            ok = getattr(c, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
            assert ok.status_code == 200, (path, ok.text)
        # open: liveness, the page and its files, the API docs
        for path in ("/health", "/", "/static/app.js", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        assert "s3cret" not in c.get("/").text + c.get("/static/app.js").text


def test_cli_token_from_environment(built, monkeypatch):
    from typer.testing import CliRunner

    import clipzoo.serve
    from clipzoo.cli import app as cli

    captured = {}
    monkeypatch.setattr(clipzoo.serve, "run", lambda app, **kw: captured.update(app=app, **kw))
    monkeypatch.setenv("CLIPZOO_TOKEN", "from-env")
    result = CliRunner().invoke(cli, ["serve", str(built.index), "--port", "5999", "--max-body-mb", "1"])
    assert result.exit_code == 0, result.output
    service = captured["app"].state.service
    assert service.token == "from-env" and service.max_body_bytes == 2**20 and captured["port"] == 5999
    assert captured["host"] == "127.0.0.1"


# ------------------------------------------------------------------ a corrupt index
def _copy_index(built, tmp_path):
    dst = tmp_path / "index"
    shutil.copytree(built.index, dst)
    return dst


def test_corrupt_vectors_file_is_a_clear_start_up_error(built, tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app as cli
    from clipzoo.errors import ClipzooError
    from clipzoo.serve import create_app

    index = _copy_index(built, tmp_path)
    files = [p for p in index.rglob("*") if p.is_file() and p.suffix not in (".db", ".sqlite", ".npy", ".json",
                                                                              ".sqlite3", ".wal", ".shm")]
    assert files, sorted(p.name for p in index.rglob("*"))
    for p in files:  # the FAISS files
        p.write_bytes(b"\0garbage" * 10)
    with pytest.raises(ClipzooError, match="corrupt|missing|cannot|rebuild"):
        create_app(index, model=built.model)
    result = CliRunner().invoke(cli, ["serve", str(index)])
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "corrupt" in last and f"clipzoo index repair {index}" in last  # issue 17 §3
    assert "Traceback" not in result.output


def test_corrupt_database_is_a_clear_start_up_error(built, tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app as cli
    from clipzoo.errors import ClipzooError
    from clipzoo.serve import create_app

    index = _copy_index(built, tmp_path)
    dbs = [p for p in index.rglob("*") if p.suffix in (".db", ".sqlite", ".sqlite3")]
    assert dbs, sorted(p.name for p in index.rglob("*"))
    for p in dbs:
        p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ClipzooError):
        create_app(index, model=built.model)
    result = CliRunner().invoke(cli, ["serve", str(index)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: ")


def test_port_in_use_is_a_one_line_error(built):
    import socket

    from typer.testing import CliRunner

    from clipzoo.cli import app as cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        for args in (["serve", str(built.index)], ["demo", "-n", "12"]):
            result = CliRunner().invoke(cli, [*args, "--port", str(port)])
            assert result.exit_code == 2, result.output
            assert result.output.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_missing_index_is_a_clear_start_up_error(tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app as cli

    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output and "index build" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["serve", str(empty)])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: ")


def test_overload_is_503_with_retry_after_not_a_growing_queue(built):
    """With the model busy and max_pending jobs waiting, more requests are shed with 503 + Retry-After."""
    import httpx

    from clipzoo.serve import create_app, running

    app = create_app(built.index, model=built.model, max_pending=2)
    service = app.state.service
    release = threading.Event()
    original = service.model.encode_text  # text queries are encoded in batches (serve/batcher.py)

    def slow(*args, **kwargs):
        release.wait(30)
        return original(*args, **kwargs)

    service.model.encode_text = slow
    statuses: list[int] = []
    with running(app) as url:
        def one():
            with httpx.Client(base_url=url, timeout=60) as c:
                statuses.append(c.post("/search", json={"text": "a", "k": 1}).status_code)

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while service.batcher.load() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with httpx.Client(base_url=url, timeout=30) as c:
            shed = c.post("/search", json={"text": "a", "k": 1})
            assert shed.status_code == 503 and shed.headers["retry-after"] == "1" and "busy" in shed.json()["detail"]
            assert c.get("/health").status_code == 200  # the event loop is free meanwhile
            release.set()
            for t in threads:
                t.join(60)
            assert statuses == [200, 200]
            assert c.post("/search", json={"text": "a", "k": 1}).status_code == 200


# ------------------------------------------------------------------ load
def test_load_16_concurrent_clients(live, built):
    """16 clients for CLIPZOO_LOAD_SECONDS (default 20) s on loopback: 0 errors; p50/p99 printed."""
    import random

    import httpx

    seconds = float(os.environ.get("CLIPZOO_LOAD_SECONDS", "20"))
    clients = 16
    queries = ["a red circle", "a blue square", "a small green star", "a yellow heart at the top",
               "a purple triangle on the left", "a cross", "a large diamond"]
    image = b64(png_bytes((48, 48)))
    latencies: list[float] = []
    errors: list[str] = []
    counts: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(base_url=live, timeout=30) as c:
            while time.monotonic() < deadline:
                kind = rnd.choice(["text", "text", "text", "id", "item", "thumb", "classify", "health"])
                t0 = time.perf_counter()
                try:
                    if kind == "text":
                        r = c.post("/search", json={"text": rnd.choice(queries), "k": 10})
                    elif kind == "id":
                        r = c.post("/search", json={"id": rnd.choice(built.ids), "k": 10})
                    elif kind == "item":
                        r = c.get(f"/items/{rnd.choice(built.ids)}")
                    elif kind == "thumb":
                        r = c.get(f"/thumb/{rnd.choice(built.ids)}")
                    elif kind == "classify":
                        r = c.post("/classify", json={"image": image, "k": 3})
                    else:
                        r = c.get("/health")
                    ok = r.status_code == 200
                    err = None if ok else f"{kind}: {r.status_code} {r.text[:200]}"
                except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                    err = f"{kind}: {type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    counts[kind] = counts.get(kind, 0) + 1
                    if err:
                        errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    wall = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads)
    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
    print(f"\nload: {clients} clients, {wall:.1f} s, {len(lat)} requests ({len(lat) / wall:.0f}/s), "
          f"{len(errors)} errors, p50 {p50:.1f} ms, p99 {p99:.1f} ms; mix {dict(sorted(counts.items()))}")
    assert not errors, errors[:5]
    assert len(lat) >= clients  # every client got answers
    with httpx.Client(base_url=live, timeout=30) as c:
        metrics = c.get("/metrics").text
    assert 'route="/search",status="200"' in metrics
