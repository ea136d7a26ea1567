"""Issue 22 §4: one image decoder (:mod:`clipzoo.embed.decode`) for ``clipzoo embed``, ``clipzoo index build``
and the service's image queries — an image indexed and the same image sent to the service give the same
vector, and that vector keeps cosine >= 0.9999 to the model's encoding of PIL's full decode."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

import clipzoo
from clipzoo.embed import decode as dec
from clipzoo.embed.loader import ImageFiles
from clipzoo.errors import BadImageError
from clipzoo.image_bytes import ImageTooLargeError
from clipzoo.index import build_index, open_index
from clipzoo.index.folder import IndexFiles
from test_issue22_decode import photo

MIN_COSINE = 0.9999  # as benchmarks/results/decode.json measured the decoder against PIL's full decode
SIZES = [(640, 480), (480, 640), (1280, 960), (300, 200)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("issue22-one-decoder")
    photos = root / "photos"
    photos.mkdir()
    for i, (w, h) in enumerate(SIZES):
        Image.fromarray(photo(40 + i, w, h)).save(photos / f"p{i}.jpg", quality=90)
    Image.fromarray(photo(50, 600, 400)).save(photos / "big.png")  # another format: reduced by the same rule
    Image.fromarray(photo(51, 90, 70)).save(photos / "small.png")
    return root


@pytest.fixture(scope="module")
def model():
    return clipzoo.load("clipzoo/tiny-shapes")


@pytest.fixture(scope="module")
def index(folder, model):
    out = folder / "photos.index"
    build_index(folder / "photos", out, model=model, workers=0)
    return open_index(out, model=model)


def stored(idx) -> dict[str, np.ndarray]:
    ids, vectors = idx.store.all_vectors()
    items = idx.store.items(int(i) for i in ids)
    return {items[int(i)]["relpath"]: np.asarray(v, dtype=np.float32) for v, i in zip(vectors, ids)}


def test_issue22_4_index_build_embed_and_service_decode_alike(folder, model):
    """The three callers decode a file to the same pixels: the index build's dataset, the embed loader's and
    the service's upload decoder (header checked first)."""
    size = 64  # draft_size_for(tiny-shapes)
    for path in sorted((folder / "photos").iterdir()):
        data = path.read_bytes()
        a = np.asarray(IndexFiles([str(path)], np.asarray, size)[0][1])
        b = np.asarray(ImageFiles([str(path)], np.asarray, size)[0][1])
        c = np.asarray(dec.decode_upload(data, size, max_pixels=10**8, name=path.name))
        assert a.shape == b.shape == c.shape and np.array_equal(a, b) and np.array_equal(a, c), path.name
        full = np.asarray(Image.open(path).convert("RGB"))
        if min(full.shape[:2]) >= 4 * size:  # decoded smaller: DCT scaling (JPEG) or PIL's reduce (PNG)
            assert min(a.shape[:2]) >= dec.SCALE_MARGIN * size and a.shape[0] < full.shape[0]
        else:
            assert a.shape == full.shape


def test_issue22_4_indexed_image_and_service_query_give_the_same_vector(folder, index):
    """The same file indexed and sent to the service (``/embed`` and ``/search`` by image): max abs diff
    <= 1e-6, and the image finds itself first."""
    from fastapi.testclient import TestClient

    from clipzoo.serve.app import create_app

    rows = stored(index)
    with TestClient(create_app(str(folder / "photos.index"))) as client:
        for rel, vec in rows.items():
            b64 = base64.b64encode((folder / "photos" / rel).read_bytes()).decode()
            r = client.post("/embed", json={"images": [b64]})
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["embeddings"][0], dtype=np.float32)
            assert np.abs(got - vec).max() <= 1e-6, rel
            r = client.post("/search", json={"image": b64, "k": 1})
            hit = r.json()["hits"][0]
            assert hit["relpath"] == rel and hit["score"] >= 1 - 1e-6


def test_issue22_4_one_decoder_keeps_cosine_to_pil_full_decode(folder, index, model):
    rows = stored(index)
    names = sorted(rows)
    full = [Image.open(folder / "photos" / n).convert("RGB") for n in names]
    with torch.no_grad():
        ref = model.encode_image(full).numpy()
    cos = np.sum(ref * np.stack([rows[n] for n in names]), axis=1)
    assert cos.min() >= MIN_COSINE, dict(zip(names, cos.round(6)))


def test_issue22_4_upload_decoder_errors_name_the_input():
    buf = io.BytesIO()
    Image.fromarray(photo(3, 320, 240)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    with pytest.raises(ImageTooLargeError, match=r"^images\[0\]: the image declares 320×240 = 76,800 pixels, more "
                                                 r"than the limit of 1,000 \(a decompression bomb\?\); upload a "
                                                 r"smaller image$"):
        dec.decode_upload(data, 64, max_pixels=1000, name="images[0]")
    with pytest.raises(BadImageError, match=r"^image: the JPEG file is (truncated|corrupt) and cannot be decoded "
                                            r"\(.*\); upload the complete file$"):
        dec.decode_upload(data[: len(data) // 3], 64, max_pixels=10**8, name="image")
    with pytest.raises(BadImageError, match=r"^image: not an image Pillow can read"):
        dec.decode_upload(b"not an image at all", 64, max_pixels=10**8, name="image")


def test_issue22_4_cli_search_by_image_decodes_as_the_index(folder, index):
    """`clipzoo search INDEX --image FILE` decodes the query with the same decoder: an indexed file finds itself
    at cosine 1 (within 1e-6)."""
    import json

    from typer.testing import CliRunner

    from clipzoo.cli import app

    for rel in ("p2.jpg", "big.png"):
        r = CliRunner().invoke(app, ["search", str(folder / "photos.index"), "--image", str(folder / "photos" / rel),
                                     "-k", "1", "--json"])
        assert r.exit_code == 0, r.output
        hit = json.loads(r.stdout)["hits"][0]
        assert hit["relpath"] == rel and hit["score"] >= 1 - 1e-6, hit


def forged_jpeg(width: int, height: int) -> bytes:
    """A small valid JPEG whose header (SOF0) declares ``width`` × ``height``: what a hostile file looks like."""
    import struct

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def test_issue22_4_a_forged_huge_jpeg_header_is_refused_before_any_pixel_is_allocated(monkeypatch, tmp_path):
    """A JPEG declaring 60000×60000 pixels: simplejpeg has no pixel limit of its own and would allocate 10 GB for
    it; the decoder hands it to PIL instead, which refuses it from the header as a decompression bomb — in every
    path that decodes files: the embedding loader (one line naming the file) and index builds with and without
    fast decoding (skipped, with the reason)."""
    simplejpeg = pytest.importorskip("simplejpeg")
    calls = []
    decode_jpeg = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(a) or decode_jpeg(*a, **k))
    data = forged_jpeg(60000, 60000)
    for min_side in (None, 224):
        with pytest.raises(Image.DecompressionBombError):
            dec.decode_bytes(data, min_side)
    assert calls == []  # refused from the header: nothing decoded
    assert dec.within_pil_limit(64, 48) and not dec.within_pil_limit(60000, 60000)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bomb.jpg").write_bytes(data)
    Image.fromarray(photo(1, 96, 80)).save(folder / "ok.jpg", quality=90)
    _, pixels, error = ImageFiles([str(folder / "bomb.jpg")], lambda im: im, draft_size=224)[0]
    assert pixels is None and error.startswith(f"image {str(folder / 'bomb.jpg')!r} is refused as a decompression bomb")
    model = clipzoo.load("clipzoo/tiny-shapes")
    for fast in (True, False):
        report = build_index(folder, tmp_path / f"index-{fast}", model=model, workers=0, fast_decode=fast)
        assert [(p.rsplit("/", 1)[1], r.split(" (")[0]) for p, r in report.skipped] == [
            ("bomb.jpg", "refused as a decompression bomb")]
    assert calls and all(len(a[0]) < 100_000 for a in calls)  # only the good file went to simplejpeg
