"""Issue 17 §6, clip-retrieval's API so its users can switch: ``POST /knn-service``, ``POST /metadata`` and
``GET /indices-list`` beside our routes, several named indices in one server, tested with clip-retrieval's
own ``ClipClient`` unchanged against a live server on 127.0.0.1.

``ClipClient`` is clip-retrieval 2.45.0's ``clip_retrieval/clip_client.py``, imported as
``clip_retrieval.clip_client``. The package's ``__init__`` imports its whole back end (flask_restful, h5py,
all_clip, wandb, …), which the suite does not install (.ci/run installs clip-retrieval with --no-deps: its
pins — numpy<2, sentence-transformers<3 — conflict with ours); when that import fails, the client module
(which needs only ``requests``) is imported from the installed package without running its ``__init__``.
"""
from __future__ import annotations

import http.server
import importlib
import importlib.util
import json
import socket
import sys
import threading
import time
import types

import pytest

pytest.importorskip("fastapi")

from _serve_common import b64, built, png_bytes  # noqa: E402,F401  (fixtures)
from clipzoo.index import build_index, open_index  # noqa: E402
from clipzoo.serve import create_app, running  # noqa: E402
from clipzoo.serve.routers.clip_retrieval import DEDUP_THRESHOLD, URL_DISABLED  # noqa: E402
from clipzoo.serve.url_fetch import UrlFetcher, is_public  # noqa: E402

MAX_IMAGE_PIXELS = 100_000  # small, so a bomb test needs no large file


def clip_client_module():
    """``clip_retrieval.clip_client``, unchanged (see the module docstring)."""
    try:
        return importlib.import_module("clip_retrieval.clip_client")
    except ImportError as exc:
        if exc.name in ("clip_retrieval", "clip_retrieval.clip_client"):
            raise AssertionError("clip-retrieval is not installed: pip install --no-deps clip-retrieval==2.45.0 "
                                 "(as .ci/run does)") from exc
    spec = importlib.util.find_spec("clip_retrieval")  # finds the package without running its __init__
    package = types.ModuleType("clip_retrieval")
    package.__path__ = list(spec.submodule_search_locations)
    saved = sys.modules.get("clip_retrieval")
    sys.modules["clip_retrieval"] = package
    try:
        return importlib.import_module("clip_retrieval.clip_client")
    finally:
        sys.modules.pop("clip_retrieval.clip_client", None)
        if saved is None:
            sys.modules.pop("clip_retrieval", None)
        else:
            sys.modules["clip_retrieval"] = saved


@pytest.fixture(scope="module")
def other_index(built):
    """A second index: only the circles and stars of the shared folder (its own ids)."""
    folder = built.root / "cr-other"
    if not (folder / "index").exists():
        import shutil

        for shape in ("circle", "star"):
            shutil.copytree(built.images / shape, folder / "images" / shape)
        build_index(folder / "images", folder / "index", model=built.model, workers=0)
    return folder / "index"


@pytest.fixture(scope="module")
def app(built, other_index):
    app = create_app({"main": built.index, "other": other_index}, max_image_pixels=MAX_IMAGE_PIXELS)
    yield app
    app.state.indices.close()


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def live(app):
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def ClipClient():  # noqa: N802 - the class
    return clip_client_module().ClipClient


def search_ids(client, k: int, dedup: bool, **query) -> list[int]:
    body = {**query, "k": k, **({"dedup": DEDUP_THRESHOLD} if dedup else {})}
    r = client.post("/search", json=body)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


# ------------------------------------------------------------------ ClipClient, unchanged
@pytest.mark.parametrize("deduplicate", [True, False])
def test_clip_retrieval_api_clip_client_text_image_embedding_equal_search(client, live, built, ClipClient,
                                                                          deduplicate):
    cc = ClipClient(url=live + "/knn-service", indice_name="main", num_images=12, deduplicate=deduplicate)
    image_file = sorted(built.images.glob("star/*.png"))[0]
    vector = built.model.encode_text(["a green triangle"])[0].float().tolist()
    for got, query in [(cc.query(text="a red circle"), {"text": "a red circle"}),
                       (cc.query(image=str(image_file)), {"image": b64(image_file.read_bytes())}),
                       (cc.query(embedding_input=vector), {"embedding": vector})]:
        want = client.post("/search", json={**query, "k": 12, "dedup": DEDUP_THRESHOLD if deduplicate else None})
        hits = want.json()["hits"]
        assert [r["id"] for r in got] == [h["id"] for h in hits]
        assert 0 < len(hits) < 12 if deduplicate else len(hits) == 12  # (42 shapes hold few distinct ones)
        assert [r["similarity"] for r in got] == pytest.approx([h["score"] for h in hits], abs=1e-6)
        assert [r["caption"] for r in got] == [h["caption"] for h in hits]
        for r in got:  # the fields ClipClient documents, the url a thumbnail of this server
            assert {"id", "similarity", "url", "caption"} <= set(r)
            assert r["url"] == f"{live}/indices/main/thumb/{r['id']}"
    first = cc.query(image=str(image_file))[0]
    assert first["relpath"] == f"star/{image_file.name}" and first["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_clip_retrieval_api_deduplicate_is_search_dedup_at_0_94(client):
    plain = search_ids(client, 42, False, text="a shape")
    deduped = search_ids(client, 42, True, text="a shape")
    assert len(deduped) < len(plain) == 42  # near-duplicates (cosine >= 0.94) dropped: it has an effect
    got = client.post("/knn-service", json={"text": "a shape", "num_images": 42, "deduplicate": True}).json()
    assert [r["id"] for r in got] == deduped


def test_clip_retrieval_api_named_indices(client, live, other_index, built, ClipClient):
    assert client.get("/indices-list").json() == ["main", "other"]
    cc = ClipClient(url=live + "/knn-service", indice_name="other", num_images=5, deduplicate=False)
    got = cc.query(text="a red circle")
    with open_index(other_index, model=built.model) as idx:
        want = idx.search_text("a red circle", k=5)
        assert idx.count == 12
    assert [r["id"] for r in got] == [h.id for h in want]
    assert {r["partition"] for r in got} <= {"circle", "star"}
    assert all(r["url"] == f"{live}/indices/other/thumb/{r['id']}" for r in got)
    thumb = client.get(f"/indices/other/thumb/{got[0]['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    # the main index is the one /search uses; without indice_name /knn-service uses it too
    main = client.post("/knn-service", json={"text": "a red circle", "num_images": 5}).json()
    assert [r["id"] for r in main] == search_ids(client, 5, False, text="a red circle")
    r = client.post("/knn-service", json={"text": "x", "indice_name": "laion5B"})
    assert r.status_code == 404
    assert r.json()["detail"] == ("unknown indice_name 'laion5B'; this server's indices: main, other "
                                  "(GET /indices-list)")
    assert client.get("/indices/laion5B/thumb/1").status_code == 404
    assert client.get("/indices/other/thumb/99999").status_code == 404


def test_clip_retrieval_api_num_images_and_num_result_ids(client):
    got = client.post("/knn-service", json={"text": "a blue square", "num_images": 3, "num_result_ids": 7}).json()
    assert [r["id"] for r in got] == search_ids(client, 7, False, text="a blue square")
    assert all({"url", "caption", "relpath"} <= set(r) for r in got[:3])
    assert all(set(r) == {"id", "similarity"} for r in got[3:])  # the rest: ids for /metadata
    for field in ("num_images", "num_result_ids"):
        r = client.post("/knn-service", json={"text": "x", field: 1001})
        assert r.status_code == 422 and r.json()["detail"] == (
            f"invalid request: {field}: Input should be less than or equal to 1000")
        assert client.post("/knn-service", json={"text": "x", field: 0}).status_code == 422
    assert client.post("/knn-service", json={"text": "x", "num_images": 1000}).status_code == 200


def test_clip_retrieval_api_metadata(client):
    got = client.post("/knn-service", json={"text": "a yellow star", "num_images": 2, "num_result_ids": 6}).json()
    ids = [r["id"] for r in got]
    meta = client.post("/metadata", json={"ids": ids + [987654], "indice_name": "main"}).json()
    assert [m["id"] for m in meta] == ids + [987654] and meta[-1]["metadata"] is None
    for r, m in zip(got[:2], meta):  # the same metadata /knn-service merged into its first results
        assert m["metadata"] == {k: r[k] for k in ("url", "caption", "relpath", "partition")}
    items = [client.get(f"/items/{i}").json() for i in ids]
    assert [m["metadata"]["caption"] for m in meta[:-1]] == [it["caption"] for it in items]
    assert client.post("/metadata", json={"ids": [], "indice_name": "nope"}).json() == []  # as clip-retrieval
    for bad in ([2**63], [-1], list(range(1001))):
        assert client.post("/metadata", json={"ids": bad}).status_code == 422
    assert client.post("/metadata", json={"ids": [1], "indice_name": "nope"}).status_code == 404


def test_clip_retrieval_api_front_end_body_and_ignored_fields(client):
    """The body clip-retrieval's web front end sends (every field, aesthetic ones as strings) gives the
    same answer as the bare query: mclip, aesthetic, safety and violence fields change nothing."""
    bare = client.post("/knn-service", json={"text": "a white cross", "num_images": 8}).json()
    front = {"text": "a white cross", "image": None, "image_url": None, "embedding_input": None,
             "modality": "image", "num_images": 8, "indice_name": "main", "num_result_ids": 8,
             "use_mclip": True, "deduplicate": False, "use_safety_model": True, "use_violence_detector": True,
             "aesthetic_score": "9", "aesthetic_weight": "0.5", "some_future_field": 1}
    assert client.post("/knn-service", json=front).json() == bare
    assert client.post("/knn-service", json={**front, "aesthetic_score": 9, "aesthetic_weight": 0.5}).json() == bare
    assert client.post("/knn-service", json={**front, "aesthetic_score": "", "aesthetic_weight": ""}).json() == bare
    # the original's order: a non-empty text first, then the image
    assert client.post("/knn-service", json={**front, "image": b64(png_bytes())}).json() == bare
    r = client.post("/knn-service", json={**front, "modality": "text"})
    assert r.status_code == 422 and r.json()["detail"] == (
        "modality 'text' is not served: clipzoo indices hold image embeddings only; use modality 'image'")
    r = client.post("/knn-service", json={"num_images": 3})
    assert r.status_code == 400 and r.json()["detail"] == (
        "nothing to search: give text, image (base64), image_url or embedding_input")


def test_clip_retrieval_api_front_end_posts_json_as_text_plain(client):
    """clip-retrieval's web front end sends its JSON with fetch's default type, text/plain: /knn-service and
    /metadata (read-only) take it; our own JSON routes still refuse it (415, cross-site forms)."""
    body = json.dumps({"text": "a white cross", "num_images": 5})
    plain = {"content-type": "text/plain;charset=UTF-8"}
    answer = client.post("/knn-service", content=body, headers=plain)
    assert answer.status_code == 200
    assert answer.json() == client.post("/knn-service", content=body,
                                        headers={"content-type": "application/json"}).json()
    ids = [hit["id"] for hit in answer.json()[:2]]
    meta = client.post("/metadata", content=json.dumps({"ids": ids}), headers=plain)
    assert meta.status_code == 200 and [m["id"] for m in meta.json()] == ids
    assert client.post("/search", content=json.dumps({"text": "a", "k": 2}), headers=plain).status_code == 415
    assert client.post("/knn-service", content="text=a", headers={
        "content-type": "application/x-www-form-urlencoded"}).status_code == 415


def test_clip_retrieval_api_hostile_input(client):
    r = client.post("/knn-service", json={"image": "not base64 !!"})
    assert r.status_code == 400 and "not valid base64" in r.json()["detail"]
    big = png_bytes(size=(400, 400))  # 160,000 pixels, over this server's 100,000
    r = client.post("/knn-service", json={"image": b64(big)})
    assert r.status_code == 413 and "160,000" in r.json()["detail"]
    r = client.post("/knn-service", json={"embedding_input": [0.1, 0.2]})
    assert r.status_code == 400 and r.json()["detail"].startswith("embedding_input has 2 values;")
    r = client.post("/knn-service", content=b'{"embedding_input": [1.0, NaN]}')
    assert r.status_code == 422 and r.json()["detail"].startswith("invalid request: embedding_input.1:")
    r = client.post("/knn-service", content=b'{"text": "\\ud800"}')
    assert r.status_code == 422 and "lone surrogate" in r.json()["detail"]
    r = client.post("/knn-service", json={"text": "x" * 2001})
    assert r.status_code == 422


# ------------------------------------------------------------------ image_url
def test_clip_retrieval_api_image_url_disabled_by_default(client):
    r = client.post("/knn-service", json={"image_url": "https://example.com/cat.jpg", "num_images": 3})
    assert r.status_code == 422 and r.json()["detail"].startswith("URL fetching is disabled")


class Files(http.server.BaseHTTPRequestHandler):
    """A local web server for the fetcher: an image, redirects, a lie about size, a slow drip."""

    image = png_bytes()

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        try:
            self._answer()
        except OSError:  # the fetcher hung up (what the slow ones are for)
            pass

    def _answer(self):
        path = self.path
        if path == "/cat.png":
            self._send(200, self.image)
        elif path == "/moved":
            self._send(302, b"", Location="/cat.png")
        elif path == "/loop":
            self._send(302, b"", Location="/loop")
        elif path == "/to-file":
            self._send(302, b"", Location="file:///etc/passwd")
        elif path == "/huge-declared":
            self._send(200, b"", **{"Content-Length": str(10**9)})
        elif path == "/huge-streamed":  # no length; more bytes than the limit
            self.send_response(200)
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"\0" * 4096)
        elif path == "/drip":  # one byte at a time, each in time, the whole too slow
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._send(404, b"no")

    def _send(self, status, body, **headers):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def files():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_clip_retrieval_api_image_url_refuses_private_addresses_and_other_schemes(built, files):
    from fastapi.testclient import TestClient

    app = create_app(built.index, allow_url=True, max_body_bytes=1 << 20)
    fetcher = app.state.indices.fetcher
    assert (fetcher.max_bytes, fetcher.timeout, fetcher.allow_private) == (1 << 20, 10.0, False)
    assert app.state.indices.names == ["default"]  # a plain index keeps working, named "default"
    with TestClient(app) as c:
        for url in (f"{files}/cat.png", "http://localhost/x.png", "http://10.1.2.3/x.png",
                    "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.png", "http://[::ffff:127.0.0.1]/",
                    "http://0.0.0.0/x.png", "http://2130706433/x.png", "https://192.168.0.1/x.png"):
            r = c.post("/knn-service", json={"image_url": url})
            assert r.status_code == 422, url
            assert "is a private or local address" in r.json()["detail"] and "only public" in r.json()["detail"]
        for url, scheme in (("file:///etc/passwd", "file"), ("ftp://example.com/x.png", "ftp"),
                            ("gopher://example.com/", "gopher")):
            r = c.post("/knn-service", json={"image_url": url})
            assert r.status_code == 422
            assert r.json()["detail"] == f"image_url must be an http or https URL, not {scheme!r} one"
    app.state.indices.close()
    assert not any(is_public(a) for a in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "100.64.0.1", "::1", "fe80::1",
                                          "::ffff:10.0.0.1", "224.0.0.1", "fc00::1"))
    assert all(is_public(a) for a in ("1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"))


def test_clip_retrieval_api_image_url_fetch_is_bounded(client, app, live, files, ClipClient, monkeypatch):
    cc = ClipClient(url=live + "/knn-service", indice_name="main", num_images=6, deduplicate=False)
    assert cc.query(image=files + "/cat.png") == {"detail": URL_DISABLED}  # ClipClient sends it as image_url
    # a fetcher allowed to reach 127.0.0.1 (only tests can: the CLI has no such switch)
    monkeypatch.setattr(app.state.indices, "fetcher",
                        UrlFetcher(max_bytes=100_000, timeout=1.0, allow_private=True))
    want = client.post("/knn-service", json={"image": b64(Files.image), "num_images": 6}).json()
    assert [r["id"] for r in cc.query(image=files + "/cat.png")] == [r["id"] for r in want]
    assert [r["id"] for r in want] == search_ids(client, 6, False, image=b64(Files.image))
    for path in ("/cat.png", "/moved"):
        got = client.post("/knn-service", json={"image_url": files + path, "num_images": 6})
        assert got.status_code == 200 and got.json() == want
    cases = {"/huge-declared": (413, "larger than the limit of 100,000 bytes (1,000,000,000 bytes)"),
             "/huge-streamed": (413, "larger than the limit of 100,000 bytes"),
             "/loop": (400, "redirected more than 3 times"),
             "/to-file": (422, "image_url must be an http or https URL, not 'file' one"),
             "/missing": (400, "answered HTTP 404")}
    for path, (status, words) in cases.items():
        r = client.post("/knn-service", json={"image_url": files + path})
        assert r.status_code == status and words in r.json()["detail"], (path, r.text)
    t0 = time.monotonic()
    r = client.post("/knn-service", json={"image_url": files + "/drip"})
    assert r.status_code == 400 and r.json()["detail"] == "image_url: 127.0.0.1 did not answer within 1 s"
    assert time.monotonic() - t0 < 2.5  # the whole fetch is bounded, not each read


# ------------------------------------------------------------------ the CLI
def test_clip_retrieval_api_cli_serves_named_indices(built, other_index, monkeypatch):
    from typer.testing import CliRunner

    import clipzoo.serve as serving
    from clipzoo.cli import app as cli
    from clipzoo.serve.names import parse_index_args

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen = {}
    monkeypatch.setattr(serving, "run", lambda app, **kw: seen.update(app=app))
    r = CliRunner().invoke(cli, ["serve", f"main={built.index}", f"other={other_index}", "--port", str(port),
                                 "--allow-url"])
    assert r.exit_code == 0, r.output
    indices = seen["app"].state.indices
    assert indices.names == ["main", "other"] and indices.fetcher is not None
    assert seen["app"].state.service is indices.services["main"]  # our routes use the first
    assert "serves: main (42 items), other (12 items)" in r.output
    indices.close()
    r = CliRunner().invoke(cli, ["serve", str(built.index), "--port", str(port)])
    assert r.exit_code == 0 and seen["app"].state.indices.names == ["default"]
    assert seen["app"].state.indices.fetcher is None
    seen["app"].state.indices.close()
    for args, line in [([str(built.index), str(other_index)], "has no name: name each index when serving several"),
                       ([f"main={built.index}", f"main={other_index}"], "index name 'main' is given twice"),
                       ([f"bad name={built.index}"], "index name 'bad name' is not valid"),
                       (["main=/no/such.index"], "index '/no/such.index' does not exist")]:
        r = CliRunner().invoke(cli, ["serve", *args, "--port", str(port)])
        assert r.exit_code == 2 and line in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert list(parse_index_args([f"a={built.index}"])) == ["a"]
    assert parse_index_args([str(built.index)]) == {"default": built.index}


def test_clip_retrieval_api_token(built):
    from fastapi.testclient import TestClient

    app = create_app(built.index, token="s3cret")
    with TestClient(app) as c:
        for method, path, body in (("get", "/indices-list", None), ("post", "/knn-service", {"text": "a"}),
                                   ("post", "/metadata", {"ids": [1]}), ("get", "/indices/default/thumb/1", None)):
            kwargs = {"json": body} if body is not None else {}
            assert getattr(c, method)(path, **kwargs).status_code == 401
            ok = getattr(c, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
            assert ok.status_code == 200, (path, ok.text)
    app.state.indices.close()


def test_clip_retrieval_api_malformed_bodies_are_4xx(client):
    """Wrong types, out-of-range numbers, odd bodies: every answer a 4xx with a one-line detail."""
    knn = [{"text": ["a"]}, {"text": 5}, {"num_images": "many", "text": "a"}, {"num_images": 10**30, "text": "a"},
           {"embedding_input": [[0.1]]}, {"embedding_input": "0.1,0.2"}, {"embedding_input": []},
           {"indice_name": 7, "text": "a"}, {"indice_name": "x" * 65, "text": "a"}, {"image": 5}, {"image": ""},
           {"image_url": ["http://a"]}, {"text": "   "}, {"modality": None, "text": "a"}, {"deduplicate": "maybe"},
           {"aesthetic_score": [9], "text": "a"}, [], "text", None, 3, {"image": b64(b"GIF89a not really")}]
    meta = [{"ids": "1,2"}, {"ids": [1.5]}, {"ids": None}, {}, {"ids": [1], "indice_name": {"a": 1}}, [1, 2]]
    for path, bodies in (("/knn-service", knn), ("/metadata", meta)):
        for body in bodies:
            r = client.post(path, json=body)
            assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
            assert "\n" not in r.json()["detail"]
    for raw in (b"", b"{", b'{"text": "a"', b"\xff\xfe", b"[" * 100_000):
        r = client.post("/knn-service", content=raw)
        assert 400 <= r.status_code < 500, (raw[:10], r.status_code)
