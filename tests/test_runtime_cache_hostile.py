"""The runtimes' caches under hostile conditions: weights rewritten in place, damaged or foreign cache files, caches
that cannot be written, a full disk, and runtimes that do not fit an exported model."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import clipzoo
from clipzoo.api import resolve_card
from clipzoo.backends.onnx_format import IMAGE_FILE, META_FILE
from clipzoo.errors import ClipzooError, UnsupportedError
from clipzoo.runtime import auto, onnx, onnx_static_int8, openvino_int8
from clipzoo.runtime.onnx_export import export_onnx
from clipzoo.testing import tiny

TEXTS = ["a red circle", "two blue squares"]
WEIGHTS = "open_clip_model.safetensors"


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


# ------------------------------------------------------------------ 1. a model folder rewritten in place
def test_folder_weights_rewritten_in_place_are_exported_again(tmp_path, cache):
    a = tiny.write_open_clip_hub_folder(tmp_path / "a", seed=0)
    b = tiny.write_open_clip_hub_folder(tmp_path / "b", seed=1)
    old = clipzoo.load(str(a), runtime="onnx", cache_dir=cache)
    old_key = auto.cache_file(resolve_card(str(a), cache), cache, {}, 0.995, ["eager"])
    shutil.copyfile(b / WEIGHTS, a / WEIGHTS)  # the folder's own stat does not change
    new = clipzoo.load(str(a), runtime="onnx", cache_dir=cache)
    eager = clipzoo.load(str(a), cache_dir=cache)
    assert new.model.folder != old.model.folder
    assert max_diff(new.encode_text(TEXTS), eager.encode_text(TEXTS)) < 1e-4
    assert max_diff(old.encode_text(TEXTS), eager.encode_text(TEXTS)) > 1e-2  # other weights indeed
    assert auto.cache_file(resolve_card(str(a), cache), cache, {}, 0.995, ["eager"]) != old_key


def test_model_fingerprint_still_importable_from_the_index():
    from clipzoo.files import model_fingerprint
    from clipzoo.index import model_record

    assert model_record.model_fingerprint is model_fingerprint


# ------------------------------------------------------------------ 2. a bad runtime-auto cache file
BAD_CHOICES = {
    "not json": ("{not json", r"Expecting property name enclosed in double quotes: line 1 column 2 \(char 1\)"),
    "empty": ("", r"Expecting value: line 1 column 1 \(char 0\)"),
    "a list": ("[1, 2]", "not a JSON object but list"),
    "runtime a number": ('{"runtime": 5, "reason": "r", "min_cosine": 0.995}', "runtime is int"),
    "extra keys": ('{"runtime": "eager", "reason": "r", "min_cosine": 0.995, "x": 1}', r"unknown fields \['x'\]"),
    "missing keys": ('{"runtime": "eager"}', r"missing fields \['min_cosine', 'reason'\]"),
    "unknown runtime": ('{"runtime": "tpu", "reason": "r", "min_cosine": 0.995}',
                        "runtime 'tpu' is not one of the candidates here: eager, onnx"),
    "auto": ('{"runtime": "auto", "reason": "r", "min_cosine": 0.995}',
             "runtime 'auto' is not one of the candidates here: eager, onnx"),
    "compile": ('{"runtime": "compile", "reason": "r", "min_cosine": 0.995}',
                "runtime 'compile' is not one of the candidates here: eager, onnx"),
    "engine gone": ('{"runtime": "openvino-int8", "reason": "r", "min_cosine": 0.995}',
                    "runtime 'openvino-int8' is not one of the candidates here: eager, onnx"),
}


@pytest.mark.parametrize("name", sorted(BAD_CHOICES))
def test_bad_cached_choice_is_measured_again(name, tmp_path):
    text, why = BAD_CHOICES[name]
    path = tmp_path / "choice.json"
    path.write_text(text, encoding="utf-8")
    with pytest.warns(UserWarning, match=rf"^runtime auto: ignoring the cached choice {path} \({why}\); "
                                         r"measuring again$"):
        assert auto.read_choice(path, ["eager", "onnx"]) is None
    assert not path.exists()  # said once: the next measurement's choice takes its place


def test_good_cached_choice_is_read_back(tmp_path):
    path = tmp_path / "choice.json"
    path.write_text(json.dumps({"runtime": "onnx", "reason": "r", "min_cosine": 0.995, "calibration": None}))
    choice = auto.read_choice(path, ["eager", "onnx"])
    assert (choice.runtime, choice.cached, choice.calibration) == ("onnx", True, None)


def test_load_with_a_damaged_auto_cache_measures_again(tmp_path, cache):
    spec = str(tiny.write_open_clip_hub_folder(tmp_path / "m", seed=0))
    path = auto.cache_file(resolve_card(spec, cache), cache, {}, 0.995, auto.candidates_here("cpu"))
    path.parent.mkdir(parents=True)
    path.write_text('{"runtime": "compile", "reason": "r", "min_cosine": 0.995}')
    with pytest.warns(UserWarning, match="^runtime auto: ignoring the cached choice .* measuring again$") as said:
        m = clipzoo.load(spec, runtime="auto", cache_dir=cache)
    assert said[0].filename == __file__  # the user's line, not one inside clipzoo (errors.warn_user)
    assert m.runtime == "eager"  # a tiny model: eager without measuring, never the cached compile


# ------------------------------------------------------------------ 3. a choice that cannot be cached
def test_choice_that_cannot_be_cached_is_still_returned(tmp_path, cache, monkeypatch):
    spec = str(tiny.write_open_clip_hub_folder(tmp_path / "m", seed=0))
    card = resolve_card(spec, cache)
    made = auto.Choice(runtime="eager", reason="chose eager", min_cosine=0.995)
    monkeypatch.setattr(auto, "measure", lambda *a, **k: made)
    path = auto.cache_file(card, cache, {}, 0.995, auto.candidates_here("cpu"))
    path.mkdir(parents=True)  # a folder where the cache file goes
    with pytest.warns(UserWarning, match=rf"^runtime auto: cannot cache the choice at {path} \(Is a directory\); "
                                         "the next load measures again$"):
        choice = auto.choose(card, lambda **k: None, cache_dir=cache, images=[tiny_image()], texts=["x"])
    assert choice is made and choice.runtime == "eager"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left


# ------------------------------------------------------------------ 4. int8 runtimes on a user's export
@pytest.fixture
def user_export(tmp_path):
    eager = clipzoo.load(str(tiny.write_open_clip_hub_folder(tmp_path / "m", seed=0, config=tiny.TINY_VIT_CONFIG)),
                         cache_dir=tmp_path / "build-cache")
    return eager, export_onnx(eager, tmp_path / "exports" / "exported")


@pytest.mark.parametrize("runtime", ["onnx-int8", "onnx-int8-static"])
def test_int8_of_a_user_export_lives_in_the_cache(runtime, user_export, cache, monkeypatch):
    eager, folder = user_export
    monkeypatch.setattr(onnx_static_int8, "METHODS", ("minmax",))
    monkeypatch.setattr(onnx_static_int8, "CALIBRATION_IMAGES", 6)
    m = clipzoo.load(str(folder), runtime=runtime, cache_dir=cache)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["exported"]  # nothing written beside it
    assert m.model.folder.parent == cache / "onnx" and m.model.folder.name.startswith("export-exported-")
    cos = torch.nn.functional.cosine_similarity(m.encode_text(TEXTS), eager.encode_text(TEXTS))
    assert float(cos.min()) > 0.99
    again = clipzoo.load(str(folder), runtime=runtime, cache_dir=cache)
    assert again.model.folder == m.model.folder


def test_openvino_int8_refuses_a_fused_export_up_front(user_export, cache, monkeypatch):
    pytest.importorskip("openvino")
    eager, _ = user_export
    fused = export_onnx(eager, cache.parent / "fused", vit="contrib")
    monkeypatch.setattr(openvino_int8, "static_int8_folder", None)  # never calibrated
    with pytest.raises(UnsupportedError, match=(
            rf"^{fused} holds ONNX Runtime's contrib ops \(BiasGelu, MultiHeadAttention\), which OpenVINO cannot "
            r"run once quantised; export the model in standard ops \(export_onnx\(\.\.\., vit='standard'\), or load "
            r"the PyTorch model with runtime='openvino-int8'\), or use runtime='onnx-int8-static'$")):
        clipzoo.load(str(fused), runtime="openvino-int8", cache_dir=cache)


# ------------------------------------------------------------------ 5. a damaged cached export
def truncate(folder: Path) -> None:
    data = (folder / IMAGE_FILE).read_bytes()
    (folder / IMAGE_FILE).write_bytes(data[:len(data) // 2])


def empty(folder: Path) -> None:
    (folder / IMAGE_FILE).write_bytes(b"")


def bad_graphs(folder: Path) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "graphs": [1]}))


@pytest.mark.parametrize("damage", [truncate, empty, bad_graphs], ids=lambda f: f.__name__)
def test_damaged_cached_export_is_exported_again(damage, tmp_path, cache):
    spec = str(tiny.write_open_clip_hub_folder(tmp_path / "m", seed=0))
    first = clipzoo.load(spec, runtime="onnx", cache_dir=cache)
    damage(first.model.folder)
    with pytest.warns(UserWarning, match=rf"^a cached ONNX export of .* does not load \(.*\); removing "
                                         rf"{first.model.folder} and exporting again$") as said:
        again = clipzoo.load(spec, runtime="onnx", cache_dir=cache)
    assert [w.filename for w in said] == [__file__]
    eager = clipzoo.load(spec, cache_dir=cache)
    assert again.model.folder == first.model.folder
    assert max_diff(again.encode_image([tiny_image()]), eager.encode_image([tiny_image()])) < 1e-4


def tiny_image():
    from PIL import Image

    return Image.new("RGB", (40, 30), (200, 30, 30))


def test_export_that_never_loads_is_one_line(tmp_path, cache, monkeypatch):
    spec = str(tiny.write_open_clip_hub_folder(tmp_path / "m", seed=0))

    def broken(folder, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Protobuf parsing failed.")

    monkeypatch.setattr(onnx, "load_exported", broken)
    with pytest.warns(UserWarning, match="^a cached ONNX export of .* does not load"), pytest.raises(
            ClipzooError, match=rf"^the ONNX export of .* does not load even written anew \(RuntimeError: "
                                rf"\[ONNXRuntimeError\] : 7 : INVALID_PROTOBUF : Protobuf parsing failed\.\); delete "
                                rf"{cache / 'onnx'} and rerun, or use runtime='eager'$"):
        clipzoo.load(spec, runtime="onnx", cache_dir=cache)


def test_damaged_user_export_is_one_line(user_export, cache):
    _, folder = user_export
    empty(folder)
    with pytest.raises(ClipzooError, match=rf"^ONNX export {folder} does not load \(.+\); export the model again$"):
        clipzoo.load(str(folder), runtime="onnx", cache_dir=cache)


# ------------------------------------------------------------------ 6. PyTorch runtimes on an export
@pytest.mark.parametrize(("runtime", "instead"), [("torch-int8", "onnx-int8"), ("compile", "onnx")])
def test_pytorch_runtimes_refuse_an_onnx_export(runtime, instead, user_export, cache):
    _, folder = user_export
    with pytest.raises(UnsupportedError, match=(
            rf"^an ONNX export runs in ONNX Runtime, not under runtime '{runtime}' \(a PyTorch runtime\): {folder}; "
            rf"use runtime='{instead}'$")):
        clipzoo.load(str(folder), runtime=runtime, cache_dir=cache)


# ------------------------------------------------------------------ 8. a write the file system refuses
@pytest.mark.parametrize(("code", "message"), [
    (errno.EFBIG, r"cannot write {} \(File too large\): check the disk, the file size limit \(ulimit -f\) and the "
                  r"folder's permissions \(or pass another cache_dir\), then rerun"),
    (errno.ENOSPC, r"no space left writing {}; free some space \(or pass another cache_dir\) and rerun")])
def test_full_disk_during_export_is_one_line_at_once(code, message, tmp_path, cache, monkeypatch):
    spec = str(tiny.write_open_clip_hub_folder(tmp_path / "m", seed=0))
    calls = []

    def refuse(*args, **kwargs):
        calls.append(kwargs.get("dynamo"))
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch.onnx, "export", refuse)
    folder = onnx.cache_folder(resolve_card(spec, cache), cache, {})
    with pytest.raises(ClipzooError, match="^" + message.format(folder) + "$"):
        clipzoo.load(spec, runtime="onnx", cache_dir=cache)
    assert calls == [False]  # no retry with another exporter
    assert list((cache / "onnx").iterdir()) == []  # nothing partial left


# ------------------------------------------------------------------ 9. --min-cosine with another runtime
def test_cli_refuses_min_cosine_with_another_runtime(tmp_path):
    from clipzoo.cli import app

    texts = tmp_path / "t.txt"
    texts.write_text("a cat\n")
    result = CliRunner().invoke(app, ["embed", "clipzoo/tiny-shapes", "--texts", str(texts), "--out",
                                      str(tmp_path / "x.npy"), "--runtime", "eager", "--min-cosine", "2"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == ("error: --min-cosine is only for --runtime auto, not 'eager'; "
                                                      "drop it or pass --runtime auto")
    assert not (tmp_path / "x.npy").exists()


def test_a_rebuild_leaves_other_builders_folders_alone(tmp_path, cache):
    """The rebuild removed every folder named like '<entry>-int8*' — another process's '.tmp-<pid>-<tid>' build in
    progress too (which then failed as if the disk were full)."""
    spec = str(tiny.write_open_clip_hub_folder(tmp_path / "m", seed=0))
    first = clipzoo.load(spec, runtime="onnx-int8", cache_dir=cache)
    int8 = Path(first.model.folder)
    assert int8.name.endswith("-int8")
    (int8 / IMAGE_FILE).write_bytes(b"")
    building = int8.with_name(f"{int8.name}.tmp-99999-1")
    building.mkdir()
    with pytest.warns(UserWarning, match="does not load"):
        clipzoo.load(spec, runtime="onnx-int8", cache_dir=cache)
    assert building.is_dir()


def test_a_cache_inside_the_model_folder_keeps_one_export(tmp_path):
    """The fingerprint read the cache kept inside the model's folder: every load keyed a new export (three loads,
    three exports, the disk filling)."""
    spec = tiny.write_open_clip_hub_folder(tmp_path / "m", seed=0)
    for _ in range(3):
        clipzoo.load(str(spec), runtime="onnx", cache_dir=spec / "cache")
    assert len(list((spec / "cache" / "onnx").iterdir())) == 1
