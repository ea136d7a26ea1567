"""Issue 22 §6: the embedded model loads without open_clip / torchvision (the ~2 s of imports that kept
`clipzoo serve` over 3 s and `clipzoo search` over 2 s), with the same features as open_clip's build."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from clipzoo.api import resolve_card
from clipzoo.backends import open_clip as oc_backend
from clipzoo.models.plain_clip import PlainCLIP, supports

HEAVY = ("open_clip", "torchvision", "timm", "transformers")


@pytest.fixture(scope="module")
def pair():
    card = resolve_card("clipzoo/tiny-shapes")
    plain = oc_backend.load(card)
    reference = oc_backend.load(card.replace(config={}))  # the same folder, built by open_clip as before
    return plain, reference


def images():
    rng = np.random.default_rng(22)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
           for h, w in [(48, 80), (100, 64), (64, 64), (31, 200), (300, 20), (7, 9)]]
    return out + [out[0].convert("L"), out[1].convert("P"), out[2].convert("RGBA")]


def test_issue22_6_embedded_model_is_built_without_open_clip(pair):
    plain, reference = pair
    assert type(plain.model) is PlainCLIP
    assert type(reference.model).__module__.startswith("open_clip")
    assert supports(plain.model_config) and plain.preprocess_config == reference.preprocess_config
    assert (plain.image_size, plain.context_length, plain.embed_dim) == (reference.image_size,
                                                                         reference.context_length, reference.embed_dim)
    assert plain.logit_scale == pytest.approx(reference.logit_scale, abs=0)


def test_issue22_6_embedded_features_identical_to_open_clip(pair):
    plain, reference = pair
    ims = images()
    pixels = torch.stack([plain.transform(im) for im in ims])
    assert torch.equal(pixels, torch.stack([reference.transform(im) for im in ims]))
    texts = ["a red circle", "a photo of a blue square.", "  a   yellow\tstar ", "cross", "a purple heart, small"]
    assert torch.equal(plain.tokenize(texts), reference.tokenize(texts))
    with torch.no_grad():
        assert (plain.encode_image(ims) - reference.encode_image(ims)).abs().max().item() <= 1e-6
        assert (plain.encode_text(texts) - reference.encode_text(texts)).abs().max().item() <= 1e-6


@pytest.fixture(scope="module")
def shapes_index(tmp_path_factory):
    from clipzoo.demo import make_shapes
    from clipzoo.index import build_index

    root = tmp_path_factory.mktemp("issue22-latency")
    build_index(make_shapes(root / "shapes", 14, image_size=32), root / "tiny.index", model="clipzoo/tiny-shapes",
                workers=0)
    return root / "tiny.index"


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=240, env=env)


def test_issue22_6_search_and_service_answer_without_importing_open_clip_or_torchvision(shapes_index):
    """In a fresh interpreter: loading the embedded model and answering a text search, then the service over
    the same index (what `clipzoo serve` runs) answering /search — imports neither, nor timm / transformers."""
    proc = run_python("""
        import json, sys
        from clipzoo.api import load
        from clipzoo.index import open_index
        idx = open_index(sys.argv[1])
        idx.set_model(load(idx.model_spec))
        hits = idx.search_text("a red circle", k=3)
        after_search = sorted(sys.modules)
        from fastapi.testclient import TestClient
        from clipzoo.serve.app import create_app
        with TestClient(create_app(sys.argv[1])) as client:
            r = client.post("/search", json={"text": "a green triangle", "k": 2})
        print(json.dumps({"hits": [h.caption for h in hits], "after_search": after_search, "status": r.status_code,
                          "service_hits": len(r.json()["hits"]), "modules": sorted(sys.modules)}))
    """, str(shapes_index))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["hits"]) == 3 and "circle" in out["hits"][0]
    assert "torch" in out["after_search"]  # the search did run the model
    assert [m for m in out["after_search"] if m.split(".")[0] in HEAVY] == []
    assert (out["status"], out["service_hits"]) == (200, 2)
    assert [m for m in out["modules"] if m.split(".")[0] in HEAVY] == []


def test_issue22_6_search_cli_does_not_import_open_clip_or_torchvision(shapes_index):
    """`clipzoo search INDEX TEXT` (the one-shot command), watched with ``python -X importtime``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "clipzoo", "search", str(shapes_index),
                           "a blue square", "-k", "2", "--json"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads(proc.stdout)["hits"]) == 2
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "clipzoo.index.search" in imported  # the NumPy text tower (numpy_text.py)
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []


def test_issue22_6_plain_build_names_missing_and_unexpected_keys(pair):
    from clipzoo.errors import ArchitectureMismatchError
    from clipzoo.models.plain_clip import build_plain_clip

    plain, _ = pair
    sd = {k: v.clone() for k, v in plain.model.state_dict().items()}
    sd["visual.extra.weight"] = sd.pop("ln_final.weight")
    with pytest.raises(ArchitectureMismatchError, match=r"^tiny does not fit the architecture: 1 missing key\(s\) "
                       r"\[ln_final.weight\], 1 unexpected key\(s\) \[visual.extra.weight\]; check the file$"):
        build_plain_clip(plain.model_config, sd, "tiny")
    rebuilt = build_plain_clip(plain.model_config, {k: v.clone() for k, v in plain.model.state_dict().items()})
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), plain.model.state_dict().values()))
