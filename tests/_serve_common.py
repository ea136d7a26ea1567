"""Shared by the service tests: one real index (generated shapes, tiny random model, ``build_index``),
built once per test process, and small helpers. Imported by tests/test_serve_*.py."""
from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

N_IMAGES = 42  # six of each of the seven shapes
_lock = threading.Lock()
_built: "Built | None" = None


@dataclass
class Built:
    root: Path
    images: Path  # the indexed folder: images/<shape>/<key>.png + <key>.txt captions
    index: Path  # the built index folder
    model_dir: Path  # the tiny model's open_clip folder (the index records it as its model)
    model: object  # the loaded Comparator
    ids: list  # every item id in the index


def built_index() -> Built:
    """Generate shapes, write a tiny random model, build a real index with ``build_index``; once."""
    global _built
    with _lock:
        if _built is None:
            import clipzoo
            from clipzoo.demo import make_shapes
            from clipzoo.index import build_index
            from clipzoo.testing.tiny import write_open_clip_hub_folder

            root = Path(tempfile.mkdtemp(prefix="clipzoo-serve-"))
            images = make_shapes(root / "shapes", N_IMAGES, image_size=32)
            model_dir = write_open_clip_hub_folder(root / "tiny-model")
            model = clipzoo.load(str(model_dir))
            build_index(images, root / "index", model=model, workers=0)
            from clipzoo.index import open_index

            with open_index(root / "index", model=model) as idx:
                ids = sorted(h.id for h in idx.search_text("a shape", k=N_IMAGES))
            assert len(ids) == N_IMAGES
            _built = Built(root, images, root / "index", model_dir, model, ids)
        return _built


@pytest.fixture(scope="module")
def built():
    return built_index()


def png_bytes(size=(32, 32), color=(220, 30, 30), fmt="PNG") -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, (240, 240, 240))
    ImageDraw.Draw(im).ellipse([size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4], fill=color)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def artifacts_dir(tmp_path_factory) -> Path:
    """Where tests keep screenshots: $CLIPZOO_ARTIFACTS, else tests/artifacts/ (gitignored)."""
    root = os.environ.get("CLIPZOO_ARTIFACTS")
    path = Path(root) if root else Path(__file__).parent / "artifacts"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = tmp_path_factory.mktemp("artifacts")
    return path


LABELS = ["circle", "square", "star", "triangle"]


@pytest.fixture(scope="module")
def app(built):
    """The service over the shared index, with LABELS as its vocabulary."""
    from clipzoo.serve import create_app

    return create_app(built.index, labels=LABELS)


@pytest.fixture(scope="module")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


# ------------------------------------------------------------------ the page in Chromium (browser tests)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEEDS_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium; "
                                                             ".ci/run does) — the browser test needs one")
LAUNCH_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update"]
PAGE_LABELS = ["circle", "cross", "diamond", "heart", "square", "star", "triangle"]


@pytest.fixture(scope="module")
def server(built):
    """The service over the shared index, on 127.0.0.1 (a free port), with the shapes vocabulary."""
    from clipzoo.serve import create_app, running

    app = create_app(built.index, labels=PAGE_LABELS, model=built.model)
    with running(app) as url:
        yield url


@contextlib.contextmanager
def launched_chromium():
    """Debian's Chromium driven by Playwright (never `playwright install`); skips the test without either."""
    if CHROMIUM is None:
        pytest.skip("no system Chromium (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def browser():
    """A launched headless Chromium (:func:`launched_chromium`), one per test module."""
    with launched_chromium() as b:
        yield b
