"""Data-set readers against hostile and broken data (found by probing them as an attacker would): each is one
DatasetError naming the file and record, in bounded memory — never a traceback, a hang, a silently dropped or
relabelled sample."""
from __future__ import annotations

import csv
import io
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipzoo.datasets import tfrecord as tfr
from clipzoo.datasets.readers import open_dataset, read_image_folder
from clipzoo.errors import ClipzooError, DatasetError


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 20, 20)).save(buf, "PNG")
    return buf.getvalue()


def _tar(path, members: list[tuple[str, bytes]], mode: str = "w") -> str:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _read(spec, **kw) -> list:
    return list(open_dataset(spec, **kw))


def test_a_member_over_the_record_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A .tar.gz of 418 KB held a 400 MB caption, read whole (871 MB peak); the limit is checked on the header."""
    monkeypatch.setattr("clipzoo.datasets.shards.MAX_RECORD_BYTES", 4096)
    shard = _tar(tmp_path / "bomb.tar.gz", [("k.png", _png()), ("k.txt", b"a" * 100_000)], "w:gz")
    with pytest.raises(DatasetError, match=r"member 'k.txt' is 100,000 bytes, more than the 4,096 a sample's member "
                                           r"may hold$"):
        _read(shard)


@pytest.mark.parametrize("members, said", [
    ([("k.png", b"P"), ("k.txt", b"\xff\xfe")], r"bad.tar:k: the caption is not UTF-8 text \(invalid start byte"),
    ([("k.png", b"P"), ("k.cls", b"\xff")], r"bad.tar:k: the label is not UTF-8 text"),
    ([("k.png", b"P"), ("k.cls", "²".encode())], r"bad.tar:k: label '²' is a class name but no class names"),
    ([("k.png", b"P"), ("k.json", b'{"cls": 2.9}')], r"bad.tar:k: label 2.9 is not a whole number"),
    ([("k.png", b"P"), ("k.json", b'{"cls": NaN}')], r"bad.tar:k: label nan is not a whole number"),
    ([("k.png", b"P"), ("k.cls", b"1"), ("k.cls", b"5")], r"'k.cls' appears twice in sample 'k'"),
])
def test_bad_members_are_one_error_naming_the_sample(tmp_path, members, said):
    """Each was a UnicodeDecodeError / ValueError traceback, label 2 for 2.9, or the second k.cls silently kept."""
    shard = _tar(tmp_path / "bad.tar", members)
    kw = {"label_key": "cls"} if any(n.endswith(".json") for n, _ in members) else {}
    with pytest.raises(DatasetError, match=said):
        _read(shard, **kw)


def test_whole_float_labels_and_ascii_digits_still_read(tmp_path):
    json_shard = _tar(tmp_path / "json.tar", [("a.png", _png()), ("a.json", b'{"cls": 2.0}')])
    assert [r.label for r in _read(json_shard, label_key="cls")] == [2]
    cls_shard = _tar(tmp_path / "cls.tar", [("b.png", _png()), ("b.cls", b"1"), ("c.png", _png()), ("c.cls", b"-1")])
    assert [r.label for r in _read(cls_shard)] == [1, -1]


@pytest.mark.parametrize("count, said", [("100000000", "says '100000000' shards, but the folder holds 1"),
                                         ("two", "says 'two' shards, but the folder holds 1")])
def test_nshards_that_the_folder_cannot_hold(tmp_path, count, said):
    """10^8 listed that many shard names (3 GB, minutes); 'two' was a ValueError traceback."""
    split = tmp_path / "wds" / "test"
    split.mkdir(parents=True)
    _tar(split / "0.tar", [("k.png", _png()), ("k.cls", b"0")])
    (split / "nshards.txt").write_text(count)
    with pytest.raises(DatasetError, match=said):
        _read(tmp_path / "wds")


def _csv(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_csv_rows_are_never_swallowed_or_relabelled(tmp_path):
    """An unterminated quote swallowed the rows after it into a caption; a 200 KB field was a csv.Error
    traceback; a label column of 'cat' and '1' gave both rows class 'cat'."""
    bad = _csv(tmp_path / "unterminated.csv", 'filepath,caption\na.png,"cap\nb.png,cap2\n')
    with pytest.raises(DatasetError, match=r"unterminated.csv:\d+: not readable as CSV \(unexpected end of data\)"):
        _read(bad)
    long = _csv(tmp_path / "long.csv", "filepath,caption\na.png," + "x" * 200_000 + "\n")
    with pytest.raises(DatasetError, match=r"long.csv:\d+: not readable as CSV \(field larger than field limit"):
        _read(long)
    mixed = _csv(tmp_path / "mixed.csv", "filepath,label\na.png,cat\nb.png,1\n")
    data = open_dataset(mixed, label_key="label")
    assert data.classnames == ["1", "cat"] and [r.label for r in data] == [1, 0]
    digits = _csv(tmp_path / "digits.csv", "filepath,label\na.png,1\nb.png,0\n")
    assert [r.label for r in open_dataset(digits, label_key="label", classnames=["x", "y"])] == [1, 0]


def test_a_tfrecord_length_past_any_record_is_refused(tmp_path):
    """A length field of 2^40 (with a valid CRC) was a MemoryError, 2^63 an OverflowError."""
    for length in (2**40, 2**63):
        head = struct.pack("<Q", length)
        (tmp_path / "huge.tfrecord").write_bytes(head + struct.pack("<I", tfr.masked_crc32c(head)) + b"xx")
        with pytest.raises(DatasetError, match=rf"record 0 at byte 0: the record claims {length:,} bytes, more than "
                                               r"the 134,217,728 a record may hold; the file is corrupt$"):
            list(tfr.iter_tfrecord(tmp_path / "huge.tfrecord"))


def test_image_folders_read_as_torchvision_reads_them(tmp_path):
    """Images in a class's subfolders were dropped, and an empty class folder skipped: every later class's
    index shifted from torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "f"
    for rel in ("cat/z.png", "cat/sub/c.png", "cat/b.png", "dog/1.png", "emu/2.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png())
    records, names = read_image_folder(str(root))
    tv = ImageFolder(str(root))
    assert names == tv.classes
    assert [(r.image, r.label) for r in records] == [(p, c) for p, c in tv.samples]
    (root / "fox").mkdir()
    with pytest.raises(DatasetError, match=r"class folder 'fox' holds no images .*every subfolder is a class"):
        read_image_folder(str(root))


def test_report_csvs_do_not_carry_spreadsheet_formulas():
    """A data set or model named '=cmd|...' was written as it is into report.csv and the leaderboard's CSVs."""
    from clipzoo.eval.report import csv_text

    record = {"dataset": "=cmd|' /C calc'!A0", "model": "@SUM(1+1)", "pretrained": "-x", "task": "zeroshot",
              "metrics": {"acc1": -0.5, "+evil": 1.0}, "language": "en"}
    rows = list(csv.reader(io.StringIO(csv_text([record]))))
    cells = dict(zip(rows[0], rows[1]))
    assert cells["dataset"] == "'=cmd|' /C calc'!A0" and cells["model"] == "'@SUM(1+1)" and cells["pretrained"] == "'-x"
    assert "'+evil" in rows[0] and "-0.5" in rows[1]  # a number stays a number


def test_a_truncated_embeddings_shard_is_one_line_before_any_index_is_written(tmp_path):
    """np.load's 'mmap length is greater than file size' was a traceback, after index.sqlite was created."""
    from clipzoo.index.from_embeddings import build_index_from_embeddings

    emb = tmp_path / "emb"
    (emb / "img_emb").mkdir(parents=True)
    (emb / "metadata").mkdir()
    np.save(emb / "img_emb" / "img_emb_0.npy", np.ones((10, 8), np.float32))
    data = (emb / "img_emb" / "img_emb_0.npy").read_bytes()
    (emb / "img_emb" / "img_emb_0.npy").write_bytes(data[:-100])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_path": [f"{i}.png" for i in range(10)]}), emb / "metadata" / "metadata_0.parquet")
    with pytest.raises(ClipzooError, match=r"img_emb_0.npy' is not a readable .npy file \(.*\); is it truncated\?$"):
        build_index_from_embeddings(emb, tmp_path / "idx", model="[clip - clipzoo - tiny-shapes]")
    assert not (tmp_path / "idx" / "index.sqlite").exists()
