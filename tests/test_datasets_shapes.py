"""Generated captioned shapes: determinism, prefix property, labels vs captions, balance, the three
on-disk formats read back, resume, and the ``clipzoo data shapes`` CLI's exit codes."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter

import pytest
from PIL import Image
from typer.testing import CliRunner

from clipzoo.cli import app
from clipzoo.datasets import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    DatasetError,
    ShapesDataset,
    class_dirname,
    classnames,
    write_shapes,
)
from clipzoo.errors import ClipzooError

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_vocabulary_sizes():
    assert {"circle", "square", "triangle", "star", "cross", "heart"} <= set(SHAPES)
    assert len(COLORS) >= 8 and set(SIZES) == {"small", "medium", "large"}
    assert set(POSITIONS) == {"left", "right", "top", "bottom", "center"}


def test_deterministic_and_prefix():
    a, b = ShapesDataset(12, seed=3), ShapesDataset(40, seed=3)
    for i in range(12):
        sa, sb = a[i], b[i]
        assert _png(sa.image) == _png(sb.image)
        assert sa.captions == sb.captions and sa.caption == sb.caption and sa.labels == sb.labels
    assert _png(ShapesDataset(5, seed=4)[0].image) != _png(a[0].image)
    assert a[-1].index == 11 and len(a[2:5]) == 3
    with pytest.raises(IndexError):
        a[12]


def test_sample_contents():
    ds = ShapesDataset(60, seed=0, image_size=48)
    samples = list(ds)
    assert all(s.image.size == (48, 48) and s.image.mode == "RGB" for s in samples)
    assert any(len(s.objects) == 2 for s in samples), "some images should hold two objects"
    assert len({s.background for s in samples}) >= 4
    for s in samples:
        lab = s.labels
        assert set(lab) == {"shape", "color", "size", "position", "shape_color"}
        assert lab["shape_color"] == f"{lab['color']} {lab['shape']}"
        assert len(s.captions) >= 4 and s.caption in s.captions and len(set(s.captions)) == len(s.captions)
        for c in s.captions:
            assert lab["color"] in c and lab["shape"] in c, (c, lab)
        assert lab["size"] in s.captions[0]
        assert s.label_index("shape") == SHAPES.index(lab["shape"])


def test_shape_balance():
    ds = ShapesDataset(600, seed=1)
    counts = Counter(ds.plan(i)["labels"]["shape"] for i in range(600))
    assert set(counts) == set(SHAPES)
    expected = 600 / len(SHAPES)
    assert max(abs(c - expected) for c in counts.values()) <= 1
    colors = Counter(ds.plan(i)["labels"]["color"] for i in range(600))
    assert max(colors.values()) - min(colors.values()) <= 2


def test_classnames_sorted_like_imagefolder():
    for key in ("shape", "color", "size", "position", "shape_color"):
        names = classnames(key)
        assert names == sorted(names)
        assert [class_dirname(c) for c in names] == sorted(class_dirname(c) for c in names)
    assert len(classnames("shape_color")) == len(SHAPES) * len(COLORS)


def test_bad_arguments():
    for bad in (0, -3):
        with pytest.raises(DatasetError):
            ShapesDataset(bad)
    with pytest.raises(ClipzooError):
        ShapesDataset(5, image_size=4)
    with pytest.raises(ClipzooError):
        classnames("texture")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "ds"
    manifest = write_shapes(out, 45, seed=0, image_size=32, shard_size=20)
    return out, manifest


def test_write_layout(written):
    out, manifest = written
    assert manifest["complete"] and manifest["files"]["shards"] == 3
    names = (out / "classnames.txt").read_text().splitlines()
    assert names == list(SHAPES)
    templates = (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates and all("{c}" in t for t in templates)
    assert not list(out.rglob(".*.tmp-*"))


def test_csv_and_folder(written):
    out, _ = written
    with open(out / "shapes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 45
    assert list(rows[0]) == ["filepath", "caption", "shape", "color", "size", "position", "shape_color"]
    ds = ShapesDataset(45, seed=0, image_size=32)
    for i, row in enumerate(rows):
        path = out / row["filepath"]  # relative to the CSV
        assert path.parent.name == class_dirname(row["shape"])
        s = ds[i]
        assert row["caption"] == s.caption and row["color"] == s.labels["color"]
        assert path.read_bytes() == _png(s.image)
    pngs = sorted(p for p in (out / "images").rglob("*.png"))
    assert len(pngs) == 45
    assert sorted(p.name for p in (out / "images").iterdir()) == list(SHAPES)


def test_webdataset_shards(written):
    out, _ = written
    shards = sorted((out / "webdataset").glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert (out / "webdataset" / "nshards.txt").read_text().strip() == "3"
    keys = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = tar.getnames()
            assert len(members) % 4 == 0
            for name in members:
                key, ext = name.split(".", 1)
                if ext != "png":
                    continue
                keys.append(key)
                assert f"{key}.txt" in members and f"{key}.json" in members and f"{key}.cls" in members
                labels = json.loads(tar.extractfile(f"{key}.json").read())
                caption = tar.extractfile(f"{key}.txt").read().decode()
                cls = int(tar.extractfile(f"{key}.cls").read())
                assert SHAPES[cls] == labels["shape"] and labels["shape"] in caption
                Image.open(io.BytesIO(tar.extractfile(name).read())).verify()
    assert keys == [f"{i:08d}" for i in range(45)]


def test_resume_and_guard(tmp_path):
    out = tmp_path / "ds"
    write_shapes(out, 10, seed=2, image_size=24, formats=["webdataset"], shard_size=5)
    first = (out / "webdataset" / "shard-000000.tar").read_bytes()
    (out / "webdataset" / "shard-000001.tar").unlink()  # as if interrupted
    write_shapes(out, 10, seed=2, image_size=24, formats=["webdataset"], shard_size=5)
    assert (out / "webdataset" / "shard-000001.tar").exists()
    assert (out / "webdataset" / "shard-000000.tar").read_bytes() == first
    assert not (out / "images").exists() and not (out / "shapes.csv").exists()
    with pytest.raises(DatasetError, match="seed"):
        write_shapes(out, 10, seed=3, image_size=24, formats=["webdataset"], shard_size=5)
    write_shapes(out, 4, seed=3, image_size=24, formats=["csv"], label_key="color", overwrite=True)
    assert (out / "classnames.txt").read_text().splitlines() == list(COLORS)
    assert not (out / "webdataset").exists()


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _user_error(*args) -> str:
    result = _cli(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli(tmp_path):
    out = tmp_path / "cli"
    result = _cli("data", "shapes", "--out", out, "-n", 12, "--seed", 1, "--image-size", 32,
                  "--format", "csv", "--format", "webdataset", "--shard-size", 5, "--no-progress")
    assert result.exit_code == 0, (result.output, result.exception)
    assert len((out / "shapes.csv").read_text().splitlines()) == 13
    assert len(list((out / "webdataset").glob("shard-*.tar"))) == 3
    assert "positive" in _user_error("data", "shapes", "--out", tmp_path / "x", "-n", 0)
    assert "jpeg" in _user_error("data", "shapes", "--out", tmp_path / "y", "-n", 3, "--format", "jpeg")
    afile = tmp_path / "file.txt"
    afile.write_text("hi")
    assert "file" in _user_error("data", "shapes", "--out", afile, "-n", 3)
    assert "label key" in _user_error("data", "shapes", "--out", tmp_path / "z", "-n", 3, "--label-key", "hue")
