"""Issue 17 §7: the README's Python examples run as written. Every ```python block of README.md is executed, in
order and in one namespace (a later block uses the model an earlier one loaded), in a folder holding the images
they name — drawn here as scripts/quickstart.sh draws them — on the embedded model clipzoo/tiny-shapes.

A block whose first line says it downloads weights runs with those model names swapped for the embedded model
(the only change made to any block); every other block runs exactly as printed."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# the one edit, for blocks that say they download: the real models' names -> the embedded model
SWAPS = {'"ViT-B/32"': '"clipzoo/tiny-shapes"', '"ViT-B-32", pretrained="laion2b_s34b_b79k"': '"clipzoo/tiny-shapes"',
         'get_tokenizer("ViT-B-32")': 'get_tokenizer("clipzoo/tiny-shapes")'}


def blocks() -> list[str]:
    return BLOCK.findall(README.read_text())


def _draw(folder: Path) -> None:
    """The quickstart's two images, and a photos/ folder of four more for the bulk-embedding example."""
    from PIL import Image, ImageDraw

    red = Image.new("RGB", (96, 96), (90, 110, 100))
    ImageDraw.Draw(red).ellipse([20, 20, 76, 76], fill=(225, 25, 25))
    red.save(folder / "red-circle.png")
    blue = Image.new("RGB", (96, 96), (150, 140, 120))
    ImageDraw.Draw(blue).polygon([(48, 14), (84, 74), (12, 74)], fill=(35, 75, 230))
    blue.save(folder / "blue-triangle.png")
    (folder / "photos").mkdir()
    for i in range(4):
        im = Image.new("RGB", (64, 48), (40 * i, 200 - 40 * i, 90))
        ImageDraw.Draw(im).rectangle([8, 8, 30 + 5 * i, 40], fill=(250, 250, 20 * i))
        im.save(folder / "photos" / f"p{i}.jpg")


def test_readme_has_python_blocks():
    found = blocks()
    assert len(found) >= 3
    assert 'clipzoo.load("clipzoo/tiny-shapes"' in found[0]  # the main example runs offline as written


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    import clipzoo

    _draw(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    ran = []
    try:
        for i, code in enumerate(blocks()):
            if "download" in code.splitlines()[0]:
                for real, embedded in SWAPS.items():
                    code = code.replace(real, embedded)
                assert "ViT-B" not in code.split("\n", 1)[1], f"block {i}: a model name left to download"
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
            ran.append(i)
    finally:
        if "[clip - me - tiny]" in {c.alias for c in clipzoo.REGISTRY.find(publisher="me")}:
            clipzoo.REGISTRY.unregister("[clip - me - tiny]")
    assert ran == list(range(len(blocks())))
    # what the main example computed is what the README's comments say
    card, probs, img = namespace["card"], namespace["probs"], namespace["img"]
    assert (card.alias, card.backend, card.embed_dim) == ("[clip - openai - ViT-B/32]", "open_clip", 512)
    assert tuple(img.shape) == (2, namespace["m"].embed_dim)
    assert probs.argmax(dim=-1).tolist() == [0] and float(probs[0, 0]) > 0.99  # [[1.00, 0.00, 0.00]]
    assert namespace["mine"].encode_text("a red circle").allclose(namespace["m"].encode_text("a red circle"), atol=1e-3)
    s = namespace["s"]
    assert s.parameters == {"image": 87849216, "text": 63428096, "other": 1}
    assert (s.total, s.memory("fp16")) == (151277313, 302554626)
    assert (tmp_path / "photos.npy").is_file() and (tmp_path / "photos.json").is_file()
    assert os.path.getsize(tmp_path / "photos.npy") > 4 * namespace["m"].embed_dim * 4
    assert namespace["logits_per_image"].shape == (1, 2)
    assert namespace["tokenizer"](["a cat"]).shape[0] == 1


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
