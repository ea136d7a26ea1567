"""The embedding pipeline: reduced-size JPEG decoding, webdataset tars as input, rows streamed to disk,
and `clipzoo embed` under torchrun (2 CPU processes on gloo) equal to a single-process run."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

import clipzoo
from clipzoo.embed import (
    draft_size_for,
    embed_images,
    embed_to_file,
    expand_image_inputs,
    merge_parts,
    parts_dir,
    shard_bounds,
    tar_image_members,
)
from clipzoo.errors import BadImageError, ClipzooError
from clipzoo.inputs import load_rgb


@pytest.fixture(scope="module")
def model():
    return clipzoo.load("clipzoo/tiny-shapes")


def photo(seed: int, w: int = 640, h: int = 480) -> Image.Image:
    """A smooth photo-like RGB image (gradients + a few blobs): JPEG-friendly, not noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    chans = [np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) + np.cos(5 * y * rng.uniform(0.5, 2))
             for _ in range(3)]
    arr = np.stack(chans, -1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.05, 0.2)
        arr += (((x - cx) ** 2 + (y - cy) ** 2) < r * r)[..., None] * rng.uniform(-1.5, 1.5, 3)
    arr = (arr - arr.min()) / (arr.max() - arr.min()) * 255
    return Image.fromarray(arr.astype(np.uint8))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """11 files (JPEGs 640×480 and small PNGs) and a webdataset tar of 4 samples."""
    root = tmp_path_factory.mktemp("collection")
    files = []
    for i in range(11):
        if i % 3 == 2:
            path = root / "imgs" / f"{i:02d}.png"
            path.parent.mkdir(exist_ok=True)
            photo(i, 50, 40).save(path)
        else:
            path = root / "imgs" / f"{i:02d}.jpg"
            path.parent.mkdir(exist_ok=True)
            photo(i).save(path, quality=90)
        files.append(str(path))
    tar_path = root / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(4):
            for name, data in ((f"s{i:03d}.jpg", _jpeg(photo(100 + i))), (f"s{i:03d}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root, files, str(tar_path)


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# ------------------------------------------------------------------ reduced-size decoding
def test_draft_decoding_is_faithful(model, collection):
    _, files, _ = collection
    jpegs = [f for f in files if f.endswith(".jpg")]
    size = draft_size_for(model)
    assert size == 64
    draft = load_rgb(jpegs[0], size)
    assert draft.size == (160, 120)  # 640×480 decoded at 1/4 (1/8 would leave 60 < 64 rows)
    assert load_rgb(jpegs[0]).size == (640, 480)
    fast = embed_images(model, jpegs, workers=0)
    exact = embed_images(model, jpegs, workers=0, fast_decode=False)
    assert np.allclose(exact.features, model.encode_image(jpegs).numpy(), atol=1e-5)  # exact = encode_image
    cos = (fast.features * exact.features).sum(1)
    assert cos.min() >= 0.99, cos
    # a PNG or a JPEG under twice the size is decoded in full either way
    small = [f for f in files if f.endswith(".png")]
    assert np.array_equal(embed_images(model, small, workers=0).features,
                          embed_images(model, small, workers=0, fast_decode=False).features)


# ------------------------------------------------------------------ tar input
def test_tar_members_are_inputs(model, collection):
    _, _, tar = collection
    members = tar_image_members(tar)
    assert [m.name for m in members] == [f"s{i:03d}.jpg" for i in range(4)]  # captions are not images
    items = expand_image_inputs([tar.replace("000", "{000..000}")])
    assert items == members and str(items[0]) == f"{tar}#s000.jpg"
    rows = embed_images(model, [tar], workers=2, fast_decode=False)
    pils = [Image.open(io.BytesIO(m.read())).convert("RGB") for m in members]
    assert rows.inputs == [str(m) for m in members]
    assert np.allclose(rows.features, model.encode_image(pils).numpy(), atol=1e-5)


def test_bad_tars_name_the_shard(tmp_path):
    gz = tmp_path / "x.tar"
    with tarfile.open(gz, "w:gz") as tar:
        info = tarfile.TarInfo("a.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(BadImageError, match=r"tar shard '.*x.tar' is not an uncompressed tar .*decompress it first"):
        tar_image_members(gz)
    with pytest.raises(BadImageError, match=r"tar shard '.*missing.tar' does not exist"):
        expand_image_inputs(str(tmp_path / "missing.tar"))


# ------------------------------------------------------------------ streamed output
def test_embed_to_file_streams_and_skips(model, collection, tmp_path):
    root, files, tar = collection
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    meta = embed_to_file(model, tmp_path / "out", images=[*files[:3], str(bad), tar], workers=2, skip_bad=True)
    rows = np.load(tmp_path / "out.npy")
    side = json.loads((tmp_path / "out.json").read_text())
    assert rows.shape == (7, model.embed_dim) and meta["count"] == 7 == side["count"]
    assert side["skipped"][0]["input"] == str(bad)
    expected = embed_images(model, [*files[:3], tar], workers=0)
    assert side["inputs"] == expected.inputs
    assert np.allclose(rows, expected.features, atol=1e-6)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # no temporary left behind
    with pytest.raises(BadImageError, match="bad.jpg"):
        embed_to_file(model, tmp_path / "fail", images=[files[0], str(bad)], workers=0)
    assert not (tmp_path / "fail.npy").exists() and not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_shard_bounds_cover_everything_in_order():
    for n in (0, 1, 7, 10, 13):
        for world in (1, 2, 3, 5):
            spans = [shard_bounds(n, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


def test_merge_refuses_missing_parts(tmp_path):
    with pytest.raises(ClipzooError, match=r"part\(s\) .*part-00000-of-00002.npy.* are missing"):
        merge_parts(tmp_path / "out.npy", 2)


# ------------------------------------------------------------------ torchrun
def _clipzoo(*args, torchrun: int = 0, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPZOO_CACHE": os.environ.get("CLIPZOO_CACHE", "")}
    env = {k: v for k, v in env.items() if v}
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "-m", "clipzoo", *args]
    else:
        cmd = [sys.executable, "-m", "clipzoo", *args]
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_torchrun_embed_equals_single_process(collection, tmp_path):
    root, files, tar = collection
    inputs = ["--images", root / "imgs", tar]
    one = _clipzoo("embed", "clipzoo/tiny-shapes", *inputs, "--out", tmp_path / "one.npy", "--no-progress",
                   "--workers", "1")
    assert one.returncode == 0, one.stderr
    two = _clipzoo("embed", "clipzoo/tiny-shapes", *inputs, "--out", tmp_path / "two.npy", "--no-progress",
                   "--workers", "1", torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "merged from 2 ranks' parts" in two.stderr
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    side_a = json.loads((tmp_path / "one.json").read_text())
    side_b = json.loads((tmp_path / "two.json").read_text())
    assert a.shape == b.shape == (15, 64)
    assert side_b["inputs"] == side_a["inputs"] and side_b["merged_from"] == 2
    assert np.allclose(a, b, atol=1e-6)
    # each rank's part stays, with the share it embedded
    parts = sorted(p.name for p in parts_dir(tmp_path / "two.npy").iterdir())
    assert parts == ["part-00000-of-00002.json", "part-00000-of-00002.npy",
                     "part-00001-of-00002.json", "part-00001-of-00002.npy"]
    part1 = json.loads((parts_dir(tmp_path / "two.npy") / "part-00001-of-00002.json").read_text())
    assert part1["part"] == {"rank": 1, "world_size": 2, "start": 8, "stop": 15}
    assert part1["inputs"] == side_a["inputs"][8:]
