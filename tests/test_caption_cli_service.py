"""Issue 20 §5: ``clipzoo caption IMAGES --model M`` and ``POST /caption`` on a tiny random CoCa; both give what
``m.generate`` + ``m.decode`` give, and a model that cannot caption is a one-line error (exit 2 / HTTP 400)."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.testing.tiny import TINY_COCA_CONFIG, write_open_clip_hub_folder

pytest.importorskip("fastapi")
from _serve_common import b64, png_bytes  # noqa: E402

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("caption")
    model_dir = write_open_clip_hub_folder(root / "tiny-coca", config=TINY_COCA_CONFIG, seed=4)
    images = root / "images"
    images.mkdir()
    for i, color in enumerate([(220, 30, 30), (30, 160, 30), (30, 30, 220)]):
        (images / f"{i}.png").write_bytes(png_bytes((36, 40), color))
    model = clipzoo.load(str(model_dir))
    yield root, model_dir, images, model
    torch.set_num_threads(threads)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def test_issue20_s5_cli_caption(setup):
    _, model_dir, images, model = setup
    paths = sorted(str(p) for p in images.glob("*.png"))
    want = model.decode(model.generate(paths, seq_len=8))
    r = run("caption", images, "--model", model_dir, "--seq-len", 8, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [c["image"] for c in data["captions"]] == paths
    assert [c["caption"] for c in data["captions"]] == want
    r = run("caption", paths[0], "--model", model_dir, "--seq-len", 8, "--generation-type", "top_k",
            "--top-k", 20, "--seed", 3)
    assert r.exit_code == 0, r.output
    sampled = model.decode(model.generate([paths[0]], seq_len=8, generation_type="top_k", top_k=20, seed=3))
    assert r.output == f"{paths[0]}\t{sampled[0]}\n"


def test_issue20_s5_cli_caption_errors(setup):
    _, model_dir, images, _ = setup
    r = run("caption", images, "--model", "clipzoo/tiny-shapes")
    assert r.exit_code == 2 and "cannot caption images" in r.output and r.output.count("\n") == 1
    r = run("caption", images, "--model", model_dir, "--generation-type", "greedy")
    assert r.exit_code == 2
    assert "error: generation_type 'greedy' is not one of beam_search, top_k, top_p" in r.output


def test_issue20_s5_service_caption(setup):
    from fastapi.testclient import TestClient

    from clipzoo.index import build_index
    from clipzoo.serve import create_app

    root, _, images, model = setup
    build_index(images, root / "index", model=model, workers=0)
    raw = (images / "1.png").read_bytes()
    with TestClient(create_app(root / "index", model=model)) as client:
        r = client.post("/caption", json={"image": b64(raw), "seq_len": 8})
        assert r.status_code == 200, r.text
        ids = model.generate([str(images / "1.png")], seq_len=8)[0]
        assert r.json()["tokens"] == ids.tolist() and r.json()["caption"] == model.decode(ids)
        form = client.post("/caption", files={"image": ("x.png", raw, "image/png")},
                           data={"seq_len": "8", "generation_type": "top_p", "top_p": "0.9", "seed": "2"})
        assert form.status_code == 200, form.text
        want = model.generate([str(images / "1.png")], seq_len=8, generation_type="top_p", top_p=0.9, seed=2)[0]
        assert form.json()["tokens"] == want.tolist()
        assert client.post("/caption", json={"image": b64(b"not an image")}).status_code == 400
        assert client.post("/caption", json={"image": b64(raw), "seq_len": 500}).status_code == 422
        bad = client.post("/caption", json={"image": b64(raw), "seq_len": 5})
        assert bad.status_code == 400 and "seq_len (5) must be larger than min_seq_len (5)" in bad.json()["detail"]


def test_issue20_s5_service_caption_needs_coca(setup):
    from fastapi.testclient import TestClient

    from _serve_common import built_index
    from clipzoo.serve import create_app

    built = built_index()
    with TestClient(create_app(built.index)) as client:
        r = client.post("/caption", json={"image": b64(png_bytes())})
    assert r.status_code == 400 and "cannot caption images" in r.json()["detail"]
