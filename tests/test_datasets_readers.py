"""Data set readers: every layout of the same generated data yields the same samples."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipzoo.datasets import FORMATS, write_shapes
from clipzoo.datasets.classes import resolve_classnames, resolve_templates
from clipzoo.datasets.readers import expand_urls, open_dataset
from clipzoo.datasets.records import decode_image
from clipzoo.errors import BadImageError, DatasetError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    write_shapes(root, 30, seed=1, image_size=32, shard_size=8, formats=FORMATS)
    return root


def _samples(data):
    """key -> (label, captions, pixel checksum) for every record of a data source."""
    out = {}
    for rec in data:
        arr = np.asarray(decode_image(rec))
        out[rec.key] = (rec.label, tuple(rec.captions), int(arr.astype(np.int64).sum()))
    return out


def test_every_layout_of_the_shapes_reads_the_same(shapes):
    manifest = json.loads((shapes / "manifest.json").read_text())
    expected = _samples(open_dataset(shapes))
    assert len(expected) == 30
    # labels are the shape classes in classnames.txt order; captions come from the CSV
    names = (shapes / "classnames.txt").read_text().split("\n")[:-1]
    assert open_dataset(shapes).classnames == names == manifest["classnames"]
    for spec in [shapes / "shapes.csv", shapes / "webdataset", str(shapes / "webdataset/shard-{000000..000003}.tar"),
                 str(shapes / "webdataset/shard-*.tar"), shapes / "tfrecord",
                 str(shapes / "tfrecord/shard-{000000..000003}.tfrecord")]:
        data = open_dataset(spec)
        assert data.classnames == names, spec
        assert data.templates[0] == "a {c}.", spec
        assert _samples(data) == expected, spec
    # the image folder has no captions; labels and pixels agree
    folder = _samples(open_dataset(shapes / "images"))
    assert {k: (v[0], v[2]) for k, v in folder.items()} == {k: (v[0], v[2]) for k, v in expected.items()}


def test_shards_are_units_of_work(shapes):
    data = open_dataset(shapes / "webdataset")
    assert len(data.shards) == 4 and data.size is None
    assert [len(list(s())) for s in data.shards] == [8, 8, 8, 6]
    csv_data = open_dataset(shapes, shard_size=7)
    assert [len(s) for s in csv_data.shards] == [7, 7, 7, 7, 2] and csv_data.size == 30


def test_label_key_reads_another_column_or_json_field(shapes):
    by_csv = open_dataset(shapes / "shapes.csv", label_key="color")
    # no classnames.txt for colours: the sorted distinct names become the classes
    assert by_csv.classnames == sorted(by_csv.classnames)
    # the webdataset's JSON field "color", mapped through the same class names
    by_json = open_dataset(shapes / "webdataset", label_key="color", classnames=by_csv.classnames)
    assert {r.key: r.label for r in by_json} == {r.key: r.label for r in by_csv}
    # a TFRecord feature holding the class name, mapped the same way
    by_tfr = open_dataset(shapes / "tfrecord", label_key="color", classnames=by_csv.classnames)
    assert {r.key: r.label for r in by_tfr} == {r.key: r.label for r in by_csv}
    assert len(set(r.label for r in by_csv)) > 3


def _clip_benchmark_layout(root, n=12, retrieval=False):
    """What clip_benchmark's export writes: <split>/{0..}.tar via webdataset.ShardWriter, nshards.txt."""
    import webdataset as wds

    (root / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(root / "test" / "%d.tar"), maxcount=5, verbose=0) as sink:
        for i in range(n):
            img = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
            buf = io.BytesIO()
            img.save(buf, format="webp", lossless=True)
            sample = {"__key__": f"s{i:04d}", "webp": buf.getvalue()}
            if retrieval:
                sample["txt"] = f"caption one of {i}\ncaption two of {i}"
            else:
                sample["cls"] = str(i % 3)
            sink.write(sample)
    (root / "test" / "nshards.txt").write_text(str(-(-n // 5)))
    if retrieval:
        (root / "dataset_type.txt").write_text("retrieval")
    else:
        (root / "classnames.txt").write_text("apple\nbanana\ncherry\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\nart of the {c}.\n")
    return root


def test_clip_benchmark_webdataset_layout(tmp_path):
    root = _clip_benchmark_layout(tmp_path / "cb")
    data = open_dataset(root)
    assert data.classnames == ["apple", "banana", "cherry"]
    assert data.templates == ["a photo of a {c}.", "art of the {c}."]
    assert [s.url for s in data.shards] == [str(root / "test" / f"{i}.tar") for i in range(3)]
    recs = list(data)
    assert [r.key for r in recs] == [f"s{i:04d}" for i in range(12)]
    assert [r.label for r in recs] == [i % 3 for i in range(12)]
    assert decode_image(recs[0]).size == (24, 20)


def test_clip_benchmark_retrieval_layout_has_one_caption_per_line(tmp_path):
    data = open_dataset(_clip_benchmark_layout(tmp_path / "cbr", n=6, retrieval=True))
    assert data.kind == "retrieval"
    assert [r.captions for r in data][2] == ["caption one of 2", "caption two of 2"]


def test_csv_rows_of_one_image_are_one_sample_with_several_captions(tmp_path):
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(tmp_path / f"im{i}.png")
    (tmp_path / "c.tsv").write_text("filepath\ttitle\tlabel\nim0.png\ta red thing\tred\nim1.png\ta dark one\tdark\n"
                                    "im0.png\tanother red thing\tred\n")
    data = open_dataset(tmp_path / "c.tsv", caption_key="title")
    recs = list(data)
    assert [r.captions for r in recs] == [["a red thing", "another red thing"], ["a dark one"]]
    assert data.classnames == ["dark", "red"] and [r.label for r in recs] == [1, 0]
    assert recs[0].image == str(tmp_path / "im0.png")  # relative to the CSV's folder


def test_remote_shards_through_fsspec(shapes):
    import fsspec

    fs = fsspec.filesystem("memory")
    for i in range(4):
        fs.pipe(f"/remote/shapes/shard-{i:06d}.tar", (shapes / f"webdataset/shard-{i:06d}.tar").read_bytes())
    fs.pipe("/remote/shapes/classnames.txt", (shapes / "classnames.txt").read_bytes())
    assert expand_urls("memory://remote/shapes/shard-{000000..000001}.tar") == [
        "memory://remote/shapes/shard-000000.tar", "memory://remote/shapes/shard-000001.tar"]
    data = open_dataset("memory://remote/shapes")
    assert data.classnames == open_dataset(shapes).classnames
    assert _samples(data) == _samples(open_dataset(shapes / "webdataset"))
    fs.rm("/remote", recursive=True)


def test_classnames_and_templates_sources(tmp_path):
    assert len(resolve_classnames("imagenet1k")) == 1000
    assert resolve_classnames("cifar10")[:3] == ["airplane", "automobile", "bird"]
    assert len(resolve_classnames("cifar100")) == 100 and "aquarium fish" in resolve_classnames("cifar100")
    assert len(resolve_templates("openai_imagenet")) == 80
    assert resolve_templates("openai_imagenet")[0] == "a bad photo of a {c}."
    assert len(resolve_templates("cifar10")) == 18
    (tmp_path / "names.json").write_text(json.dumps({"mine": ["x", "y"], "other": ["z"]}))
    assert resolve_classnames(str(tmp_path / "names.json"), "mine") == ["x", "y"]
    with pytest.raises(DatasetError, match=r"names.json' has no entry for data set 'nope'; it has: mine, other"):
        resolve_classnames(str(tmp_path / "names.json"), "nope")
    with pytest.raises(DatasetError, match="template 'a photo' has no"):
        resolve_templates(["a photo"])
    with pytest.raises(DatasetError, match="no built-in class names 'imagenet2k'"):
        resolve_classnames("imagenet2k")


def test_bad_data_sets_get_one_clear_error(tmp_path, shapes):
    (tmp_path / "empty.csv").write_text("filepath,caption\n")
    with pytest.raises(DatasetError, match=r"empty.csv' has no rows: the data set is empty"):
        open_dataset(tmp_path / "empty.csv")
    with pytest.raises(DatasetError, match=r"has no column 'path' \(columns: filepath, caption; separator ','\); "
                                           r"name the right column with --img-key"):
        open_dataset(tmp_path / "empty.csv", img_key="path")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "missing_dir")
    (tmp_path / "void").mkdir()
    with pytest.raises(DatasetError, match="holds no data set"):
        open_dataset(tmp_path / "void")
    with pytest.raises(DatasetError, match="7 class folders but 2 class names"):
        open_dataset(shapes / "images", classnames=["a", "b"])
    with pytest.raises(DatasetError, match=r"label 'circle' is not one of the 2 class names"):
        list(open_dataset(shapes / "webdataset", label_key="shape", classnames=["a", "b"]))
    # a shard cut off mid-file
    bad = tmp_path / "cut"
    bad.mkdir()
    data = (shapes / "webdataset/shard-000000.tar").read_bytes()
    (bad / "shard-0.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(DatasetError, match=r"shard-0.tar' is not a readable tar file .* truncated"):
        list(open_dataset(bad))
    # a corrupt image is named with its shard and member
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    with tarfile.open(corrupt / "a.tar", "w") as tar:
        for name, payload in [("k1.png", b"not a png"), ("k1.cls", b"0")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    rec = next(iter(open_dataset(corrupt)))
    with pytest.raises(BadImageError, match=r"a.tar:k1.png' cannot be decoded"):
        decode_image(rec)


def test_unfinished_shapes_folder_says_how_to_finish(tmp_path):
    root = tmp_path / "s"
    write_shapes(root, 4, image_size=16)
    m = json.loads((root / "manifest.json").read_text())
    m["complete"] = False
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="incomplete .* run the same `clipzoo data shapes` command again"):
        open_dataset(root)
    assert os.path.exists(root / "shapes.csv")
