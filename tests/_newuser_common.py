"""Shared by tests/test_newuser_*.py: a small index of generated shapes built with the embedded model
``clipzoo/tiny-shapes`` (once per test process), and headless Chromium (Debian's, via Playwright)."""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pytest

from _serve_common import launched_chromium

EMBEDDED = "clipzoo/tiny-shapes"
N_IMAGES = 14
_lock = threading.Lock()
_index: "Path | None" = None


def embedded_index() -> Path:
    """An index of ``N_IMAGES`` generated shapes built with ``clipzoo/tiny-shapes`` named by its spec."""
    global _index
    with _lock:
        if _index is None:
            from clipzoo.demo import make_shapes
            from clipzoo.index import build_index

            root = Path(tempfile.mkdtemp(prefix="clipzoo-newuser-"))
            images = make_shapes(root / "shapes", N_IMAGES, image_size=32)
            build_index(images, root / "index", model=EMBEDDED, workers=0)
            _index = root / "index"
        return _index


@pytest.fixture(scope="module")
def chromium():
    """A launched headless Chromium (skips where the system has none, as tests/test_serve_browser.py)."""
    with launched_chromium() as b:
        yield b
