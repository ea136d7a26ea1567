"""Issue 20 §4: the ``long_text`` policy through the CLI (``--long-text`` on compare, embed, index build, index
search, serve), the index build (recorded; text queries follow it) and the service (/search, /embed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
from _serve_common import png_bytes  # noqa: E402

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
LONG = ("A red circle sits in the upper left corner of a pale grey canvas next to a tiny blue square. "
        "Below it, three green triangles point towards the bottom edge, each one slightly larger than the last. "
        "On the right a yellow star with five sharp points overlaps a thin black line drawn diagonally. "
        "The background fades from light grey at the top to a warmer beige near the lower border of the image.")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    root = tmp_path_factory.mktemp("longcli")
    model_dir = write_open_clip_hub_folder(root / "tiny")
    images = root / "images"
    images.mkdir()
    for i, color in enumerate([(220, 30, 30), (30, 160, 30), (30, 30, 220), (200, 200, 30)]):
        (images / f"{i}.png").write_bytes(png_bytes((32, 32), color))
    return root, model_dir, images, clipzoo.load(str(model_dir))


def test_issue20_s4_cli_compare_and_embed(setup):
    root, model_dir, images, model = setup
    image = images / "0.png"
    r = run("compare", model_dir, "--image", image, "--text", LONG, "--text", "a dog")
    assert r.exit_code == 2 and "tokens, longer than the model's context length 77" in r.output
    r = run("compare", model_dir, "--image", image, "--text", LONG, "--text", "a dog", "--long-text", "chunks",
            "--json")
    assert r.exit_code == 0, r.output
    logits = model.similarity(model.encode_image([str(image)]), model.encode_text([LONG, "a dog"], long_text="chunks"))
    assert np.allclose(json.loads(r.output)["logits"], logits.tolist(), atol=1e-4)
    r = run("compare", model_dir, "--image", image, "--text", LONG, "--long-text", "bogus")
    assert r.exit_code == 2 and "long_text='bogus' is not a policy; use one of error, truncate, chunks" in r.output

    texts = root / "texts.txt"
    texts.write_text(f"{LONG}\na small cat\n")
    r = run("embed", model_dir, "--texts", texts, "--out", root / "t.npy", "--long-text", "chunks", "--no-progress")
    assert r.exit_code == 0, r.output
    want = model.encode_text([LONG, "a small cat"], long_text="chunks").numpy()
    assert np.allclose(np.load(root / "t.npy"), want, atol=1e-5)


def test_issue20_s4_index_records_policy_and_service_follows(setup):
    from fastapi.testclient import TestClient

    from clipzoo.cli.serve import set_long_text
    from clipzoo.index import open_index
    from clipzoo.serve import create_app

    root, model_dir, images, model = setup
    r = run("index", "build", images, "--model", model_dir, "--out", root / "plain", "--workers", 0, "--no-progress")
    assert r.exit_code == 0, r.output
    r = run("index", "build", images, "--model", model_dir, "--out", root / "chunked", "--workers", 0,
            "--no-progress", "--long-text", "chunks")
    assert r.exit_code == 0, r.output
    chunk_vec = model.encode_text([LONG], long_text="chunks")[0]
    cut_vec = model.encode_text([LONG], truncate=True)[0]
    assert not torch.allclose(chunk_vec, cut_vec, atol=1e-3)
    with open_index(root / "plain", model=model) as plain, open_index(root / "chunked", model=model) as chunked:
        assert plain.long_text == "truncate" and chunked.long_text == "chunks"
        want_cut = [(h.id, round(h.score, 4)) for h in plain.search_embedding(cut_vec.numpy(), k=4)]
        want_chunk = [(h.id, round(h.score, 4)) for h in chunked.search_embedding(chunk_vec.numpy(), k=4)]
        assert [(h.id, round(h.score, 4)) for h in plain.search_text(LONG, k=4)] == want_cut
        assert [(h.id, round(h.score, 4)) for h in chunked.search_text(LONG, k=4)] == want_chunk

    r = run("search", root / "plain", LONG, "-k", 4, "--long-text", "chunks", "--json")
    assert r.exit_code == 0, r.output
    assert [round(h["score"], 4) for h in json.loads(r.output)["hits"]] == [s for _, s in want_chunk]

    with TestClient(create_app(root / "chunked", model=str(model_dir))) as client:
        hits = client.post("/search", json={"text": LONG, "k": 4}).json()["hits"]
        assert [(h["id"], round(h["score"], 4)) for h in hits] == want_chunk
        r = client.post("/embed", json={"texts": [LONG]})
        assert r.status_code == 400 and "tokens, longer than the model's context length 77" in r.json()["detail"]
        set_long_text(client.app.state.service, "chunks")  # what `clipzoo serve --long-text chunks` does
        r = client.post("/embed", json={"texts": [LONG]})
        assert r.status_code == 200 and np.allclose(r.json()["embeddings"][0], chunk_vec.tolist(), atol=1e-5)
