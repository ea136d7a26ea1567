"""runtime="auto" (clipzoo.runtime.auto): the fastest runtime under a cosine guard, cached per machine and model."""
from __future__ import annotations

import json

import pytest

import clipzoo
from clipzoo.datasets import ShapesDataset, classnames
from clipzoo.errors import ClipzooError
from clipzoo.runtime import RUNTIMES, auto
from clipzoo.runtime import table as runtime_table


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("auto-cache")


@pytest.fixture(scope="module")
def card():
    return clipzoo.REGISTRY.resolve("clipzoo/tiny-shapes")


@pytest.fixture(scope="module")
def sample():
    images = [s.image for s in ShapesDataset(16, seed=3, image_size=64, two_object_prob=0.0)]
    return images, [f"a photo of a {c}." for c in classnames("shape_color")[:16]]


def builder(card, cache):
    return lambda **over: clipzoo.load(card, **{"cache_dir": cache, **over})


@pytest.fixture(scope="module")
def choice(card, cache, sample):
    images, texts = sample
    return auto.choose(card, builder(card, cache), cache_dir=cache, images=images, texts=texts, min_cosine=0.999)


def test_auto_picks_the_fastest_runtime_that_passes_the_guard(choice):
    assert set(choice.measured) == set(auto.available())
    assert {"eager", "onnx", "onnx-int8", "onnx-int8-static"} <= set(choice.measured)  # onnxruntime: test extras
    for runtime, m in choice.measured.items():
        assert m["error"] is None and m["seconds"] > 0
        assert m["eligible"] == (runtime == "eager" or m["min_cosine"] >= 0.999), (runtime, m)
    assert choice.measured["eager"]["min_cosine"] >= 0.99999
    eligible = {r: m["seconds"] for r, m in choice.measured.items() if m["eligible"]}
    assert choice.runtime == min(eligible, key=eligible.get)
    assert choice.reason.startswith(f"chose {choice.runtime}: the fastest on 48 images + 48 texts with min "
                                    "cosine to fp32 ≥ 0.999 (eager: 1.00× eager, min cosine ")
    assert not choice.cached and choice.machine == auto.machine_key()


def test_the_choice_is_cached_per_machine_and_model(choice, card, cache, sample, monkeypatch):
    images, texts = sample
    files = list((cache / "runtime-auto").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["runtime"] == choice.runtime

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(auto, "measure", no_measuring)
    again = auto.choose(card, builder(card, cache), cache_dir=cache, images=images, texts=texts, min_cosine=0.999)
    assert again.cached and again.runtime == choice.runtime and again.measured == choice.measured
    monkeypatch.setattr(auto, "machine_key", lambda: {"flags": ["avx2"], "cpus": 2})  # another machine
    with pytest.raises(AssertionError, match="measured again"):
        auto.choose(card, builder(card, cache), cache_dir=cache, images=images, texts=texts, min_cosine=0.999)


def test_a_strict_guard_leaves_eager(card, cache, sample):
    images, texts = sample
    strict = auto.choose(card, builder(card, cache), cache_dir=cache, images=images[:4], texts=texts[:4],
                         min_cosine=1.0, candidates=["eager", "onnx-int8"])
    assert strict.runtime == "eager" and not strict.measured["onnx-int8"]["eligible"]
    assert "onnx-int8: " in strict.reason and "below the guard 1.0" in strict.reason
    with pytest.raises(ClipzooError, match=r"min_cosine must be in \(0, 1\], got 1.5"):
        auto.choose(card, builder(card, cache), cache_dir=cache, min_cosine=1.5)


def test_a_candidate_that_fails_is_skipped_with_its_reason(card, cache, sample, monkeypatch):
    from types import SimpleNamespace

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this op\nsecond line")

    monkeypatch.setitem(runtime_table.MODULES, "onnx", SimpleNamespace(apply=broken))
    images, texts = sample
    got = auto.choose(card, builder(card, cache), cache_dir=cache, images=images[:2], texts=texts[:2],
                      candidates=["eager", "onnx"])
    assert got.runtime == "eager" and got.measured["onnx"] == {"seconds": None, "min_cosine": None,
                                                               "eligible": False, "error": "no kernel for this op"}
    assert "onnx: unavailable (no kernel for this op)" in got.reason


def test_load_with_runtime_auto(cache, sample, monkeypatch):
    images, texts = sample
    monkeypatch.setattr(auto, "CANDIDATES", ("eager", "onnx-int8-static"))  # built above: a short test
    m = clipzoo.load("clipzoo/tiny-shapes", runtime="auto", cache_dir=cache)
    assert "auto" in RUNTIMES and m.runtime == m.runtime_choice.runtime and m.runtime in auto.CANDIDATES
    ref = clipzoo.load("clipzoo/tiny-shapes")
    assert (m.encode_image(images).float() * ref.encode_image(images)).sum(-1).min() >= auto.DEFAULT_MIN_COSINE
    assert (m.encode_text(texts).float() * ref.encode_text(texts)).sum(-1).min() >= auto.DEFAULT_MIN_COSINE
