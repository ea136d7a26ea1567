"""Issue 17 §7: the embedded model shows as `clipzoo/tiny-shapes` — in /health, /info, /embed and the page's
header (and, in tests/test_newuser_quickstart.py, in eval reports, plots and the CLI) — never a cache path or
the hash of the folder it is unpacked to."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

import clipzoo  # noqa: E402
from _newuser_common import EMBEDDED, embedded_index  # noqa: E402


def test_card_display_names():
    card = clipzoo.REGISTRY.resolve(EMBEDDED)
    assert "tiny-shapes-" in card.source.path  # unpacked to <cache>/embedded/tiny-shapes-<digest> …
    assert card.display_name == "clipzoo/tiny-shapes"  # … and named by its spec
    local = clipzoo.REGISTRY.resolve(str(card.source.path))
    assert local.publisher == "local" and local.display_name == card.source.path.rsplit("/", 1)[-1]


def test_service_names_the_embedded_model():
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    model = clipzoo.load(EMBEDDED)
    for spec in (None, model):  # the spec recorded in the index, and a model loaded from the cache folder
        with TestClient(create_app(embedded_index(), model=spec)) as client:
            assert client.get("/health").json() == {"status": "ok", "items": 14, "model": EMBEDDED}
            assert client.get("/info").json()["model"] == EMBEDDED
            assert client.post("/embed", json={"texts": ["a red circle"]}).json()["model"] == EMBEDDED
            page = client.get("/").text + client.get("/static/app.js").text
            assert ".cache" not in page and "tiny-shapes-" not in page
