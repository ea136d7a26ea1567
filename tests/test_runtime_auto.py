"""runtime="auto" (clipzoo.runtime.auto): the fastest runtime under a cosine guard, cached per machine and model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import clipzoo
from clipzoo.api import resolve_card
from clipzoo.datasets import ShapesDataset, classnames
from clipzoo.errors import ClipzooError
from clipzoo.runtime import RUNTIMES, auto, onnx_static_int8
from clipzoo.runtime import table as runtime_table


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("auto-cache")


@pytest.fixture(scope="module")
def card(cache):
    return resolve_card("clipzoo/tiny-shapes", cache)  # as clipzoo.load resolves it: the same cache key


@pytest.fixture(scope="module")
def sample():
    images = [s.image for s in ShapesDataset(16, seed=3, image_size=64, two_object_prob=0.0)]
    return images, [f"a photo of a {c}." for c in classnames("shape_color")[:16]]


def builder(card, cache):
    return lambda **over: clipzoo.load(card, **{"cache_dir": cache, **over})


@pytest.fixture(scope="module")
def choice(card, cache, sample):
    images, texts = sample
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_static_int8, "METHODS", ("minmax",))  # one calibration method: a shorter test
        return auto.choose(card, builder(card, cache), cache_dir=cache, images=images, texts=texts,
                           min_cosine=0.999)


def test_issue22_auto_picks_fastest_under_cosine_guard(choice):
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


def test_issue22_auto_choice_cached_per_machine_and_model(choice, card, cache, sample, monkeypatch):
    images, texts = sample
    files = list((cache / "runtime-auto").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["runtime"] == choice.runtime

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(auto, "measure", no_measuring)
    again = auto.choose(card, builder(card, cache), cache_dir=cache, images=images, texts=texts, min_cosine=0.999)
    assert again.cached and again.runtime == choice.runtime and again.measured == choice.measured
    other = auto.choose(card, builder(card, cache), cache_dir=cache, images=images[:3], texts=texts[:3],
                        min_cosine=0.999)  # other inputs, same machine and model: the same choice
    assert other.cached and other.runtime == choice.runtime
    here = auto.machine_key()
    toggled = sorted(set(here["flags"]) ^ {"amx_int8"})  # differs from this machine's flags, whichever CPU runs this
    for other_machine in ({**here, "flags": toggled}, {**here, "cpu": here["cpu"] + " (another model)"}):
        monkeypatch.setattr(auto, "machine_key", lambda m=other_machine: m)
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


def test_issue22_auto_failing_candidate_falls_back(card, cache, sample, monkeypatch):
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


def test_issue22_auto_tiny_model_runs_eager_without_measuring(cache, monkeypatch):
    def no_measuring(*args, **kwargs):
        raise AssertionError("measured")

    monkeypatch.setattr(auto, "choose", no_measuring)
    m = clipzoo.load("clipzoo/tiny-shapes", runtime="auto", cache_dir=cache)
    size = sum(p.numel() for p in m.parameters())
    assert size < auto.TINY_PARAMETERS and m.runtime == "eager" and m.runtime_choice.runtime == "eager"
    assert m.runtime_choice.reason == (f"chose eager without measuring: {m.card.alias} has {size / 1e6:.1f} M "
                                       "parameters (< 25 M), where exporting and calibrating would cost more than "
                                       "they save")


def test_issue22_auto_guard_through_load_and_its_errors(card, cache, sample, monkeypatch):
    seen = {}

    def fake_choose(card, build, **kwargs):
        seen.update(kwargs)
        return auto.Choice(runtime="eager", reason="test", min_cosine=kwargs["min_cosine"])

    monkeypatch.setattr(auto, "TINY_PARAMETERS", 0)
    monkeypatch.setattr(auto, "choose", fake_choose)
    m = clipzoo.load("clipzoo/tiny-shapes", runtime="auto:0.9991", cache_dir=cache)
    assert seen["min_cosine"] == 0.9991 and m.runtime_choice.reason == "test"
    images, texts = sample
    clipzoo.load("clipzoo/tiny-shapes", runtime="auto", cache_dir=cache, min_cosine=0.98, sample_images=images[:3],
                 sample_texts=texts[:3])
    assert seen["min_cosine"] == 0.98 and seen["images"] == images[:3] and seen["texts"] == texts[:3]
    for runtime, message in (("auto:1.5", "min_cosine must be in (0, 1], got 1.5; e.g. --min-cosine 0.995"),
                             ("auto:x", "runtime 'auto:x': the guard after 'auto:' must be a number in (0, 1], "
                                        "e.g. auto:0.995"),
                             ("onnx:0.9", "runtime 'onnx:0.9': only auto takes a cosine guard (auto:0.995)")):
        with pytest.raises(ClipzooError) as err:
            clipzoo.load("clipzoo/tiny-shapes", runtime=runtime, cache_dir=cache)
        assert str(err.value) == message
    with pytest.raises(ClipzooError, match=r"^min_cosine: only for runtime='auto', not 'onnx'$"):
        clipzoo.load("clipzoo/tiny-shapes", runtime="onnx", cache_dir=cache, min_cosine=0.9)


def test_issue22_auto_is_the_cli_default_with_min_cosine(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na blue square\n")
    runner = CliRunner()
    for verb in (["embed", "--help"], ["index", "build", "--help"], ["serve", "--help"]):
        out = runner.invoke(app, verb, terminal_width=200).output
        assert "--min-cosine" in out and "--runtime" in out, verb
    got = runner.invoke(app, ["embed", "clipzoo/tiny-shapes", "--texts", str(texts), "--out", str(tmp_path / "t.npy"),
                              "--no-progress"])
    assert got.exit_code == 0, got.output
    assert "runtime auto" not in got.output  # a tiny model: nothing measured, nothing to report on stderr
    import numpy as np

    ref = clipzoo.load("clipzoo/tiny-shapes").encode_text(["a red circle", "a blue square"]).numpy()
    assert np.abs(np.load(tmp_path / "t.npy") - ref).max() < 1e-5  # auto ran the tiny model eager
    bad = runner.invoke(app, ["embed", "clipzoo/tiny-shapes", "--texts", str(texts), "--out", str(tmp_path / "b.npy"),
                              "--min-cosine", "1.5"])
    assert bad.exit_code == 2 and "min_cosine must be in (0, 1], got 1.5; e.g. --min-cosine 0.995" in bad.output


def test_load_with_runtime_auto(cache, sample, monkeypatch):
    images, texts = sample
    monkeypatch.setattr(auto, "TINY_PARAMETERS", 0)  # as if it were large: the choice measured above is reused
    monkeypatch.setattr(onnx_static_int8, "METHODS", ("minmax",))
    monkeypatch.setattr(auto, "measure", lambda *a, **k: pytest.fail("measured again"))
    m = clipzoo.load("clipzoo/tiny-shapes", runtime="auto:0.999", cache_dir=cache)
    assert "auto" in RUNTIMES and m.runtime == m.runtime_choice.runtime and m.runtime in auto.CANDIDATES
    assert m.runtime_choice.cached
    ref = clipzoo.load("clipzoo/tiny-shapes")
    assert (m.encode_image(images).float() * ref.encode_image(images)).sum(-1).min() >= auto.DEFAULT_MIN_COSINE
    assert (m.encode_text(texts).float() * ref.encode_text(texts)).sum(-1).min() >= auto.DEFAULT_MIN_COSINE


@pytest.mark.parametrize("runtime", ["onnx-int8-static", "openvino-int8"])
def test_issue22_auto_calibrates_static_int8_on_the_callers_inputs(runtime, card, cache, sample, monkeypatch):
    from clipzoo.backends.onnx_format import META_FILE

    if runtime not in auto.available():
        pytest.skip(f"{runtime} cannot run here")
    monkeypatch.setattr(onnx_static_int8, "METHODS", ("minmax",))
    images, texts = sample[0][:4], sample[1][:4 if runtime == "onnx-int8-static" else 5]  # a calibration each
    got = auto.choose(card, builder(card, cache), cache_dir=cache, images=images, texts=texts,
                      min_cosine=0.5, candidates=[runtime])
    assert got.runtime == runtime and got.calibration is not None
    meta = json.loads((Path(got.calibration) / META_FILE).read_text())["quantization"]
    assert meta["calibration"] == {"source": "given", "images": 4, "texts": len(texts)}
    m = auto.run_choice(auto.read_choice(next(p for p in (cache / "runtime-auto").glob("*.json")
                                              if json.loads(p.read_text())["calibration"] == got.calibration)),
                        card, builder(card, cache), device="cpu", precision="fp32", cache_dir=cache, load_kwargs={})
    assert m.runtime == runtime and str(m.model.folder) == got.calibration
    assert type(m.model).__name__ == {"onnx-int8-static": "OnnxTowers", "openvino-int8": "OpenVinoTowers"}[runtime]


def test_issue22_auto_cli_reports_what_it_measured_and_chose(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    measured = {"eager": {"seconds": 1.0, "min_cosine": 1.0, "eligible": True, "error": None}}
    monkeypatch.setattr(auto, "TINY_PARAMETERS", 0)
    monkeypatch.setattr(auto, "choose", lambda card, build, **k: auto.Choice(
        runtime="eager", reason=f"chose eager: guard {k['min_cosine']}", min_cosine=k["min_cosine"],
        measured=measured))
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n")
    got = CliRunner().invoke(app, ["embed", "clipzoo/tiny-shapes", "--texts", str(texts), "--out",
                                   str(tmp_path / "t.npy"), "--no-progress", "--min-cosine", "0.99",
                                   "--cache-dir", str(tmp_path / "cache")])
    assert got.exit_code == 0, got.output
    assert "runtime auto: chose eager: guard 0.99\n" in got.output
