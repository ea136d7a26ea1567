"""Issue 17 §4 (a live index), service side: a running server picks up a new generation without restart
(and `POST /admin/reload` forces it), writes over HTTP behind the token (`POST /items`, `DELETE
/items/{id}`) are durable and visible to the next search and survive a SIGKILL of the server, and 8
clients searching while 1,000 new images are built in see 0 errors, one generation per response, and
every new image after the switch."""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from clipzoo.index import build_index, open_index  # noqa: E402
from clipzoo.index.generations import read_pointer  # noqa: E402
from clipzoo.serve import create_app  # noqa: E402
from clipzoo.serve.server import running  # noqa: E402

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                    os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def png(seed: int, size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make_photos(root: Path, n: int, start: int = 0) -> Path:
    for i in range(start, start + n):
        path = root / ("ab"[i % 2]) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(i))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    return write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True)


@pytest.fixture(scope="module")
def model(tiny):
    import clipzoo

    return clipzoo.load(str(tiny))


@pytest.fixture
def index(tmp_path, model):
    root = make_photos(tmp_path / "photos", 10)
    build_index(root, tmp_path / "ix", model=model, workers=0)
    return root, tmp_path / "ix"


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_running_server_picks_up_a_new_generation_without_restart_and_admin_reload_forces_it(index, model):
    root, out = index
    app = create_app(out, model=model, token=TOKEN)
    with TestClient(app) as client:
        first = client.post("/search", json={"text": "a photo", "k": 20}, headers=AUTH).json()
        assert first["generation"] == read_pointer(out)["generation"] and len(first["hits"]) == 10
        make_photos(root, 5, start=100)
        build_index(root, out, workers=0)
        new = read_pointer(out)["generation"]
        wait_for(lambda: client.post("/search", json={"text": "a photo", "k": 20}, headers=AUTH).json()[
            "generation"] == new)  # the watcher switched, no restart
        r = client.post("/search", json={"text": "a photo", "k": 20}, headers=AUTH).json()
        assert len(r["hits"]) == 15 and client.get("/health").json()["items"] == 15
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/reload", headers=AUTH).json() == {"generation": new, "changed": False}
        app.state.service.live.close()  # no watcher: only the forced reload switches
        make_photos(root, 1, start=200)
        build_index(root, out, workers=0)
        time.sleep(0.6)
        assert client.post("/search", json={"text": "a photo", "k": 20}, headers=AUTH).json()["generation"] == new
        newer = read_pointer(out)["generation"]
        assert client.post("/admin/reload", headers=AUTH).json() == {"generation": newer, "changed": True}
        assert len(client.post("/search", json={"text": "x", "k": 20}, headers=AUTH).json()["hits"]) == 16
    with TestClient(create_app(out, model=model)) as client:  # no token on the server: no admin, no writes
        assert client.post("/admin/reload").status_code == 403
        r = client.post("/items", json={"image": base64.b64encode(png(1)).decode()})
        assert r.status_code == 403 and "start the server with --token" in r.json()["detail"]


def test_post_and_delete_items_behind_the_token_durable_and_visible_to_the_next_search(index, model):
    root, out = index
    with TestClient(create_app(out, model=model, token=TOKEN)) as client:
        data = png(777, size=20)
        assert client.post("/items", json={"image": base64.b64encode(data).decode()}).status_code == 401
        r = client.post("/items", files={"image": ("new.png", data, "image/png")}, data={"caption": "a new one"},
                        headers=AUTH)
        assert r.status_code == 200, r.text
        added = r.json()
        assert added["relpath"].startswith("uploads/") and added["relpath"].endswith(".png")
        assert (root / added["relpath"]).read_bytes() == data
        assert (root / added["relpath"]).with_suffix(".txt").read_text() == "a new one"
        hits = client.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": "3"},
                           headers=AUTH).json()
        assert hits["generation"] == added["generation"] and hits["hits"][0]["id"] == added["id"]
        assert hits["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        item = client.get(f"/items/{added['id']}", headers=AUTH).json()
        assert item["caption"] == "a new one" and item["partition"] == "uploads"
        (root / "c").mkdir()
        (root / "c" / "given.png").write_bytes(png(888))
        r = client.post("/items", json={"path": "c/given.png", "caption": "by path"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["relpath"] == "c/given.png"
        given = r.json()["id"]
        outside = root.parent / "outside.png"
        outside.write_bytes(png(5))
        (root / "c" / "link.png").symlink_to(outside)
        for path in (str(outside), "c/link.png", "../outside.png", "c/missing.png"):
            r = client.post("/items", json={"path": path}, headers=AUTH)
            assert r.status_code == 404 and "is not a file inside the indexed folder" in r.json()["detail"], path
        said = [client.post("/items", json={"path": p}, headers=AUTH).json()["detail"].replace(repr(p), "P")
                for p in (str(outside), str(root.parent / "no-such.png"))]
        assert said[0] == said[1] == "path P is not a file inside the indexed folder"  # no oracle for files outside
        r = client.post("/items", json={"path": "c/a\u0000.png"}, headers=AUTH)  # was a 500 (ValueError)
        assert (r.status_code, r.json()["detail"]) == (400, "path 'c/a\\x00.png' holds a NUL character; send the "
                                                            "file's path")
        r = client.post("/items", json={"path": "c/" + "a" * 300 + ".png"}, headers=AUTH)  # was a 500 (OSError)
        assert r.status_code == 404 and r.json()["detail"].endswith("is not a file inside the indexed folder")
        (root / "c" / "huge.png").write_bytes(png(9) + b"\0" * (16 << 20))  # was read whole, whatever its size
        r = client.post("/items", json={"path": "c/huge.png"}, headers=AUTH)
        assert (r.status_code, r.json()["detail"]) == (413, "path 'c/huge.png' is over 16 MB, the largest image the "
                                                            "service takes (--max-body-mb)")
        (root / "c" / "huge.png").unlink()
        r = client.post("/items", json={"image": base64.b64encode(b"not an image").decode()}, headers=AUTH)
        assert r.status_code == 400
        r = client.post("/items", json={"image": "aGk=", "path": "c/given.png"}, headers=AUTH)
        assert r.status_code == 422
        assert client.delete(f"/items/{added['id']}").status_code == 401
        r = client.delete(f"/items/{added['id']}", headers=AUTH)
        assert r.status_code == 200 and r.json()["deleted"] and r.json()["generation"] > added["generation"], r.text
        assert not (root / added["relpath"]).exists()  # an uploaded file goes with its item
        assert client.get(f"/items/{added['id']}", headers=AUTH).status_code == 404
        ids = [h["id"] for h in client.post("/search", json={"text": "a", "k": 50}, headers=AUTH).json()["hits"]]
        assert added["id"] not in ids and len(ids) == 11
        assert client.delete(f"/items/{added['id']}", headers=AUTH).status_code == 404
    with open_index(out, model=model) as idx:  # on disk, for every reader
        assert idx.count == 11 and idx.item(given)["relpath"] == "c/given.png"
        assert idx.item(given)["caption"] == "by path" and given in ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: dict | None = None, method: str = "POST", timeout: float = 30) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={**AUTH, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def serve_process(out: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "clipzoo", "serve", str(out), "--port", str(port), "--token", TOKEN,
                             "--log-level", "warning"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def up():
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
        except OSError:
            return False

    wait_for(up, timeout=60)
    return proc


def test_writes_survive_a_sigkill_of_the_server(index, model):
    root, out = index
    port = free_port()
    proc = serve_process(out, port)
    try:
        status, added = call(f"http://127.0.0.1:{port}/items", {"image": base64.b64encode(png(4242)).decode(),
                                                                  "caption": "kept"})
        assert status == 200, added
        status, gone = call(f"http://127.0.0.1:{port}/items/{added['id'] - 1}", method="DELETE")
        assert status == 200
        proc.send_signal(signal.SIGKILL)  # right after the 200s
        proc.wait()
    finally:
        proc.kill()
    with open_index(out, model=model) as idx:
        assert idx.generation == added["generation"] + 1 and idx.count == 10
        assert idx.item(added["id"])["caption"] == "kept"
        hit = idx.search_image(png(4242), k=1)[0]
        assert hit.id == added["id"] and hit.score == pytest.approx(1.0, abs=1e-5)
    from typer.testing import CliRunner

    from clipzoo.cli import app

    assert CliRunner().invoke(app, ["index", "verify", str(out)]).exit_code == 0


def test_8_clients_search_while_1000_new_images_are_built_in(tmp_path, model, tiny):
    root = make_photos(tmp_path / "photos", 20)
    out = tmp_path / "ix"
    build_index(root, out, model=str(tiny), workers=0)
    with open_index(out, model=model) as idx:
        old_ids, old_vecs = idx.store.all_vectors()
    old_generation = read_pointer(out)["generation"]
    make_photos(root, 1000, start=1000)
    with running(create_app(out, model=model, token=TOKEN)) as url:  # a real server; the build: another process
        clients_while_building(root, out, url, old_ids, old_vecs, old_generation)


def clients_while_building(root: Path, out: Path, url: str, old_ids, old_vecs, old_generation: int) -> None:
    stop = threading.Event()
    responses: list[tuple[int, object, list[int]]] = []
    errors: list[str] = []

    def client(i: int):
        rng = np.random.default_rng(i)
        while not stop.is_set():
            body = {"text": "a photo", "k": 10} if rng.random() < 0.5 else \
                {"embedding": old_vecs[rng.integers(len(old_vecs))].tolist(), "k": 10}
            try:
                status, r = call(f"{url}/search", body)
            except OSError as exc:
                errors.append(repr(exc))
                continue
            if status != 200:
                errors.append(f"{status}: {r}")
            else:
                responses.append((status, r["generation"], [h["id"] for h in r["hits"]]))
            time.sleep(0.005)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        build = subprocess.run([sys.executable, "-m", "clipzoo", "index", "build", str(root), "--out", str(out),
                                "--no-progress", "--workers", "0", "--batch-size", "128"], env=ENV,
                               capture_output=True, text=True, timeout=120)
        assert build.returncode == 0, build.stderr
        new_generation = read_pointer(out)["generation"]
        wait_for(lambda: any(g == new_generation for _, g, _ in responses[-8:]))
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(30)
        with open_index(out, model=model) as idx:
            new_ids, new_vecs = idx.store.all_vectors()
        assert len(new_ids) == 1020 and set(old_ids) <= set(new_ids)
        assert errors == []
        generations = {g for _, g, _ in responses}
        print(f"{len(responses)} searches: {sum(g == old_generation for _, g, _ in responses)} from generation "
              f"{old_generation}, {sum(g == new_generation for _, g, _ in responses)} from {new_generation}")
        assert generations == {old_generation, new_generation}, generations
        for _, g, hits in responses:  # one generation per response: old ones never show a new image
            assert len(hits) == 10 and (g == new_generation or set(hits) <= set(old_ids.tolist()))
        added = [(i, v) for i, v in zip(new_ids.tolist(), new_vecs) if i not in set(old_ids.tolist())]
        assert len(added) == 1000
        missing: list[int] = []

        def find(part):  # every new image findable after the switch
            for item_id, vec in part:
                status, r = call(f"{url}/search", {"embedding": vec.tolist(), "k": 5})
                if status != 200 or r["generation"] != new_generation or item_id not in [h["id"] for h in r["hits"]]:
                    missing.append(item_id)

        finders = [threading.Thread(target=find, args=(added[i::8],)) for i in range(8)]
        for t in finders:
            t.start()
        for t in finders:
            t.join(60)
        assert missing == []
    finally:
        stop.set()
