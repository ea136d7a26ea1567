"""Issue 22 §3: ``--runtime auto`` measures on the user's own inputs — ``clipzoo embed`` hands it a spread sample
of ``--images`` / ``--texts``, ``clipzoo index build`` of the folder, ``clipzoo serve INDEX`` of the index's images
(:mod:`clipzoo.runtime.auto_sample`) — and the choice (its report and cache) names where the sample came from."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipzoo.cli import app
from clipzoo.errors import ClipzooError
from clipzoo.runtime import auto, onnx_static_int8
from clipzoo.runtime.auto_sample import SAMPLE_SIZE, ImageSample, sample_options, spread


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("issue22-auto-inputs") / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(5):
        folder = root / "sub" if i % 2 else root
        Image.fromarray(rng.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return root


@pytest.fixture
def measured_eager_only(monkeypatch):
    """auto measures even the tiny embedded model, on eager alone (no exports), one batch, few generated
    captions: the test stays short."""
    monkeypatch.setattr(auto, "TINY_PARAMETERS", 0)
    monkeypatch.setattr(auto, "CANDIDATES", ("eager",))
    monkeypatch.setattr(auto, "BATCHES", 1)
    monkeypatch.setattr(onnx_static_int8, "CALIBRATION_IMAGES", 4)


def cached_choices(cache) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "runtime-auto").glob("*.json"))]


def test_issue22_3_spread_and_lazy_image_sample(photos, tmp_path):
    assert spread(range(100), 4) == [0, 25, 50, 75] and spread("abc", 16) == ["a", "b", "c"]
    assert sample_options("eager", images=["x.jpg"]) == {} and sample_options("auto") == {}
    opts = sample_options("auto:0.99", images=[f"{i}.jpg" for i in range(40)], texts=["a", "b"], origin="test")
    assert len(opts["sample_images"]) == SAMPLE_SIZE == 16
    assert opts["sample_images"].origin == "16 of 40 images of test" and opts["sample_texts"] == ["a", "b"]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = sorted(str(p) for p in photos.rglob("*.png"))[:2]
    decoded = list(ImageSample([good[0], str(bad), good[1]], "mine"))  # the undecodable file left out
    assert [im.size for im in decoded] == [Image.open(p).size for p in good]
    with pytest.raises(ClipzooError, match=r"^runtime auto: none of the 1 sampled images of mine decodes \(image "
                                           r"'.*bad.jpg' cannot be decoded .*\); fix the inputs, or pass --runtime "
                                           r"eager$"):
        list(ImageSample([str(bad)], "mine"))


def test_issue22_3_cli_embed_hands_the_users_files_to_auto(photos, tmp_path, monkeypatch):
    seen = {}

    def fake_choose(card, build, **kwargs):
        seen.update(kwargs)
        return auto.Choice(runtime="eager", reason="test", min_cosine=kwargs["min_cosine"])

    monkeypatch.setattr(auto, "TINY_PARAMETERS", 0)
    monkeypatch.setattr(auto, "choose", fake_choose)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"caption {i}\n" for i in range(40)))
    r = CliRunner().invoke(app, ["embed", "clipzoo/tiny-shapes", "--images", str(photos), "--out",
                                 str(tmp_path / "i.npy"), "--no-progress", "--workers", "0", "--cache-dir",
                                 str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    files = sorted(str(p) for p in photos.rglob("*.png"))
    assert isinstance(seen["images"], ImageSample) and sorted(seen["images"].items) == files
    assert seen["images"].origin == f"5 of 5 images of --images {photos}" and seen["texts"] is None
    seen.clear()
    r = CliRunner().invoke(app, ["embed", "clipzoo/tiny-shapes", "--texts", str(texts), "--out",
                                 str(tmp_path / "t.npy"), "--no-progress", "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert seen["texts"] == [f"caption {i * 40 // 16}" for i in range(16)]  # spread over the file
    assert seen["texts"].origin == f"16 of 40 texts of --texts {texts}" and seen["images"] is None


def test_issue22_3_embed_measurement_names_the_users_files(photos, tmp_path, measured_eager_only):
    cache = tmp_path / "cache"
    r = CliRunner().invoke(app, ["embed", "clipzoo/tiny-shapes", "--images", str(photos), "--out",
                                 str(tmp_path / "i.npy"), "--no-progress", "--workers", "0", "--cache-dir", str(cache)])
    assert r.exit_code == 0, r.output
    origin = f"5 of 5 images of --images {photos}"
    assert "runtime auto: chose eager: the fastest on 16 images + 16 texts" in r.output
    assert f"; measured on {origin}\n" in r.output
    [choice] = cached_choices(cache)
    assert choice["sample"] == {"source": "given", "images": 5, "texts": choice["sample"]["texts"], "origin": origin}
    assert choice["sample"]["texts"] == 4  # no texts given: generated captions for the text tower


def test_issue22_3_index_build_and_serve_measure_on_the_folder(photos, tmp_path, measured_eager_only, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "photos.index"
    monkeypatch.setenv("CLIPZOO_CACHE", str(cache))  # auto's choices (and the embedded model) cached here
    r = CliRunner().invoke(app, ["index", "build", str(photos), "--model", "clipzoo/tiny-shapes", "--out", str(out),
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    [choice] = cached_choices(cache)
    assert choice["sample"]["origin"] == f"5 of 5 images of folder {str(photos)!r}"
    assert choice["sample"]["images"] == 5 and choice["reason"].endswith(f"; measured on {choice['sample']['origin']}")
    from clipzoo.cli.serve import query_model

    for p in (cache / "runtime-auto").glob("*.json"):
        p.unlink()  # measure again, now from the served index
    comparator = query_model({"photos": out}, None, "cpu", "auto")
    assert comparator.runtime_choice.sample["origin"] == f"5 of 5 images of index {str(out)!r}"
    assert not comparator.runtime_choice.cached
