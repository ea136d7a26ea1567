"""The service probed as an attacker, second round (findings of the "serve" probe): one request's bad text
no longer fails the requests batched with it; DELETE /items deletes only files the service wrote; a large
JSON body neither blocks the event loop nor costs seconds and hundreds of MB; an image_url fetch ends at its
deadline, however slowly the host drips, and URL fetches cannot take the decode threads; an upload sent again
without a caption drops its caption file; /classify refuses duplicate labels; an index of the embedded model
is named by its card; query vectors of any finite scale are searched by their direction."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")

from _serve_common import LABELS, app, b64, built, client, png_bytes  # noqa: E402,F401  (fixtures)
from clipzoo.errors import BadTextError  # noqa: E402
from test_serve_batching import _batcher, _concurrently, batched  # noqa: E402,F401  (fixtures)
from test_serve_live import AUTH, TOKEN, make_photos, png  # noqa: E402


def _call(url: str, body: "dict | bytes | None" = None, method: str = "POST", timeout: float = 60,
          headers: "dict | None" = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# ------------------------------------------------------------------ 1. one bad text fails only its own request
def test_a_too_long_text_fails_only_its_own_request_in_a_batch(batched, built):  # noqa: F811
    """One client's text over the context (truncate false) failed every request batched with it (85 of 160
    innocent requests in the probe) with a 400 that quoted the attacker's text."""
    app, url = batched
    stats = app.state.service.batcher.stats
    before = (stats.batches, stats.requests)
    bad = "word " * 300
    texts = [bad] + [f"a red circle {i}" for i in range(8)]
    for _ in range(3):
        out = _concurrently(lambda t: _call(url + "/embed", {"texts": [t]}), texts)
        status, detail = out[0][0], out[0][1]["detail"]
        assert status == 400 and detail.startswith("text 'word word word") and \
            "tokens, longer than the model's context length 77" in detail, out[0]
        for text, (status, answer) in zip(texts[1:], out[1:]):
            assert status == 200, answer  # never the other client's 400, nor its text
            row = np.asarray(answer["embeddings"], dtype=np.float64)
            assert np.abs(row - built.model.encode_text([text]).double().numpy()).max() <= 1e-6
    assert stats.batches - before[0] < stats.requests - before[1]  # they did share batches


def test_a_batch_that_fails_on_one_input_is_encoded_again_one_request_at_a_time():
    class Model:
        def __init__(self):
            self.calls: list[list[str]] = []

        def encode_text(self, texts, normalize=True, truncate=False):
            self.calls.append(list(texts))
            for t in texts:
                if t.startswith("long"):
                    raise BadTextError(f"text {t!r} is too long")
            return [len(t) for t in texts]

    model = Model()
    batcher = _batcher(model, max_batch=8, max_wait_ms=30)

    async def main():
        return await asyncio.gather(batcher.encode_text(["a", "bb"]), batcher.encode_text(["long one"]),
                                    batcher.encode_text(["ccc"], then=lambda rows: ("then", rows)),
                                    return_exceptions=True)

    first, failed, third = asyncio.run(main())
    assert first == [1, 2] and third == ("then", [3])
    assert isinstance(failed, BadTextError) and str(failed) == "text 'long one' is too long"
    assert model.calls == [["a", "bb", "long one", "ccc"], ["a", "bb"], ["long one"], ["ccc"]]  # one job


# ------------------------------------------------------------------ 2 and 5. the files DELETE and POST /items touch
@pytest.fixture
def photos_with_uploads_folder(tmp_path, built):  # noqa: F811
    """An indexed folder where the user has their own ``uploads/`` subfolder (an image and its caption)."""
    from clipzoo.index import build_index

    root = make_photos(tmp_path / "photos", 4)
    (root / "uploads").mkdir()
    (root / "uploads" / "holiday-2019.png").write_bytes(png(2019))
    (root / "uploads" / "holiday-2019.txt").write_text("our holiday")
    (root / "uploads" / "given.png").write_bytes(png(7))
    build_index(root, tmp_path / "ix", model=built.model, workers=0)
    return root, tmp_path / "ix"


def test_delete_never_deletes_a_users_file_in_a_folder_named_uploads(photos_with_uploads_folder, built):  # noqa: F811
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    root, out = photos_with_uploads_folder
    with TestClient(create_app(out, model=built.model, token=TOKEN)) as c:
        hits = c.post("/search", json={"text": "x", "k": 20}, headers=AUTH).json()["hits"]
        item = next(h["id"] for h in hits if h["relpath"] == "uploads/holiday-2019.png")
        r = c.delete(f"/items/{item}", headers=AUTH)
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert (root / "uploads" / "holiday-2019.png").read_bytes() == png(2019)  # the user's: kept
        assert (root / "uploads" / "holiday-2019.txt").read_text() == "our holiday"
        added = c.post("/items", json={"path": "uploads/given.png"}, headers=AUTH).json()  # added by path
        assert c.delete(f"/items/{added['id']}", headers=AUTH).status_code == 200
        assert (root / "uploads" / "given.png").read_bytes() == png(7)
        upload = c.post("/items", json={"image": b64(png(5)), "caption": "mine"}, headers=AUTH).json()
        written = root / upload["relpath"]
        assert written.read_bytes() == png(5) and written.with_suffix(".txt").read_text() == "mine"
        assert c.delete(f"/items/{upload['id']}", headers=AUTH).status_code == 200
        assert not written.exists() and not written.with_suffix(".txt").exists()  # the service's: deleted
        again = c.post("/items", json={"image": b64(png(6))}, headers=AUTH).json()
        (root / again["relpath"]).write_bytes(png(8))  # the user put another file at that path since
        assert c.delete(f"/items/{again['id']}", headers=AUTH).status_code == 200
        assert (root / again["relpath"]).read_bytes() == png(8)


def test_an_upload_sent_again_without_caption_drops_its_caption_file(photos_with_uploads_folder, built):  # noqa: F811
    from fastapi.testclient import TestClient

    from clipzoo.index import build_index, open_index
    from clipzoo.serve import create_app

    root, out = photos_with_uploads_folder
    image = b64(png(31))
    with TestClient(create_app(out, model=built.model, token=TOKEN)) as c:
        first = c.post("/items", json={"image": image, "caption": "a secret caption"}, headers=AUTH).json()
        txt = (root / first["relpath"]).with_suffix(".txt")
        assert txt.read_text() == "a secret caption"
        second = c.post("/items", json={"image": image}, headers=AUTH).json()
        assert second["id"] == first["id"] and c.get(f"/items/{second['id']}", headers=AUTH).json()["caption"] is None
        assert not txt.exists()
        third = c.post("/items", json={"image": image, "caption": "a new one"}, headers=AUTH).json()
        assert txt.read_text() == "a new one" and third["id"] == first["id"]
        c.post("/items", json={"image": image}, headers=AUTH)
    build_index(root, out, model=built.model, workers=0)  # the folder agrees with the service: no caption back
    with open_index(out, model=built.model) as idx:
        assert idx.item(first["id"])["caption"] is None


# ------------------------------------------------------------------ 3. large JSON bodies
def test_a_large_json_body_is_refused_quickly_and_never_blocks_the_event_loop(built):  # noqa: F811
    """A 14 MB /knn-service body of 3.7 M numbers in an ignored field took 6 s of the event loop (json.loads
    and a walk of every value) and 700 MB: /health waited 4 s behind it."""
    from clipzoo.serve import create_app, running

    body = ('{"text":"a red circle","num_images":1,"pad":[' + ",".join(["0.5"] * 3_700_000) + "]}").encode()
    app = create_app(built.index, model=built.model, labels=LABELS)
    with running(app) as url:
        latencies, stop = [], threading.Event()

        def probe():
            while not stop.is_set():
                t0 = time.perf_counter()
                with urllib.request.urlopen(url + "/health", timeout=30) as r:
                    assert r.status == 200
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.01)

        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: _call(url + "/knn-service", body), range(3)))
        took = time.perf_counter() - t0
        stop.set()
        prober.join()
        app.state.service.close()
    assert max(latencies) < 1.0, max(latencies)  # was 4.3 s
    assert took < 4.0, took  # was 6 s for each, one after another
    assert answers == [(413, {"detail": "the request body holds more than 131,072 JSON values; no route takes "
                                        "that many"})] * 3


@pytest.mark.parametrize(("text", "lone"), [
    ('{"a": "\\ud800"}', True), ('{"a": "\\ud83d\\ude00"}', False), ('{"a": "\\\\ud800"}', False),
    ('{"a": "\\\\\\ud800"}', True), ('{"a": "\\ud800\\\\\\udc00"}', True), ('{"a": "\\ud800\\ud800\\udc00"}', True),
    ('{"a": "\\udc00\\ud800"}', True), ('{"\\uDBFF\\uDFFF": 1}', False), ('{"a\\ud83d": 1}', True),
    ('{"a": "\\ud83d\\u0041"}', True), ('{"a": "caf\\u00e9 \\\\ud83d"}', False)])
def test_lone_surrogates_are_found_in_the_text_as_json_reads_it(text, lone):
    from clipzoo.serve.bodies import has_lone_surrogate, lone_surrogate

    assert has_lone_surrogate(text) is lone
    assert (lone_surrogate(json.loads(text)) is not None) is lone  # what the parsed strings hold


def test_json_values_count_commas_outside_strings_only(monkeypatch):
    import clipzoo.serve.bodies as bodies
    from clipzoo.serve.bodies import read_json

    monkeypatch.setattr(bodies, "MAX_JSON_VALUES", 0)  # always the exact count
    assert [bodies.json_values(t) for t in ('[1,2,3]', '{"a":"x,y,z"}', '["a\\",b", 1]', '["a\\\\",",", 1]')] == \
        [3, 1, 2, 3]
    monkeypatch.undo()
    commas = '{"text": "' + "," * 1_000_000 + '"}'  # a million commas inside one string: one value
    assert read_json(commas.encode(), "X") == {"text": "," * 1_000_000}
    where = '{"pad": [' + ",".join(["0"] * 100_000) + '], "texts": ["a", "\\ud800"]}'
    with pytest.raises(Exception) as found:
        read_json(where.encode(), "X")
    assert found.value.status_code == 422 and found.value.detail.startswith("invalid request: body.texts[1]: a string "
                                                                           "holds a lone surrogate")


# ------------------------------------------------------------------ 4. image_url fetches
class Dripper:
    """A local server that answers a status line, then one header byte every ``every`` s for ``seconds`` s."""

    def __init__(self, every: float = 0.2, seconds: float = 8.0):
        self.every, self.seconds = every, seconds
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/a.png"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                conn.sendall(b"X")
                time.sleep(self.every)
        except OSError:  # the fetcher hung up
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def dripper():
    d = Dripper()
    yield d
    d.close()


def test_a_url_fetch_ends_at_its_deadline_however_slowly_the_headers_drip(dripper):
    from clipzoo.serve.url_fetch import UrlFetcher, UrlFetchError

    fetcher = UrlFetcher(16 << 20, timeout=1.0, allow_private=True)  # only so a local server stands in
    t0 = time.monotonic()
    with pytest.raises(UrlFetchError) as failed:
        fetcher.fetch(dripper.url)
    assert str(failed.value) == "image_url: 127.0.0.1 did not answer within 1 s"
    assert time.monotonic() - t0 < 2.0  # was as long as the host kept dripping (40 s in the probe)


def test_a_slow_name_lookup_ends_at_the_deadline(monkeypatch):
    from clipzoo.serve import url_fetch
    from clipzoo.serve.url_fetch import UrlFetcher, UrlFetchError

    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if host == "slow.example":
            time.sleep(2.0)
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(url_fetch.socket, "getaddrinfo", slow)
    t0 = time.monotonic()
    with pytest.raises(UrlFetchError, match=r"^image_url: slow.example did not answer within 0.5 s$"):
        UrlFetcher(1 << 20, timeout=0.5, allow_private=True).fetch("http://slow.example/a.png")
    assert time.monotonic() - t0 < 1.5


def test_url_fetches_have_their_own_slots_and_never_stall_image_search(built, dripper):  # noqa: F811
    """45 fetches of a dripping host took anyio's 40 worker threads: image search and thumbnails of every other
    client waited out their 15 s timeouts."""
    from clipzoo.serve import create_app, running
    from clipzoo.serve.url_fetch import UrlFetcher

    app = create_app(built.index, model=built.model, allow_url=True)
    app.state.indices.fetcher = UrlFetcher(1 << 20, timeout=2.0, allow_private=True, slots=2)
    image = b64(png_bytes())
    with running(app) as url, ThreadPoolExecutor(6) as pool:
        knn = [pool.submit(_call, url + "/knn-service", {"image_url": dripper.url}) for _ in range(6)]
        time.sleep(0.5)
        t0 = time.perf_counter()
        status, found = _call(url + "/search", {"image": image, "k": 1})
        searched = time.perf_counter() - t0
        answers = [f.result() for f in knn]
    app.state.indices.close()
    assert status == 200 and len(found["hits"]) == 1 and searched < 1.5
    late = (400, {"detail": "image_url: 127.0.0.1 did not answer within 2 s"})
    busy = (503, {"detail": "the server is fetching 2 image URLs already, its limit; retry shortly"})
    assert sorted(answers, key=lambda a: a[0]) == [late] * 2 + [busy] * 4


# ------------------------------------------------------------------ 6. /classify labels
def test_classify_refuses_duplicate_labels_as_a_vocabulary_file_does(client):  # noqa: F811
    image = b64(png_bytes())
    r = client.post("/classify", json={"image": image, "labels": ["red circle", "red circle", "blue square"]})
    assert (r.status_code, r.json()["detail"]) == (400, "labels lists 'red circle' more than once; keep each label "
                                                        "once")
    r = client.post("/classify", json={"image": image, "labels": ["café", "cafe\u0301"]})
    assert (r.status_code, r.json()["detail"]) == (400, "labels lists 'café' more than once (also as 'cafe\u0301': the "
                                                        "same text in another Unicode form); keep each label once")
    r = client.post("/classify", json={"image": image, "labels": ["red circle", "blue square"]})
    assert r.status_code == 200 and len(r.json()["labels"]) == 2


# ------------------------------------------------------------------ 7. the embedded model's name
def test_an_index_of_the_embedded_model_served_from_its_recorded_spec_is_named_by_its_card(tmp_path):
    """`clipzoo demo` records the unpacked model's cache folder; served from it (the model loaded again from that
    folder, with a local card) /health said ``tiny-shapes-fae130b73562bb95``."""
    from fastapi.testclient import TestClient

    import clipzoo
    from clipzoo.index import build_index
    from clipzoo.serve import create_app

    folder = tmp_path / "images"
    folder.mkdir()
    for i, color in enumerate([(200, 20, 20), (20, 200, 20)]):
        (folder / f"{i}.png").write_bytes(png_bytes((64, 64), color=color))
    build_index(folder, tmp_path / "ix", model=clipzoo.load("clipzoo/tiny-shapes"), workers=0)
    app = create_app(tmp_path / "ix")  # the model loaded from the spec the index recorded
    assert app.state.service.index.model_spec.startswith("/")  # the cache folder, a path
    with TestClient(app) as c:
        names = {c.get("/health").json()["model"], c.get("/info").json()["model"],
                 c.post("/embed", json={"texts": ["a red circle"]}).json()["model"]}
    assert names == {"clipzoo/tiny-shapes"}


# ------------------------------------------------------------------ 8. query vectors of any finite scale
def test_query_vectors_of_any_finite_scale_are_searched_by_their_direction(client, built):  # noqa: F811
    dim = built.model.embed_dim
    ones = client.post("/search", json={"embedding": [1.0] * dim, "k": 5}).json()["hits"]
    axis = client.post("/search", json={"embedding": [1.0] + [0.0] * (dim - 1), "k": 5}).json()["hits"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for vector, want in (([1e308] * dim, ones), ([1e-46] * dim, ones), ([1e39] + [0.0] * (dim - 1), axis)):
            r = client.post("/search", json={"embedding": vector, "k": 5})
            assert r.status_code == 200, r.text  # were 400s: "holds NaN or infinite values", "is all zeros"
            assert [h["id"] for h in r.json()["hits"]] == [h["id"] for h in want]
            assert [h["score"] for h in r.json()["hits"]] == pytest.approx([h["score"] for h in want], abs=1e-5)
            r = client.post("/knn-service", json={"embedding_input": vector, "num_images": 5})
            assert r.status_code == 200 and [h["id"] for h in r.json()] == [h["id"] for h in want], r.text
    assert not [w for w in seen if "overflow" in str(w.message)]  # numpy's cast warning reached the server log
    r = client.post("/search", json={"embedding": [0.0] * dim})
    assert (r.status_code, r.json()["detail"]) == (400, "embedding is all zeros: it has no direction to search by")
    r = client.post("/knn-service", json={"embedding_input": [0.0] * dim})
    assert (r.status_code, r.json()["detail"]) == (400, "embedding_input is all zeros: it has no direction to search "
                                                        "by")
    r = client.post("/search", json={"embedding": [1.0] * (dim + 1)})
    assert (r.status_code, r.json()["detail"]) == (400, f"embedding has {dim + 1} values; this index's model "
                                                        f"(tiny-model) makes {dim}")
