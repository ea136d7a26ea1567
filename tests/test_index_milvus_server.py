"""Issue 21 §3, the Milvus SERVER code path (``--uri http://HOST:PORT``) against a real server process: milvus-lite's
gRPC server (``python -m milvus_lite server``) started here on 127.0.0.1 as a separate process (bounded in time,
killed at the end). ``clipzoo index build … --store milvus --uri http://127.0.0.1:PORT`` writes its collection
there (nothing embedded in the index folder), ``clipzoo search`` and the service search it, the service's live
writes reach it, and after the server is stopped and started again on its data a reopened index has every row."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss")
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from _photo_folders import photo_folder, png  # noqa: E402
from clipzoo.cli import app  # noqa: E402
from clipzoo.index import open_index  # noqa: E402
from clipzoo.index.generations import read_pointer  # noqa: E402
from clipzoo.index.stores import milvus as milvus_store  # noqa: E402

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
START_S = 60  # the server must listen within this


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MilvusServer:
    """``python -m milvus_lite server`` on 127.0.0.1:``port`` over ``data`` (a separate process)."""

    def __init__(self, data: Path, port: int):
        self.data, self.port, self.proc = data, port, None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"milvus-lite server did not listen on {self.uri} within {START_S} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self.proc.stderr.close()
        self.proc = None
        milvus_store._CLIENTS.pop(self.uri, None)  # noqa: SLF001 - the test's own reconnect after a restart


@pytest.fixture
def server(tmp_path):
    srv = MilvusServer(tmp_path / "milvus-data", free_port())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    return str(write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True))


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def test_milvus_server_uri_build_search_serve_and_reopen(tmp_path, server, tiny_spec):
    from fastapi.testclient import TestClient

    import clipzoo
    from clipzoo.serve import create_app

    root = photo_folder(tmp_path / "photos", 10)
    out = tmp_path / "ix"
    r = run("index", "build", root, "--model", tiny_spec, "--out", out, "--store", "milvus", "--uri", server.uri,
            "--workers", "0", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["total"] == 10
    record = read_pointer(out)
    assert record["vector_store"] == "milvus" and not (out / "index.milvus.db").exists()  # nothing embedded
    pointer = json.loads((out / "vectors" / record["all"]["file"]).read_text())
    assert pointer["uri"] == server.uri
    collection = record["all"]["collection"]
    client = milvus_store.connect(server.uri)
    assert client.list_collections() == [collection]  # in the server's data, nowhere else
    rows = client.query(collection, filter="id >= 0", output_fields=["id", "path", "partition"], limit=100)
    assert sorted(r["path"] for r in rows) == sorted(f"{'ab'[i % 2]}/{i:03d}.png" for i in range(10))

    r = run("search", out, "--image", root / "b" / "003.png", "-k", "3", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    hits = hits["hits"] if isinstance(hits, dict) else hits
    assert hits[0]["relpath"] == "b/003.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and len(hits) == 3

    model = clipzoo.load(tiny_spec, device="cpu")
    auth = {"Authorization": "Bearer t0ken"}
    data = png(999)
    with TestClient(create_app(out, model=model, token="t0ken")) as http:
        added = http.post("/items", files={"image": ("new.png", data, "image/png")}, data={"caption": "new one"},
                          headers=auth)
        assert added.status_code == 200, added.text
        new_id = added.json()["id"]
        row = client.query(collection, filter=f"id == {new_id}", output_fields=["partition", "caption", "sha256"])[0]
        assert (row["partition"], row["caption"], row["sha256"]) == ("uploads", "new one",
                                                                      hashlib.sha256(data).hexdigest())
        found = http.post("/search", files={"image": ("q.png", data, "image/png")}, data={"k": "3"},
                          headers=auth).json()["hits"]
        assert found[0]["id"] == new_id
        victim = http.post("/search", files={"image": ("q.png", png(4), "image/png")}, data={"k": "1"},
                           headers=auth).json()["hits"][0]
        assert victim["relpath"] == "a/004.png"
        assert http.delete(f"/items/{victim['id']}", headers=auth).status_code == 200
        found = http.post("/search", files={"image": ("q.png", png(4), "image/png")}, data={"k": "20"},
                          headers=auth).json()["hits"]
        assert victim["id"] not in [h["id"] for h in found] and len(found) == 10
    assert client.query(collection, filter=f"id == {victim['id']}", output_fields=["id"]) == []

    server.stop()  # the server goes away and comes back on its data: a reopened index has every row
    server.start()
    with open_index(out) as idx:
        assert idx.count == 10
        ids = sorted(int(r["id"]) for r in milvus_store.connect(server.uri).query(
            collection, filter="id >= 0", output_fields=["id"], limit=100))
        assert len(ids) == 10 and new_id in ids and victim["id"] not in ids
        for i in ids:
            assert idx.search_embedding(idx.embedding(i), k=1)[0].id == i


def test_an_unreachable_server_uri_is_one_line_at_start_up(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "one.png").write_bytes(png(1))
    gone = "http://127.0.0.1:1"
    t0 = time.perf_counter()
    r = run("index", "build", tmp_path / "photos", "--model", "no-such-model", "--out", tmp_path / "ix", "--store",
            "milvus", "--uri", gone, "--no-progress")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert r.stderr.startswith(f"error: cannot reach Milvus at '{gone}' (") and "no-such-model" not in r.output
    assert r.stderr.rstrip().endswith("start the server, or pass --uri FILE.db for embedded Milvus Lite")
    assert not (tmp_path / "ix").exists() and time.perf_counter() - t0 < 15
