"""Issue 17 §7: tiny-model ties ("cat" and "dog" scoring the same) are shown as ties, not an arbitrary winner —
in `clipzoo compare` and `clipzoo classify`, in the API (/classify, /rank: equal ranks and a `tie` flag) and
on the page. The embedded model clipzoo/tiny-shapes never saw either word: it gives both the same features,
so their probabilities are exactly equal."""
from __future__ import annotations

import base64
import io
import json

import pytest
from typer.testing import CliRunner

from clipzoo.cli import app
from clipzoo.comparator import competition_ranks

pytest.importorskip("fastapi")

from _newuser_common import EMBEDDED, chromium, embedded_index  # noqa: E402,F401  (chromium: a fixture)

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def _red_circle(path=None) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), (90, 110, 100))
    ImageDraw.Draw(im).ellipse([14, 14, 50, 50], fill=(225, 25, 25))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    if path is not None:
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_competition_ranks():
    assert competition_ranks([0.5, 0.5]) == [1, 1]
    assert competition_ranks([0.1, 0.7, 0.2, 0.7]) == [4, 1, 3, 1]
    assert competition_ranks([0.3, 0.3 + 5e-7, 0.2]) == [1, 1, 3]  # within the tolerance (1e-6)
    assert competition_ranks([0.3, 0.3 + 5e-6, 0.2]) == [2, 1, 3]


def test_compare_shows_a_tie(tmp_path):
    image = tmp_path / "red.png"
    _red_circle(image)
    out = json.loads(cli("compare", EMBEDDED, "--image", image, "--text", "cat", "--text", "dog", "--json"))
    p0, p1 = out["probabilities"][0]  # equal up to float order (1 ulp apart on some CPUs): the tie tolerance
    assert p0 == pytest.approx(p1, abs=1e-6) and p0 == pytest.approx(0.5)
    assert out["ranks"] == [[1, 1]]
    table = cli("compare", EMBEDDED, "--image", image, "--text", "cat", "--text", "dog")
    assert table.splitlines()[0] == "clipzoo/tiny-shapes: softmax over the texts (rows sum to 1)"
    assert table.strip().splitlines()[-1] == (f"tie for {image}: 'cat' = 'dog' (0.5000 each; the model cannot tell "
                                              "them apart)")
    clear = json.loads(cli("compare", EMBEDDED, "--image", image, "--text", "a red circle", "--text", "a blue star",
                           "--json"))
    assert clear["ranks"] == [[1, 2]]
    assert "tie for" not in cli("compare", EMBEDDED, "--image", image, "--text", "a red circle", "--text", "cat")


def test_classify_cli_shows_a_tie_past_k(tmp_path):
    image = tmp_path / "red.png"
    _red_circle(image)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\ndog\nred circle\n")
    out = json.loads(cli("classify", image, "--model", EMBEDDED, "--labels", vocab, "-k", "2", "--json"))
    labels = out["results"][0]["labels"]
    assert [(x["label"], x["rank"], x["tie"]) for x in labels] == [("red circle", 1, False), ("cat", 2, True)]
    table = cli("classify", image, "--model", EMBEDDED, "--labels", vocab, "-k", "2")
    assert "cat 0.000 (tie, #2)" in table


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(embedded_index(), labels=["cat", "dog", "circle"])) as c:
        yield c


def test_api_classify_and_rank_flag_ties(client):
    image = base64.b64encode(_red_circle()).decode()
    top1 = client.post("/classify", json={"image": image, "labels": ["cat", "dog"], "k": 1}).json()["labels"]
    assert len(top1) == 1 and top1[0]["rank"] == 1 and top1[0]["tie"] is True  # the other, left out, ties
    assert top1[0]["probability"] == pytest.approx(0.5)
    three = client.post("/classify", json={"image": image, "k": 3}).json()["labels"]
    assert [(x["label"], x["rank"], x["tie"]) for x in three] == [("circle", 1, False), ("cat", 2, True),
                                                                  ("dog", 2, True)]
    ranking = client.post("/rank", json={"image": image, "texts": ["a cat", "a dog", "a red circle"]}).json()
    assert [(x["text"], x["rank"], x["tie"]) for x in ranking["ranking"]] == [
        ("a red circle", 1, False), ("a cat", 2, True), ("a dog", 2, True)]
    assert ranking["ranking"][1]["logit"] == pytest.approx(ranking["ranking"][2]["logit"], abs=1e-6)


def test_page_shows_tied_labels_as_ties(chromium, tmp_path):
    from clipzoo.serve import create_app, running

    with running(create_app(embedded_index(), labels=["cat", "dog", "circle"])) as url:
        context = chromium.new_context(viewport={"width": 1000, "height": 800})
        try:
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#info:has-text('clipzoo/tiny-shapes')")
            page.fill("#labels", "cat, dog")
            page.set_input_files("#file", {"name": "red.png", "mimeType": "image/png", "buffer": _red_circle()})
            page.wait_for_function("() => document.querySelectorAll('#classes li.class').length === 2")
            rows = page.locator("#classes li.class")
            assert [rows.nth(i).evaluate("li => li.value") for i in range(2)] == [1, 1]  # both numbered 1
            assert page.locator("#classes li.tied .tie").all_inner_texts() == ["tie", "tie"]
            assert sorted(page.locator("#classes .label").all_inner_texts()) == ["cat", "dog"]
            page.screenshot(path=str(tmp_path / "page-tie.png"))
        finally:
            context.close()
