"""The service against inputs at the extremes (found by probing it as an attacker would): images of an extreme
aspect ratio, query vectors near float32's range, invented HTTP methods, an error no handler answers, and the
messages for bad base64, a file sent where none is taken, an over-long partition."""
from __future__ import annotations

import io
import logging
import sys

import numpy as np
import pytest

from _serve_common import app, b64, built, client  # noqa: F401 (fixtures)
from test_serve_hostile import PeakRss

MB = 1 << 20


def _png(width: int, height: int) -> bytes:
    """A real PNG of ``width`` × ``height``: a horizontal colour ramp (it compresses to a few KB)."""
    from PIL import Image

    ramp = np.linspace(0, 255, max(width, height), dtype=np.float32).astype(np.uint8)
    strip = ramp[:width] if width >= height else ramp[:height]
    pixels = np.broadcast_to(strip[None, :, None] if width >= height else strip[:, None, None], (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("width, height", [(100_000, 1), (1, 100_000)])
def test_extreme_aspect_images_are_searched_in_bounded_memory(client, width, height):  # noqa: F811
    """A 100,000 × 1 PNG (a few KB, well under the pixel limit) was resized to 3.2 megapixels × 32 before its
    centre was cropped; now decoding keeps its central 32 : 1 part."""
    data = _png(width, height)
    assert len(data) < 16 * 1024
    with PeakRss() as mem:
        before = mem.peak
        r = client.post("/search", json={"image": b64(data), "k": 3})
    assert r.status_code == 200, r.text
    assert len(r.json()["hits"]) == 3
    assert mem.peak - before < 64 * MB, f"decoding and searching took {(mem.peak - before) / MB:.0f} MB"


def test_extreme_aspect_keeps_the_square_the_model_crops(built):  # noqa: F811
    """What the decoders keep of a long image is what the model's transform crops from it: the same pixels."""
    import torch
    from PIL import Image

    from clipzoo.constants import MAX_ASPECT_RATIO
    from clipzoo.embed.decode import decode_upload
    from clipzoo.embed.gpu import within_aspect_tensor
    from clipzoo.image_bytes import decode_image, within_aspect
    from clipzoo.inputs import to_pil

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (50, 3200, 3), dtype=np.uint8))  # 64 : 1
    kept = within_aspect(im)
    assert kept.size == (MAX_ASPECT_RATIO * 50, 50)
    assert torch.equal(built.model.transform(kept), built.model.transform(im))
    chw = torch.from_numpy(np.array(im)).permute(2, 0, 1)  # the GPU decode's crop: the same pixels
    assert torch.equal(within_aspect_tensor(chw).permute(1, 2, 0), torch.from_numpy(np.array(kept)))
    assert within_aspect(im.transpose(Image.Transpose.ROTATE_90)).size == (50, MAX_ASPECT_RATIO * 50)
    short = im.crop((0, 0, 1600, 50))  # 32 : 1 is kept whole
    assert within_aspect(short) is short
    data = _png(100_000, 1)
    assert decode_image(data).size == decode_upload(data, 32, max_pixels=10**6).size == (MAX_ASPECT_RATIO, 1)
    assert to_pil(np.zeros((1, 100_000, 3), np.uint8)).size == (MAX_ASPECT_RATIO, 1)


@pytest.mark.parametrize("scale", [1e37, 1e-30])
def test_query_vectors_near_float32_limits_rank_as_their_direction(client, scale):  # noqa: F811
    """Cosine does not depend on scale: a query vector times 1e37 (whose float32 norm overflows) or 1e-30 (whose
    norm underflows) gave every hit a score of 0.0."""
    vector = client.post("/embed", json={"texts": ["a red circle"]}).json()["embeddings"][0]
    plain = client.post("/search", json={"embedding": vector, "k": 5}).json()["hits"]
    scaled = client.post("/search", json={"embedding": [v * scale for v in vector], "k": 5}).json()["hits"]
    assert [h["id"] for h in scaled] == [h["id"] for h in plain]
    assert [h["score"] for h in scaled] == pytest.approx([h["score"] for h in plain], abs=1e-5)
    assert abs(plain[0]["score"]) > 0.01


def test_invented_methods_are_counted_as_other(client):  # noqa: F811
    """Every invented method name was a new metrics series, kept for ever: the metrics grew without bound."""
    for i in range(20):
        assert client.request(f"X{i}Y" * 50, "/health").status_code == 405
    metrics = client.get("/metrics").text
    assert "X0Y" not in metrics and len(metrics) < 64 * 1024
    assert 'method="other",route="/health",status="405"} 20' in metrics


def test_an_error_no_handler_answers_is_one_500_and_one_traceback(built, caplog):  # noqa: F811
    """Starlette answered the handler's 500, then raised the exception again: uvicorn logged a second
    traceback for each. Now one line and one traceback, through a real server."""
    import urllib.error
    import urllib.request

    from clipzoo.serve import create_app, running

    app = create_app(built.index, model=built.model)

    async def boom():
        raise RuntimeError("a secret detail")

    app.add_api_route("/boom", boom)
    with caplog.at_level(logging.INFO), running(app) as url:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/boom", timeout=10)
        body = err.value.read().decode()
    assert err.value.code == 500
    assert body == '{"detail": "internal error (RuntimeError); see the server log"}'
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in with_traceback] == ["unexpected error serving GET /boom"]


def test_messages_for_bad_base64_an_unwanted_file_and_a_long_partition(client):  # noqa: F811
    r = client.post("/search", json={"image": "!!!!"})  # said "the image is empty (0 bytes)"
    assert r.status_code == 400
    assert r.json()["detail"] == ("image: not valid base64; encode the image file's bytes with base64 (a data: URL "
                                  "is accepted too)")
    r = client.post("/embed", files={"images": ("a.png", b"x", "image/png")})  # said "accepted only in " (nothing)
    assert (r.status_code, r.json()["detail"]) == (
        422, "invalid request: images: this route takes no file uploads; send the images base64-encoded in JSON")
    r = client.post("/search", json={"text": "a", "partition": "p" * 1_000_000})  # was echoed whole in a 404
    assert r.status_code == 422 and len(r.text) < 2000
    assert "partition: String should have at most 1024 characters" in r.json()["detail"]
