"""Issue 17 §5, Dynamic batching: text and image encoding behind a queue (serve/batcher.py) that takes up
to max_batch waiting requests or waits <= max_wait_ms, runs one batch and hands each request its rows —
identical to one-at-a-time (max abs diff <= 1e-6)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import urllib.request

import pytest

from _serve_common import LABELS, b64, built, png_bytes  # noqa: F401 (fixtures)

TEXTS = ["a red circle", "a blue square", "a yellow star", "a green triangle", "a small shape", "a heart",
         "two circles", "a purple hexagon", "an orange cross", "a striped square", "a dot", "a big star",
         "a thin line", "a moon", "a dark triangle", "a pale circle"]
COLORS = [(220, 30, 30), (30, 30, 220), (230, 200, 20), (30, 160, 60), (120, 30, 160), (240, 120, 20),
          (20, 20, 20), (200, 200, 200)]


@pytest.fixture(scope="module")
def batched(built):  # noqa: F811
    """The service with a wide batching window, so concurrent requests surely share batches."""
    from clipzoo.serve import create_app, running

    app = create_app(built.index, model=built.model, labels=LABELS, max_batch=32, max_wait_ms=60)
    with running(app) as url:
        yield app, url


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _concurrently(fn, args: list) -> list:
    start = threading.Barrier(len(args))

    def call(a):
        start.wait()
        return fn(a)

    with concurrent.futures.ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(call, args))


def _max_diff(rows, reference) -> float:
    import numpy as np

    return float(np.abs(np.asarray(rows, dtype=np.float64) - reference.double().numpy()).max())


def test_dynamic_batching_text_rows_identical_to_one_at_a_time(batched, built):  # noqa: F811
    app, url = batched
    stats = app.state.service.batcher.stats
    before = (stats.batches, stats.requests)
    out = _concurrently(lambda t: _post(url, "/embed", {"texts": [t]}), TEXTS)
    batches, requests = stats.batches - before[0], stats.requests - before[1]
    assert requests == len(TEXTS) and batches < len(TEXTS), (batches, requests)  # they shared batches
    for text, r in zip(TEXTS, out):
        assert _max_diff(r["embeddings"], built.model.encode_text([text])) <= 1e-6
    # several texts per request: each request gets its own rows, in order
    groups = [TEXTS[i:i + 3] for i in range(0, 12, 3)]
    out = _concurrently(lambda g: _post(url, "/embed", {"texts": g}), groups)
    for group, r in zip(groups, out):
        assert len(r["embeddings"]) == len(group)
        for row, text in zip(r["embeddings"], group):
            assert _max_diff([row], built.model.encode_text([text])) <= 1e-6
    # unnormalised features (norms of a few units): the same float32 rounding, relative to their size
    out = _concurrently(lambda g: _post(url, "/embed", {"texts": g, "normalize": False}), groups)
    for group, r in zip(groups, out):
        for row, text in zip(r["embeddings"], group):
            ref = built.model.encode_text([text], normalize=False)
            assert _max_diff([row], ref) <= 1e-6 * float(ref.norm())


def test_dynamic_batching_search_identical_to_one_at_a_time(batched, built):  # noqa: F811
    from clipzoo.index import open_index

    app, url = batched
    out = _concurrently(lambda t: _post(url, "/search", {"text": t, "k": 5}), TEXTS)
    with open_index(built.index, model=built.model) as idx:
        for text, r in zip(TEXTS, out):
            ref = idx.search_text(text, k=5)
            assert [h["id"] for h in r["hits"]] == [h.id for h in ref]
            assert max(abs(h["score"] - x.score) for h, x in zip(r["hits"], ref)) <= 1e-6
        images = [png_bytes(color=c) for c in COLORS]
        out = _concurrently(lambda raw: _post(url, "/search", {"image": b64(raw), "k": 4}), images)
        for raw, r in zip(images, out):
            ref = idx.search_image(_decoded(app, raw), k=4)
            assert [h["id"] for h in r["hits"]] == [h.id for h in ref]
            assert max(abs(h["score"] - x.score) for h, x in zip(r["hits"], ref)) <= 1e-6


def _decoded(app, raw: bytes):
    from clipzoo.serve.images import decode_image

    service = app.state.service
    return decode_image(raw, max_pixels=service.max_image_pixels, name="image", draft_size=service.draft_size)


def test_dynamic_batching_image_rows_identical_to_one_at_a_time(batched, built):  # noqa: F811
    app, url = batched
    stats = app.state.service.batcher.stats
    before = (stats.batches, stats.requests)
    images = [png_bytes(size=(40 + 4 * i, 36), color=c) for i, c in enumerate(COLORS)]
    out = _concurrently(lambda raw: _post(url, "/embed", {"images": [b64(raw)]}), images)
    batches, requests = stats.batches - before[0], stats.requests - before[1]
    assert requests == len(images) and batches < len(images), (batches, requests)  # they shared batches
    for raw, r in zip(images, out):
        assert _max_diff(r["embeddings"], built.model.encode_image([_decoded(app, raw)])) <= 1e-6


# ------------------------------------------------------------------ the queue itself, with a fake model
class _Model:
    """Encodes a text as (len, first char code) and records each call's batch size."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[int] = []
        self.delay = delay

    def encode_text(self, texts, normalize=True, truncate=False):
        self.calls.append(len(texts))
        time.sleep(self.delay)
        if any(t == "boom" for t in texts):
            raise RuntimeError("the model failed")
        return [(len(t), ord(t[0]), normalize, truncate) for t in texts]

    def encode_image(self, images, normalize=True):
        self.calls.append(len(images))
        return [("image", x) for x in images]


def _batcher(model, **kwargs):
    from clipzoo.serve.batcher import Batcher

    pool = concurrent.futures.ThreadPoolExecutor(1)

    async def run(op, fn):
        return await asyncio.wrap_future(pool.submit(fn))

    return Batcher(run, model, **kwargs)


def test_dynamic_batching_queue_takes_up_to_max_batch():
    model = _Model(delay=0.05)
    batcher = _batcher(model, max_batch=4, max_wait_ms=5)

    async def main():
        texts = [f"t{i}" + "x" * i for i in range(10)]
        return texts, await asyncio.gather(*(batcher.encode_text([t], truncate=True) for t in texts))

    texts, out = asyncio.run(main())
    assert model.calls == [4, 4, 2]
    assert [r[0] for r in out] == [(len(t), ord("t"), True, True) for t in texts]
    assert (batcher.stats.batches, batcher.stats.requests, batcher.stats.rows, batcher.stats.largest) == (3, 10, 10, 4)


def test_dynamic_batching_queue_waits_at_most_max_wait_ms():
    model = _Model()
    batcher = _batcher(model, max_batch=32, max_wait_ms=40)

    async def main():
        t = time.monotonic()
        one = await batcher.encode_text(["alone"])
        took = time.monotonic() - t
        # requests arriving within the window share one call; a `then` runs on the model thread per request
        both = await asyncio.gather(batcher.encode_text(["ab"], then=lambda rows: ("then", rows[0][0])),
                                    batcher.encode_text(["abc", "d"]))
        return one, took, both

    one, took, both = asyncio.run(main())
    assert one == [(5, ord("a"), True, False)]
    assert 0.03 <= took < 0.5, took
    assert model.calls == [1, 3]
    assert both == [("then", 2), [(3, ord("a"), True, False), (1, ord("d"), True, False)]]


def test_dynamic_batching_errors_stay_with_their_request():
    model = _Model()
    batcher = _batcher(model, max_batch=8, max_wait_ms=20)

    def picky(rows):
        raise ValueError("only this request fails")

    async def main():
        return await asyncio.gather(batcher.encode_text(["fine"]), batcher.encode_text(["x"], then=picky),
                                    return_exceptions=True)

    fine, failed = asyncio.run(main())
    assert fine == [(4, ord("f"), True, False)] and isinstance(failed, ValueError)

    async def model_fails():
        return await asyncio.gather(batcher.encode_text(["ok"]), batcher.encode_text(["boom"]),
                                    return_exceptions=True)

    a, b = asyncio.run(model_fails())
    assert isinstance(a, RuntimeError) and isinstance(b, RuntimeError) and str(a) == "the model failed"


def test_dynamic_batching_max_batch_1_is_unbatched_and_bad_options_fail():
    from starlette.exceptions import HTTPException

    from clipzoo.errors import ClipzooError
    from clipzoo.serve.batcher import Batcher

    model = _Model()
    batcher = _batcher(model, max_batch=1)

    async def main():
        return await asyncio.gather(*(batcher.encode_image([i]) for i in range(5)))

    assert asyncio.run(main()) == [[("image", i)] for i in range(5)]
    assert model.calls == [1] * 5
    with pytest.raises(ClipzooError, match=r"max_batch must be at least 1 \(1: no batching\), got 0"):
        Batcher(None, model, max_batch=0)
    with pytest.raises(ClipzooError, match="max_wait_ms must be between 0 and 1000, got 5000"):
        Batcher(None, model, max_wait_ms=5000)
    shed = _batcher(_Model(delay=0.05), max_batch=4, max_wait_ms=10, max_pending=3)

    async def flood():
        return await asyncio.gather(*(shed.encode_text([f"q{i}"]) for i in range(6)), return_exceptions=True)

    out = asyncio.run(flood())
    busy = [r for r in out if isinstance(r, HTTPException)]
    assert len(busy) == 3 and all(r.status_code == 503 and r.headers == {"Retry-After": "1"} for r in busy)
    assert busy[0].detail == "the server is busy (3 requests waiting for the model); retry shortly"
