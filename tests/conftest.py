"""Shared fixtures: tiny random-weight checkpoints written once per session, and generated images."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    from clipzoo.testing.tiny import write_all

    return write_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def images():
    """Three generated RGB images of different sizes (PIL)."""
    from PIL import Image, ImageDraw

    out = []
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(64, 48), (40, 40), (33, 70)]):
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        ImageDraw.Draw(im).ellipse([5, 5, w // 2 + i, h // 2], fill=(200, 30 * i, 40))
        out.append(im)
    return out


@pytest.fixture(scope="session")
def image_files(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, im in enumerate(images):
        p = folder / f"img{i}.{['png', 'jpg', 'webp'][i]}"
        im.save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """The hub unreachable and an empty HF_HOME: only what a test places in a cache can load."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path
