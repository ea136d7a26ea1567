"""The ``clipzoo`` CLI: models, info, embed, compare — and one-line user errors with exit status 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app

OPENAI_NAMES = {"RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"}
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def ok(*args: str):
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def user_error(*args: str) -> str:
    """Run a command that must fail on user input: exit 2, one line 'error: …' on stderr, no traceback."""
    result = run(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def model_path(tiny_files):
    return str(tiny_files["open_clip_safetensors"])


@pytest.fixture(scope="module")
def model(model_path):
    return clipzoo.load(model_path)


# ------------------------------------------------------------------ models
def test_models_openai_json_lists_the_nine_names():
    cards = json.loads(ok("models", "--publisher", "openai", "--json").stdout)
    assert {c["publisher"] for c in cards} == {"openai"}
    assert {c["id"] for c in cards} >= OPENAI_NAMES
    own = [c["id"] for c in json.loads(ok("models", "-p", "OpenAI", "--backend", "open_clip", "--json").stdout)
           if "/" not in c["id"] or c["id"] in OPENAI_NAMES]
    assert set(own) == OPENAI_NAMES and len(own) == 9


def test_models_filters_are_case_insensitive_globs():
    ids = {c["id"] for c in json.loads(ok("models", "--publisher", "OPENAI", "--id", "vit-b-32*", "--json").stdout)}
    assert {"ViT-B-32/openai", "ViT-B-32-quickgelu/openai", "ViT-B/32"} <= ids  # ViT-B/32 is also ViT-B-32
    assert all(i.lower().startswith(("vit-b-32", "vit-b/32")) for i in ids)
    siglip = json.loads(ok("models", "--architecture", "SigLIP", "--json").stdout)
    assert siglip and {c["architecture"] for c in siglip} == {"siglip"}
    hf = json.loads(ok("models", "--backend", "transformers", "--publisher", "google", "--json").stdout)
    assert hf and all(c["source"]["hf_repo"].startswith("google/") for c in hf)
    assert len(json.loads(ok("models", "--modality", "IMAGE", "--json").stdout)) > 100
    assert json.loads(ok("models", "--publisher", "no-such-publisher", "--json").stdout) == []


def test_models_table():
    out = ok("models", "--publisher", "openai", "--backend", "open_clip", "--id", "ViT-L*").stdout
    assert "[clip - openai - ViT-L/14@336px]" in out and "[clip - openai - ViT-L-14/openai]" in out
    assert "models" in out.splitlines()[0]
    assert "openaipublic" in ok("models", "--publisher", "openai", "--id", "RN50", "--long").stdout
    assert "no model matches" in ok("models", "--publisher", "no-such-publisher").stdout


# ------------------------------------------------------------------ info
def test_info_numbers_equal_a_real_model():
    import open_clip

    data = json.loads(ok("info", "openai/ViT-B-32", "--json").stdout)
    real = open_clip.create_model("ViT-B-32", pretrained=None)
    total = sum(p.numel() for p in real.parameters())
    params = data["summary"]["parameters"]
    assert params["total"] == total == 151_277_313
    assert params["image"] == sum(p.numel() for p in real.visual.parameters())
    assert data["summary"]["memory_bytes"]["fp32"]["total"] == 4 * total
    assert data["summary"]["memory_bytes"]["fp16"]["total"] == 2 * total
    assert data["card"]["alias"] == "[clip - openai - ViT-B/32]"

    table = ok("info", "openai/ViT-B-32").stdout
    assert "151,277,313" in table and "577.1 MiB" in table and "288.5 MiB" in table and "ViT-B-32" in table


def test_info_on_a_tiny_file(model_path):
    from clipzoo.testing.tiny import tiny_model

    data = json.loads(ok("info", model_path, "--json").stdout)
    assert data["summary"]["parameters"]["total"] == sum(p.numel() for p in tiny_model().parameters())


def test_info_hf_config_not_cached_is_a_message(tmp_path):
    result = ok("info", "openai/clip-vit-base-patch32", "--cache-dir", str(tmp_path))
    assert "size: unavailable" in result.stdout and "not in the local Hugging Face cache" in result.stdout
    data = json.loads(ok("info", "openai/clip-vit-base-patch32", "--cache-dir", str(tmp_path), "--json").stdout)
    assert data["summary"] is None and "config.json" in data["summary_unavailable"]


# ------------------------------------------------------------------ embed
def test_embed_images_equals_encode_image(model, model_path, image_files, tmp_path):
    folder = os.path.dirname(image_files[0])
    out = tmp_path / "imgs.npy"
    result = ok("embed", model_path, "--images", folder, "--out", out, "--workers", "2", "--batch-size", "2",
                "--exact-decode")
    assert "wrote 3 image embeddings" in result.stderr
    rows = np.load(out)
    inputs = json.loads((tmp_path / "imgs.json").read_text())["inputs"]
    assert inputs == sorted(image_files)
    assert np.abs(rows - model.encode_image(inputs).numpy()).max() <= 1e-5
    ok("embed", model_path, "--images", folder, "--out", tmp_path / "fast.npy", "--workers", "2")  # fast decoding
    assert (np.load(tmp_path / "fast.npy") * rows).sum(1).min() >= 0.9999

    # several paths after one --images (as a shell glob gives them), or repeated --images, keep their order
    order = [image_files[2], image_files[0], image_files[1]]
    for how, args in (("after", ["--images", *order]), ("repeated", sum((["--images", p] for p in order), []))):
        ok("embed", model_path, *args, "--out", tmp_path / how, "--workers", "0", "--no-progress")
        rows = np.load(tmp_path / f"{how}.npy")
        assert json.loads((tmp_path / f"{how}.json").read_text())["inputs"] == order
        assert (rows * model.encode_image(order).numpy()).sum(1).min() >= 0.9999


def test_embed_texts_equals_encode_text(model, model_path, tmp_path):
    texts = ["a red circle", "a photo of a cat", "一只猫的照片"]
    file = tmp_path / "t.txt"
    file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    ok("embed", model_path, "--texts", file, "--out", tmp_path / "t.npy")
    assert np.abs(np.load(tmp_path / "t.npy") - model.encode_text(texts).numpy()).max() <= 1e-5
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["inputs"] == texts


def test_embed_user_errors(model_path, image_files, tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert "corrupt.png" in user_error("embed", model_path, "--images", image_files[0], bad, "--out",
                                       tmp_path / "x.npy", "--workers", "2")
    assert not (tmp_path / "x.npy").exists()
    assert "missing.jpg" in user_error("embed", model_path, "--images", tmp_path / "missing.jpg", "--out", tmp_path / "x")  # noqa: E501
    assert "missing.txt" in user_error("embed", model_path, "--texts", tmp_path / "missing.txt", "--out", tmp_path / "x")  # noqa: E501
    assert "no-such-model" in user_error("embed", "no-such-model", "--images", image_files[0], "--out", tmp_path / "x")
    assert "exactly one of" in user_error("embed", model_path, "--out", tmp_path / "x")
    ok("embed", model_path, "--images", image_files[0], bad, "--skip-bad", "--out", tmp_path / "s")
    side = json.loads((tmp_path / "s.json").read_text())
    assert side["inputs"] == [image_files[0]] and side["skipped"][0]["input"] == str(bad)


def test_embed_failure_keeps_the_last_output_and_odd_names_stay_valid_json(model_path, image_files, tmp_path):
    """A run that decoded nothing replaced a good h.npy with an empty one before it failed; a file name that is
    not UTF-8 was a UnicodeEncodeError traceback after the .npy was written (the sidecar still the old one), and
    ``compare --json`` printed a byte no JSON reader takes."""
    import shutil

    out = tmp_path / "h.npy"
    ok("embed", model_path, "--images", *image_files, "--out", out, "--workers", "0", "--no-progress")
    before = {p: p.read_bytes() for p in (out, tmp_path / "h.json")}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    line = user_error("embed", model_path, "--images", tmp_path / "bad", "--out", out, "--skip-bad", "--workers", "0")
    assert line.startswith("error: none of the 1 images could be decoded; first error: ")
    assert {p: p.read_bytes() for p in before} == before
    odd = tmp_path / "weird" / os.fsdecode(b"n\xe9e.png")
    odd.parent.mkdir()
    shutil.copy(image_files[0], odd)
    ok("embed", model_path, "--images", odd.parent, "--out", tmp_path / "w.npy", "--workers", "0", "--no-progress")
    side = json.loads((tmp_path / "w.json").read_bytes().decode("utf-8"))
    assert [os.fsencode(p) for p in side["inputs"]] == [os.fsencode(str(odd))]  # the same file's bytes
    printed = ok("compare", model_path, "--image", odd, "--text", "a cat", "--json").stdout
    assert json.loads(printed.encode("utf-8").decode("utf-8"))["images"] == [str(odd)]


def test_a_fifo_given_as_a_file_is_one_line_not_a_hang(model_path, image_files, tmp_path):
    """Reading a fifo waits for a writer: `embed --images fifo.png`, `--texts`, `compare --image`, `classify -l`
    and `info` waited for ever. (A writer opened after 20 s ends the wait, so a regression fails, not hangs.)"""
    import threading

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    stop = threading.Event()

    def unblock():
        while not stop.wait(20):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a reader waiting: it reads EOF now
            except OSError:
                pass

    threading.Thread(target=unblock, daemon=True).start()
    try:
        for args in (("embed", model_path, "--images", fifo, "--out", tmp_path / "f"),
                     ("embed", model_path, "--texts", fifo, "--out", tmp_path / "f"),
                     ("compare", model_path, "--image", fifo, "--text", "a cat"),
                     ("classify", image_files[0], "--model", model_path, "--labels", fifo),
                     ("info", fifo)):
            assert f"{str(fifo)!r} is not a regular file (a fifo, a socket or a device)" in user_error(*args), args
    finally:
        stop.set()


# ------------------------------------------------------------------ compare
def test_compare_equals_predict(model, model_path, image_files):
    texts = ["a red circle", "a blue square", "a dog"]
    args = ["compare", model_path, *sum((["--image", p] for p in image_files), []),
            *sum((["--text", t] for t in texts), [])]
    data = json.loads(ok(*args, "--json").stdout)
    probs = torch.tensor(data["probabilities"])
    expected = model.predict(image_files, texts, templates=["{}"])  # texts compared as given
    assert torch.allclose(probs, expected, atol=1e-5)
    assert data["probability"] == "softmax" and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    assert data["images"] == image_files and data["texts"] == texts
    logits = model.similarity(model.encode_image(image_files), model.encode_text(texts))
    assert torch.allclose(torch.tensor(data["logits"]), logits, atol=1e-4)

    labelled = json.loads(ok(*args, "--template", "a photo of a {}.", "--template", "art of a {}.", "--json").stdout)
    expected = model.predict(image_files, texts, templates=["a photo of a {}.", "art of a {}."])
    assert torch.allclose(torch.tensor(labelled["probabilities"]), expected, atol=1e-5)

    table = ok(*args).stdout
    assert "softmax" in table and "a blue square" in table and os.path.basename(image_files[0]) in table
    first = model.predict(image_files[:1], texts, templates=["{}"])[0]
    assert all(f"{p:.4f}" in table for p in first.tolist())


def test_compare_user_errors(model_path, image_files, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert "bad.jpg" in user_error("compare", model_path, "--image", bad, "--text", "a cat")
    assert "nope.png" in user_error("compare", model_path, "--image", tmp_path / "nope.png", "--text", "a cat")
    assert "unknown model 'no-such-model'" in user_error("compare", "no-such-model", "--image", image_files[0],
                                                        "--text", "a cat")
    assert user_error("compare", model_path, "--image", image_files[0], "--text", "word " * 100).endswith(
        "longer than the model's context length 77; shorten it or pass --long-text truncate (or --long-text chunks)")
    assert "--text" in user_error("compare", model_path, "--image", image_files[0])
    assert "ckpt.pt" in user_error("compare", tmp_path / "ckpt.pt", "--image", image_files[0], "--text", "x")


def test_checkpoint_errors_are_one_line(image_files, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert "broken.safetensors" in user_error("compare", broken, "--image", image_files[0], "--text", "x")


def test_common_options_reach_the_loader(tiny_files, image_files, tmp_path):
    import argparse

    from clipzoo.testing.tiny import state_dict

    unsafe = tmp_path / "with-args.pt"
    torch.save({"state_dict": state_dict(), "args": argparse.Namespace(lr=0.1)}, unsafe)
    args = ["compare", unsafe, "--image", image_files[0], "--text", "a", "--text", "b", "--json"]
    assert "--trust-pickle" in user_error(*args)
    assert json.loads(ok(*args, "--trust-pickle").stdout)["probability"] == "softmax"
    # --model-name picks the open_clip config: ViT-B-32 does not fit the tiny weights
    assert "model config 'ViT-B-32' builds a model of 151,277,313 parameters where the weights hold" in user_error(
        "compare", tiny_files["open_clip_pt"], "--model-name", "ViT-B-32", "--image", image_files[0], "--text", "a",
        "--device", "cpu")
    assert "precision" in user_error("compare", tiny_files["open_clip_pt"], "--precision", "fp8",
                                     "--image", image_files[0], "--text", "a")


# ------------------------------------------------------------------ the real console script
def test_console_script_is_fast_and_exits_2(tmp_path):
    code = "import sys, clipzoo.cli; assert 'torch' not in sys.modules, 'clipzoo.cli imports torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
    help_ = subprocess.run([sys.executable, "-m", "clipzoo.cli", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0
    for verb in ("models", "info", "embed", "compare"):
        assert verb in help_.stdout
    res = subprocess.run([sys.executable, "-m", "clipzoo.cli", "compare", "any-model", "--image",
                          str(tmp_path / "missing.jpg"), "--text", "a cat"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [f"error: image {str(tmp_path / 'missing.jpg')!r} does not exist; "
                                               "check the path"]


def test_probability_cells_keep_tiny_sigmoids_visible():
    from clipzoo.cli.compare import _prob

    assert [_prob(0.5), _prob(0.0), _prob(2.64e-05), _prob(1.0)] == ["0.5000", "0.0000", "2.64e-05", "1.0000"]
