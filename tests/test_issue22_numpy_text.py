"""Issue 22 §6: ``clipzoo search INDEX TEXT`` (one-shot) on the embedded model runs its text tower in NumPy
(:mod:`clipzoo.models.numpy_text`, from the packed safetensors), equal to the torch features within 1e-5, and
never imports torch."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import clipzoo
from clipzoo.errors import BadTextError
from clipzoo.index import open_index
from clipzoo.models.numpy_text import NumpyTextTower, embedded_name, embedded_text_tower

TEXTS = ["a red circle", "a photo of a blue square.", "  a   yellow\tstar ", "cross", "a purple heart, small",
         "zebra xylophone quantum chromodynamics", "ÜNICODE — ünïcödé ☃", ""]
LONG = "a small red circle on the left. " * 6


@pytest.fixture(scope="module")
def model():
    return clipzoo.load("clipzoo/tiny-shapes")


@pytest.fixture(scope="module")
def tower():
    return embedded_text_tower("clipzoo/tiny-shapes")


def test_issue22_6_numpy_text_tower_equals_torch(model, tower):
    with torch.no_grad():
        ref = model.encode_text(TEXTS).numpy()
        raw = model.encode_text(TEXTS, normalize=False).numpy()
    got = tower.encode_text(TEXTS)
    assert got.dtype == np.float32 and got.shape == ref.shape == (len(TEXTS), model.embed_dim)
    assert np.abs(got - ref).max() <= 1e-5
    assert np.abs(tower.encode_text(TEXTS, normalize=False) - raw).max() <= 1e-5
    for policy in ("truncate", "chunks"):  # longer than the 24-token context
        with torch.no_grad():
            ref = model.encode_text([LONG, "a cross"], long_text=policy).numpy()
        assert np.abs(tower.encode_text([LONG, "a cross"], long_text=policy) - ref).max() <= 1e-5, policy
    with pytest.raises(BadTextError) as torch_error:
        model.encode_text([LONG])
    with pytest.raises(BadTextError) as numpy_error:
        tower.encode_text([LONG])
    assert str(numpy_error.value) == str(torch_error.value)
    assert str(numpy_error.value).startswith(f"text {LONG[:57] + '...'!r} is 50 tokens, longer than the model's "
                                             "context length 24")


def test_issue22_6_numpy_text_tower_names_the_embedded_model_only(model, tower):
    assert isinstance(tower, NumpyTextTower) and tower.embed_dim == model.embed_dim
    assert embedded_name("clipzoo/tiny-shapes") == embedded_name("tiny-shapes") == "tiny-shapes"
    assert embedded_name(model.card.source.path) == "tiny-shapes"  # the folder an index records
    assert embedded_text_tower(model.card.source.path) is tower  # loaded once per process
    for other in ("openai/ViT-B-32", "/tmp/some/other/folder", None):
        assert embedded_name(other) is None and embedded_text_tower(other) is None
    with pytest.raises(BadTextError, match=r"^the search text is empty; pass some words to search for$"):
        tower.query_vector("   ")


@pytest.fixture(scope="module")
def shapes_index(tmp_path_factory):
    from clipzoo.demo import make_shapes
    from clipzoo.index import build_index

    root = tmp_path_factory.mktemp("issue22-numpy-text")
    build_index(make_shapes(root / "shapes", 14, image_size=32), root / "tiny.index", model="clipzoo/tiny-shapes",
                workers=0)
    return root / "tiny.index"


def test_issue22_6_search_one_shot_does_not_import_torch(shapes_index, model):
    """A fresh `clipzoo search INDEX TEXT`: torch never in sys.modules, and the hits (ids, scores) those of the
    torch model's text features."""
    code = ("import json, sys\nfrom clipzoo.cli import main\n"
            "sys.argv = ['clipzoo', 'search', sys.argv[1], 'a blue square', '-k', '4', '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))")
    proc = subprocess.run([sys.executable, "-c", code, str(shapes_index)], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []  # torch was never imported
    hits = json.loads("\n".join(lines[:-1]))["hits"]
    idx = open_index(shapes_index, model=model)
    ref = idx.search_text("a blue square", k=4)
    assert [h["id"] for h in hits] == [h.id for h in ref]
    assert np.abs(np.array([h["score"] for h in hits]) - np.array([h.score for h in ref])).max() <= 1e-5
    assert "square" in hits[0]["caption"]
