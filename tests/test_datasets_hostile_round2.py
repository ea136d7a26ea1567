"""Data set readers against hostile input, round 2: cut shards, deep JSON, text labels, worker errors, CSV cells,
per-sample memory, brace ranges, bracketed paths, fifos, folder extensions, class name lines."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from clipzoo.datasets.braces import brace_count
from clipzoo.datasets.readers import open_dataset
from clipzoo.datasets.records import decode_image
from clipzoo.datasets.tfrecord import encode_example, write_tfrecord
from clipzoo.embed.sources import tar_image_members
from clipzoo.errors import BadImageError, DatasetError


def _png(color=(200, 20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def _tar(path, members, mode: str = "w") -> str:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _three_samples(tmp_path) -> tuple[str, bytes]:
    path = _tar(tmp_path / "full.tar", [(f"{k}.{e}", _png() if e == "png" else f"cap {k}".encode())
                                        for k in ("a", "b", "c") for e in ("png", "txt")])
    return path, Path(path).read_bytes()


def _keys(spec, **kw) -> list[str]:
    return [r.key for r in open_dataset(spec, **kw)]


# ------------------------------------------------------------------ 1. a cut shard is an error
def test_a_shard_cut_between_two_samples_is_an_error_not_a_shorter_shard(tmp_path):
    full, data = _three_samples(tmp_path)
    assert _keys(full) == ["a", "b", "c"]
    with tarfile.open(full) as tar:
        cut_at = tar.getmember("b.txt").offset_data + 512  # a block boundary: sample "c" and the end marker are gone
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:cut_at])
    with pytest.raises(DatasetError) as exc:
        _keys(str(cut))
    assert str(exc.value) == (f"shard {str(cut)!r} is not a readable tar file (the file ends at byte {cut_at:,} "
                              "without the end-of-archive marker); it may be truncated — rewrite it")
    # the embed reader tells it the same way (one check for both)
    with pytest.raises(BadImageError, match=rf"truncated after 2 image member\(s\) \(the file ends at byte "
                                            rf"{cut_at:,} without the end-of-archive marker\)"):
        tar_image_members(str(cut))


def test_a_shard_cut_inside_a_header_is_an_error(tmp_path):
    full, data = _three_samples(tmp_path)
    with tarfile.open(full) as tar:
        header = tar.getmember("c.png").offset
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:header + 100])
    with pytest.raises(DatasetError, match=rf"\(a cut tar header at byte {header:,}\); it may be truncated"):
        _keys(str(cut))
    gz = tmp_path / "cut.tar.gz"  # a compressed shard is read as a stream: the same check
    _tar(gz, [(f"{k}.{e}", _png() if e == "png" else b"x") for k in ("a", "b") for e in ("png", "txt")], "w:gz")
    import gzip

    raw = gzip.decompress(gz.read_bytes())
    gz.write_bytes(gzip.compress(raw[:2048]))  # after sample a: b is lost
    with pytest.raises(DatasetError, match=r"\(the file ends at byte 2,048 without the end-of-archive marker\)"):
        _keys(str(gz))


def test_a_shard_cut_inside_its_end_marker_lost_nothing(tmp_path):
    full, data = _three_samples(tmp_path)
    with tarfile.open(full) as tar:
        end = tar.getmember("c.txt").offset_data + 512
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:end + 100])
    assert _keys(str(cut)) == ["a", "b", "c"]


# ------------------------------------------------------------------ 2. deep JSON
def test_a_json_member_nested_too_deeply_is_one_line_and_parsed_only_when_used(tmp_path):
    shard = _tar(tmp_path / "deep.tar", [("k.png", _png()), ("k.txt", b"cap"), ("k.json", b"[" * 5000 + b"]" * 5000)])
    assert [(r.key, r.captions) for r in open_dataset(shard)] == [("k", ["cap"])]  # no field comes from the JSON
    with pytest.raises(DatasetError) as exc:
        _keys(shard, caption_key="title")
    assert str(exc.value) == f"{shard}:k.json is not valid JSON (nested too deeply)"


def test_a_json_field_is_still_read_when_named(tmp_path):
    shard = _tar(tmp_path / "j.tar", [("k.png", _png()), ("k.json", b'{"title": "a red circle", "cls": 1}')])
    recs = list(open_dataset(shard, caption_key="title", label_key="cls"))
    assert [(r.captions, r.label) for r in recs] == [(["a red circle"], 1)]


# ------------------------------------------------------------------ 3. TFRecord text labels
@pytest.mark.parametrize("label,expected", [
    ("²", "label '²' is not one of the 2 class names (a, b); the class names do not match the data"),
    ("--5", "label '--5' is not one of the 2 class names (a, b); the class names do not match the data"),
    ("٣", "label '٣' is not one of the 2 class names (a, b); the class names do not match the data"),
])
def test_tfrecord_labels_follow_the_class_index_rule_of_tar_and_csv(tmp_path, label, expected):
    path = str(tmp_path / "lab.tfrecord")
    write_tfrecord(path, [encode_example({"png": _png(), "txt": "cap", "cls": label.encode()})])
    with pytest.raises(DatasetError) as exc:
        _keys(path, classnames=["a", "b"])
    assert str(exc.value) == f"{path}:#0: {expected}"


def test_tfrecord_ascii_digit_labels_are_class_indices(tmp_path):
    path = str(tmp_path / "lab.tfrecord")
    write_tfrecord(path, [encode_example({"png": _png(), "txt": "cap", "cls": lab.encode()}) for lab in (" 1 ", "b")])
    assert [r.label for r in open_dataset(path, classnames=["a", "b"])] == [1, 1]


# ------------------------------------------------------------------ 4. worker errors in training
_WORKER_STREAM = """
import sys, torch
from clipzoo.datasets.readers import open_dataset
from clipzoo.errors import DatasetError
from clipzoo.train.data import StreamData
stream = StreamData([open_dataset([sys.argv[1]])], lambda im: torch.zeros(3, 4, 4),
                    lambda t: torch.zeros(len(t), 4, dtype=torch.long), workers=int(sys.argv[2]), num_samples=4,
                    shuffle_buffer=1)
try:
    list(stream.batches(0, 0, 2))
except DatasetError as exc:
    print(exc)
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_a_shard_error_in_a_training_worker_is_the_original_one_line_error(tmp_path, workers):
    """With DataLoader workers the error came out as torch's "Caught DatasetError in DataLoader worker process 0.
    Original Traceback …". Run in a fresh interpreter: a DataLoader worker forked inside a pytest-xdist worker
    crashes that worker (stop 38)."""
    good = _tar(tmp_path / "a.tar", [(f"{k}.{e}", _png() if e == "png" else b"cap") for k in "abcd"
                                     for e in ("png", "txt")])
    data = Path(good).read_bytes()
    (tmp_path / "c.tar").write_bytes(data[:2048])  # cut: after the first sample's members
    run = subprocess.run([sys.executable, "-c", _WORKER_STREAM, str(tmp_path / "c.tar"), str(workers)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == (f"shard {str(tmp_path / 'c.tar')!r} is not a readable tar file (the file ends at "
                                  "byte 2,048 without the end-of-archive marker); it may be truncated — rewrite it")


# ------------------------------------------------------------------ 5. memory per sample
def test_members_nobody_uses_are_not_read_and_a_sample_has_a_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr("clipzoo.datasets.shards.MAX_RECORD_BYTES", 4096)
    unused = [(f"k.x{i}", b"\0" * 3000) for i in range(4)]  # 3,000 each, 12,000 together: never read
    shard = _tar(tmp_path / "u.tar.gz", [("k.png", _png()), *unused, ("k.txt", b"cap")], "w:gz")
    assert [(r.key, r.captions) for r in open_dataset(shard)] == [("k", ["cap"])]
    big = _tar(tmp_path / "b.tar", [("k.png", _png()), ("k.txt", b"c" * 2500), ("k.json", b"1" * 2500)])
    with pytest.raises(DatasetError) as exc:
        _keys(big)
    assert str(exc.value) == (f"shard {big!r}: sample 'k' holds more than the 4,096 bytes a sample may hold "
                              "(at member 'k.json')")


# ------------------------------------------------------------------ 6. + 12. CSV cells and labels
def _csv(tmp_path, text: str) -> str:
    (tmp_path / "img").mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(_png())
    path = tmp_path / "t.csv"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,line,message", [
    ("filepath,caption\nimg/a.png,a red circle, small, on the left\n", 2,
     "4 cells but the header has 2 (quote fields holding the separator)"),
    ("filepath,caption\nimg/a.png\nimg/b.png,x\n", 2, "1 cell but the header has 2 (every row needs a cell for each "
                                                     "column)"),
    ("filepath,caption\nimg/a.png,x\nimg/b.png,x,y\n", 3, "3 cells but the header has 2 (quote fields holding the "
                                                          "separator)"),
])
def test_csv_rows_with_the_wrong_number_of_cells_are_an_error_naming_the_line(tmp_path, text, line, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DatasetError) as exc:
        _keys(path)
    assert str(exc.value) == f"{path}:{line}: {message}"


def test_a_quoted_caption_holding_the_separator_is_read_whole(tmp_path):
    path = _csv(tmp_path, 'filepath,caption\nimg/a.png,"a red circle, small"\n')
    assert [r.captions for r in open_dataset(path)] == [["a red circle, small"]]


def test_a_repeated_csv_column_name_reads_the_first_column_as_pandas_does(tmp_path):
    path = _csv(tmp_path, "filepath,caption,caption\nimg/a.png,first,second\n")
    assert [r.captions for r in open_dataset(path)] == [["first"]]


def test_one_image_with_two_labels_is_an_error_naming_both_lines(tmp_path):
    path = _csv(tmp_path, "filepath,caption,label\nimg/a.png,a cat,0\nimg/b.png,b,1\nimg/a.png,a dog,1\n")
    with pytest.raises(DatasetError) as exc:
        _keys(path)
    image = os.path.join(str(tmp_path), "img/a.png")
    assert str(exc.value) == (f"{path}:4: image {image!r} has label '1' here but '0' on line 2; an image has one "
                              "label (the captions of its rows are gathered)")
    same = _csv(tmp_path, "filepath,caption,label\nimg/a.png,a cat,0\nimg/a.png,a kitten,0\n")
    assert [(r.captions, r.label) for r in open_dataset(same)] == [(["a cat", "a kitten"], 0)]


# ------------------------------------------------------------------ 7. + 8. names: literal paths, brace ranges
def test_an_existing_path_with_brackets_is_that_file_not_a_glob(tmp_path):
    folder = tmp_path / "set [v2]"
    folder.mkdir()
    (folder / "img").mkdir()
    (folder / "img" / "a.png").write_bytes(_png())
    (folder / "train.csv").write_text("filepath,caption\nimg/a.png,x\n")
    assert _keys(str(folder / "train.csv")) == ["a"]
    shard = _tar(tmp_path / "shard[0].tar", [("k.png", _png()), ("k.txt", b"cap")])
    assert _keys(shard) == ["k"]


@pytest.mark.parametrize("pattern", ["a", "a{1..3}", "{07..10}", "{a..g..2}", "{4..1}", "{2..-1}", "{0..5..0}",
                                     "python{2.{5..7},3.{2,3}}", "index.html{,.backup}", r"{1\{2,3}", "{x}", "{,}",
                                     "{1,2}{a,b,c}x{}", "{a,{b,c}}{0..10..3}"])
def test_brace_count_is_the_number_of_names_braceexpand_gives(pattern):
    from braceexpand import braceexpand

    assert brace_count(pattern) == len(list(braceexpand(pattern)))


def test_a_huge_brace_range_is_refused_before_it_is_listed(tmp_path):
    spec = str(tmp_path / "shards-{0..99999999}.tar")
    with pytest.raises(DatasetError) as exc:
        open_dataset(spec)
    assert str(exc.value) == (f"{spec!r} names 100,000,000 shards, more than the 2,000,000 a data set may list; "
                              "check the brace range (shards-{000000..000999}.tar names 1,000)")


def test_a_missing_local_shard_is_said_when_the_data_set_is_opened(tmp_path):
    _tar(tmp_path / "s-0.tar", [("k.png", _png()), ("k.txt", b"cap")])
    with pytest.raises(DatasetError) as exc:
        open_dataset(str(tmp_path / "s-{0..1}.tar"))  # before any sample of s-0 is read
    assert str(exc.value) == f"shard {str(tmp_path / 's-1.tar')!r} does not exist"


# ------------------------------------------------------------------ 9. fifos
def test_fifos_are_refused_not_waited_on(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(_png())
    os.mkfifo(tmp_path / "cat" / "x.png")
    recs = list(open_dataset(str(tmp_path)))
    with pytest.raises(BadImageError) as exc:
        decode_image(recs[1])
    assert str(exc.value) == (f"image {str(tmp_path / 'cat' / 'x.png')!r} is not a regular file (a fifo, a socket or "
                              "a device); not read")
    os.mkfifo(tmp_path / "s.tar")
    with pytest.raises(DatasetError) as exc:
        open_dataset(str(tmp_path / "s.tar"))
    assert str(exc.value) == f"shard {str(tmp_path / 's.tar')!r} is not a regular file (a fifo, a socket or a device)"


# ------------------------------------------------------------------ 10. + 11. folders and CLIP_benchmark layouts
def test_image_folders_take_torchvisions_extensions(tmp_path):
    for cls, names in (("cat", ("a.png", "b.pgm")), ("dog", ("c.gif", "d.jpg"))):
        (tmp_path / cls).mkdir()
        for name in names:
            Image.new("RGB", (8, 8)).save(tmp_path / cls / name)
    recs = list(open_dataset(str(tmp_path)))
    assert [(os.path.basename(r.image), r.label) for r in recs] == [("a.png", 0), ("b.pgm", 0), ("d.jpg", 1)]


def test_a_blank_line_among_class_names_is_an_error(tmp_path):
    shard = _tar(tmp_path / "s.tar", [("k.png", _png()), ("k.cls", b"1")])
    (tmp_path / "classnames.txt").write_text("circle\n\ndiamond\nheart\n\n")
    with pytest.raises(DatasetError) as exc:
        open_dataset(shard)
    assert str(exc.value) == (f"class names file {str(tmp_path / 'classnames.txt')!r}: line 2 is blank; write one "
                              "class name per line (a line's number is its class index)")
    (tmp_path / "classnames.txt").write_text("circle\ndiamond\nheart\n\n")  # blank lines at the end are fine
    assert open_dataset(shard).classnames == ["circle", "diamond", "heart"]


def test_members_without_extension_and_meta_files_are_no_samples(tmp_path):
    shard = _tar(tmp_path / "s.tar", [("__meta__", b"{}"), ("a.png", _png()), ("a.txt", b"cap"), ("noext", b"x"),
                                      ("b.png", _png()), ("b.txt", b"cap b")])
    assert _keys(shard) == ["a", "b"]
