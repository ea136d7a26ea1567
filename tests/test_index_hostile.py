"""Issue 17 §1, hostile folders: files stay inside the index's roots (at build and at serve time),
captions are bounded and UTF-8, and EXIF orientation is applied the same at build and at query time."""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest

from clipzoo.index import build_index, open_index
from clipzoo.index.folder import MAX_CAPTION_BYTES, caption_of, walk_images

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symlinks and fifos")


def write_image(path: Path, seed: int, size=(40, 40), fmt: str | None = None, exif: bytes | None = None) -> Path:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    ImageDraw.Draw(im).rectangle([0, 0, size[0] // 3, size[1] // 4], fill=(255, 255, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"exif": exif} if exif is not None else {}
    im.save(path, fmt, **kwargs)
    return path


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    return write_open_clip_safetensors(tmp_path_factory.mktemp("m") / "tiny.safetensors", embed_config=True)


@pytest.fixture(scope="module")
def model(tiny_path):
    import clipzoo

    return clipzoo.load(str(tiny_path))


def hostile_folder(tmp: Path) -> tuple[Path, Path]:
    """A folder with good images and, beside them, links out of it, a fifo, and bad captions."""
    outside = tmp / "outside"
    secret = write_image(outside / "secret.png", seed=9)
    (outside / "private.txt").write_text("private caption outside the root\n")
    root = tmp / "photos"
    for i in range(3):
        write_image(root / "a" / f"a{i}.png", seed=i)
    (root / "a" / "a0.txt").write_text("a fine caption\n")
    (root / "a" / "a1.txt").symlink_to("/etc/passwd")  # caption link out of the folder
    (root / "a" / "a2.txt").write_bytes(b"x" * (MAX_CAPTION_BYTES + 1))  # caption too large
    write_image(root / "b" / "b0.png", seed=5)
    (root / "b" / "b0.txt").write_bytes(b"caf\xe9 latin-1\n")  # caption not UTF-8
    write_image(root / "b" / "b1.png", seed=6)
    (root / "b" / "b1.txt").symlink_to(outside / "private.txt")
    (root / "b" / "link_out.png").symlink_to(secret)  # image link out of the folder
    (root / "b" / "link_in.png").symlink_to(root / "a" / "a0.png")  # a link inside the folder is fine
    (root / "b" / "passwd.png").symlink_to("/etc/passwd")
    os.mkfifo(root / "b" / "pipe.png")  # not a regular file: reading it would block the build
    (root / "dir_out").symlink_to(outside, target_is_directory=True)  # a folder link out is not walked
    return root, outside


def test_files_stay_inside_the_roots_at_build(tmp_path, model):
    root, _ = hostile_folder(tmp_path)
    report = build_index(root, tmp_path / "ix", model=model, workers=0)
    skipped = {os.path.relpath(p, root): r for p, r in report.skipped}
    assert skipped == {
        "a/a1.txt": "caption outside the indexed folder (a link to a file elsewhere); not read",
        "a/a2.txt": "caption over 64 KB; not read",
        "b/b0.txt": "caption not UTF-8 (byte 3); not read",
        "b/b1.txt": "caption outside the indexed folder (a link to a file elsewhere); not read",
        "b/link_out.png": "outside the indexed folder (a link to a file elsewhere); not read",
        "b/passwd.png": "outside the indexed folder (a link to a file elsewhere); not read",
        "b/pipe.png": "not a regular file; not read",
    }
    assert (report.added, report.total) == (6, 6)
    idx = open_index(tmp_path / "ix", model=model)
    items = {idx.item(i)["relpath"]: idx.item(i) for i in range(1, 7)}
    assert sorted(items) == ["a/a0.png", "a/a1.png", "a/a2.png", "b/b0.png", "b/b1.png", "b/link_in.png"]
    assert {k: v["caption"] for k, v in items.items()} == {
        "a/a0.png": "a fine caption", "a/a1.png": None, "a/a2.png": None, "b/b0.png": None, "b/b1.png": None,
        "b/link_in.png": None}
    # a rerun keeps them out and lists them again; the unchanged files are not re-embedded
    again = build_index(root, tmp_path / "ix", model=model, workers=0)
    assert (again.added, again.unchanged, len(again.skipped)) == (0, 6, 7)
    # the library helpers hold the same rule
    assert caption_of(root / "a" / "a1.png", root) is None
    assert caption_of(root / "a" / "a0.png", root) == "a fine caption"
    assert "b/link_out.png" not in walk_images(root) and "b/link_in.png" in walk_images(root)


def test_a_file_swapped_for_a_link_out_of_the_root_is_not_served(tmp_path, model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    root = tmp_path / "photos"
    for i in range(3):
        write_image(root / f"p{i}.png", seed=i)
    build_index(root, tmp_path / "ix", model=model, workers=0)
    outside = tmp_path / "outside.png"
    target = root / "p1.png"
    outside.write_bytes(target.read_bytes())  # same size, and the same mtime below: only the path differs
    st = target.stat()
    os.utime(outside, ns=(st.st_atime_ns, st.st_mtime_ns))
    with TestClient(create_app(tmp_path / "ix", model=model)) as client:
        ids = {client.get(f"/items/{i}").json()["relpath"]: i for i in (1, 2, 3)}
        assert client.get(f"/thumb/{ids['p1.png']}").status_code == 200
        target.unlink()
        target.symlink_to(outside)
        client.app.state.service.thumbnails._data.clear()  # a fresh server: nothing cached
        r = client.get(f"/thumb/{ids['p1.png']}")
        assert r.status_code == 404
        assert r.json()["detail"] == (f"item {ids['p1.png']}: its file is not inside the indexed folder "
                                      "(a link out of it); not served")
        target.unlink()
        os.mkfifo(target)  # not a regular file: 404, and no read that blocks
        r = client.get(f"/thumb/{ids['p1.png']}")
        assert r.status_code == 404 and "gone" in r.json()["detail"]
        assert client.get(f"/thumb/{ids['p0.png']}").status_code == 200


def test_exif_orientation_applied_at_build_and_query(tmp_path, model):
    """A JPEG stored sideways whose EXIF says "rotate 90° clockwise" (orientation 6) is upright at decode:
    in the build, in the library and in the service's query, which all find it with score 1."""
    from PIL import Image

    from clipzoo.image_bytes import decode_image, decode_rgb

    exif = Image.Exif()
    exif[0x0112] = 6
    root = tmp_path / "photos"
    path = write_image(root / "turned.jpg", seed=3, size=(64, 24), fmt="JPEG", exif=exif.tobytes())
    for i in range(3):
        write_image(root / f"other{i}.png", seed=10 + i)
    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as stored:
        stored_rgb = stored.convert("RGB")
    upright = decode_image(raw)
    assert stored_rgb.size == (64, 24) and upright.size == (24, 64)
    np.testing.assert_array_equal(np.asarray(upright), np.asarray(stored_rgb.transpose(Image.Transpose.ROTATE_270)))
    np.testing.assert_array_equal(np.asarray(decode_rgb(path)), np.asarray(upright))

    build_index(root, tmp_path / "ix", model=model, workers=0)
    idx = open_index(tmp_path / "ix", model=model)
    item = next(idx.item(i) for i in range(1, 5) if idx.item(i)["relpath"] == "turned.jpg")
    stored_vec = idx.embedding(item["id"])
    np.testing.assert_allclose(stored_vec, model.encode_image([upright])[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(stored_vec, model.encode_image([str(path)])[0].numpy(), atol=1e-5)  # the library
    sideways = model.encode_image([stored_rgb])[0].numpy()
    assert float(np.dot(stored_vec, sideways)) < 0.9999  # the rotation matters to the model

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(tmp_path / "ix", model=model)) as client:
        r = client.post("/search", json={"image": base64.b64encode(raw).decode(), "k": 1})
    hit = r.json()["hits"][0]
    assert hit["relpath"] == "turned.jpg" and hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_large_upload_is_reduced_the_same_at_build_and_query(tmp_path, model):
    """A 400×300 PNG and JPEG decode reduced (PNG: PIL's reduce; JPEG: draft) to about the model's size in
    the build and in the service: searching by the file's bytes finds it with score 1."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clipzoo.image_bytes import decode_image
    from clipzoo.serve import create_app

    root = tmp_path / "photos"
    big = {"big.png": write_image(root / "big.png", seed=1, size=(400, 300)),
           "big.jpg": write_image(root / "big.jpg", seed=2, size=(400, 300), fmt="JPEG")}
    write_image(root / "small.png", seed=3)
    assert decode_image(big["big.png"].read_bytes(), draft_size=32).size == (45, 34)  # reduced by 9 (PIL rounds up)
    build_index(root, tmp_path / "ix", model=model, workers=0)
    with TestClient(create_app(tmp_path / "ix", model=model)) as client:
        for name, path in big.items():
            r = client.post("/search", json={"image": base64.b64encode(path.read_bytes()).decode(), "k": 1})
            hit = r.json()["hits"][0]
            assert hit["relpath"] == name and hit["score"] == pytest.approx(1.0, abs=1e-5)
