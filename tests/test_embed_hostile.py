"""`clipzoo embed` and clipzoo.embed against hostile inputs and outputs: an output that would replace an input, a
table naming a fifo, tables that are not UTF-8 or not parquet, a truncated tar shard, output files' modes, padded
image files, one expansion of the inputs, a killed run's temporary file, a sidecar place taken by a folder."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.embed import embed_images, embed_texts, embed_to_file, expand_image_inputs, read_texts
from clipzoo.embed.decode import decode_file
from clipzoo.embed.sources import TarMember
from clipzoo.errors import BadImageError, BadOptionError, BadTextError, ClipzooError
from clipzoo.files import atomic_write_text, expand_files

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    return str(write_open_clip_safetensors(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", embed_config=True))


@pytest.fixture(scope="module")
def model(model_path):
    return clipzoo.load(model_path, device="cpu")


def jpeg(seed: int, w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_tar(path, sizes) -> list:
    """A webdataset-like tar of JPEGs ``0000.jpg``, … of ``sizes`` (w, h); returns its members."""
    with tarfile.open(path, "w") as tar:
        for i, (w, h) in enumerate(sizes):
            data = jpeg(i, w, h)
            info = tarfile.TarInfo(f"{i:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return tar.getmembers()


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg(i))
    return folder


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def user_error(*args) -> str:
    """A command that fails on user input: exit 2 and one line 'error: …'."""
    result = cli(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------ 1. an output that replaces an input
def test_embed_refuses_an_output_or_sidecar_that_is_an_input(model_path, photos, tmp_path):
    caps = tmp_path / "caps.json"
    caps.write_text("a cat\na dog\n")
    line = user_error("embed", model_path, "--texts", caps, "--out", tmp_path / "caps.npy", "--no-progress")
    assert line == (f"error: sidecar {str(caps)!r} is the input {str(caps)!r}: writing there would destroy it; "
                    f"choose another output name than {str(tmp_path / 'caps.npy')!r} (its sidecar takes the name "
                    "with .json)")
    assert caps.read_text() == "a cat\na dog\n" and not (tmp_path / "caps.npy").exists()
    listed = tmp_path / "list.npy"  # a texts file named as the output
    listed.write_text("a cat\n")
    line = user_error("embed", model_path, "--texts", listed, "--out", listed, "--no-progress")
    assert line.startswith(f"error: output {str(listed)!r} is the input {str(listed)!r}: writing there would destroy")
    assert listed.read_text() == "a cat\n"
    named = photos / "2.json"  # an image file given by name whose name the sidecar takes (API: embed_to_file)
    (photos / "2.jpg").rename(named)
    with pytest.raises(ClipzooError, match=r"^sidecar '.*2\.json' is the input '.*2\.json': writing there would"):
        embed_to_file(clipzoo.load(model_path, device="cpu"), photos / "2.npy", images=[photos / "0.jpg", named])
    assert named.read_bytes()[:3] == b"\xff\xd8\xff"
    out = photos / "emb.npy"  # a previous run's output inside the images folder is replaced, as before
    for _ in range(2):
        assert cli("embed", model_path, "--images", photos, "--out", out, "--workers", "0",
                   "--no-progress").exit_code == 0
    assert np.load(out).shape == (2, 32)


# ------------------------------------------------------------------ 2. a table row naming a fifo
def test_a_table_row_or_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path, photos):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    stop = threading.Event()

    def unblock():  # a regression fails after 5 s instead of hanging
        while not stop.wait(5):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=unblock, daemon=True).start()
    try:
        rows = tmp_path / "rows.csv"
        rows.write_text(f"image_path\n{photos / '0.jpg'}\n{fifo}\n")
        with pytest.raises(BadImageError, match=r"^image '.*pipe\.jpg' \(row 2 of table '.*rows\.csv'\) is not a "
                                                r"regular file \(a fifo, a socket or a device\); remove the row"):
            expand_image_inputs(rows)
        start = time.monotonic()
        with pytest.raises(BadImageError, match=r"^image '.*pipe\.jpg' is not a regular file"):
            decode_file(fifo, 32)
        assert time.monotonic() - start < 2
    finally:
        stop.set()


# ------------------------------------------------------------------ 3, 4. tables: not UTF-8, not parquet, a BOM
def test_unreadable_tables_are_one_line_and_a_bom_is_read(tmp_path, photos):
    from clipzoo.embed.remote_inputs import expand_inputs

    latin = tmp_path / "latin.csv"
    latin.write_bytes("image_path\ncaf\xe9.jpg\n".encode("latin-1"))
    garbage = tmp_path / "rows.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(BadImageError, match=r"^table '.*latin\.csv' is not UTF-8 text \(invalid continuation "
                                            r"byte\); save it as UTF-8 CSV$"):
        expand_image_inputs(latin)
    with pytest.raises(BadImageError, match=r"^table '.*rows\.parquet' cannot be read as parquet \(Arrow\w+: .*\); "
                                            r"is it a damaged file\?$"):
        expand_image_inputs(garbage)
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbfimage_path,caption\nphotos/0.jpg,a\nphotos/1.jpg,b\n")
    assert expand_image_inputs(bom) == [str(photos / "0.jpg"), str(photos / "1.jpg")]
    import fsspec

    mem = fsspec.filesystem("memory")
    mem.pipe("/hostile-tables/latin.csv", latin.read_bytes())
    mem.pipe("/hostile-tables/excel.csv", bom.read_bytes())
    with pytest.raises(BadImageError, match=r"^table 'memory://hostile-tables/latin\.csv' is not UTF-8 text"):
        expand_inputs("memory://hostile-tables/latin.csv")
    mem.pipe("/hostile-tables/photos/0.jpg", jpeg(0))
    mem.pipe("/hostile-tables/photos/1.jpg", jpeg(1))
    assert [str(x) for x in expand_inputs("memory://hostile-tables/excel.csv")] == [
        "memory://hostile-tables/photos/0.jpg", "memory://hostile-tables/photos/1.jpg"]


# ------------------------------------------------------------------ 5. a truncated tar shard
def test_a_truncated_tar_keeps_its_members_under_skip_bad_and_says_so_without(model, tmp_path):
    whole = tmp_path / "whole.tar"
    third = write_tar(whole, [(200, 150)] * 3)[2]
    cut = tmp_path / "cut.tar"
    raw = whole.read_bytes()
    cut.write_bytes(raw[:third.offset_data + 100])  # inside the third member's data
    with pytest.raises(BadImageError, match=r"^tar shard '.*cut\.tar' is truncated after 2 image member\(s\) "
                                            r"\(member '0002\.jpg' ends past the end of the file, at byte [\d,]+\); "
                                            r"copy or write it again, or pass --skip-bad"):
        expand_image_inputs(cut)
    result = embed_images(model, cut, workers=0, skip_bad=True)
    assert result.inputs == [f"{cut}#0000.jpg", f"{cut}#0001.jpg"] and result.features.shape == (2, 32)
    assert [s["input"] for s in result.skipped] == [str(cut)]
    assert result.skipped[0]["error"].startswith(f"tar shard {str(cut)!r} is truncated after 2 image member(s)")
    header_cut = tmp_path / "header_cut.tar"  # the third member's header cut short
    header_cut.write_bytes(raw[:third.offset + 100])
    with pytest.raises(BadImageError, match=r"is truncated after 2 image member\(s\) \(a cut tar header at byte"):
        expand_image_inputs(header_cut)
    assert len(expand_image_inputs(whole)) == 3


# ------------------------------------------------------------------ 6. files written whole get the umask's mode
def test_atomic_writes_and_the_sidecar_get_the_umask_mode(model, tmp_path, photos):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        embed_to_file(model, tmp_path / "e.npy", images=[photos], workers=0)
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == oct(0o640)
    assert oct((tmp_path / "e.json").stat().st_mode & 0o777) == oct(0o640)
    assert oct((tmp_path / "e.npy").stat().st_mode & 0o777) == oct(0o640)


# ------------------------------------------------------------------ 7. bounded reads, one decode
def test_a_padded_image_file_is_refused_before_it_is_read_and_decoded_once(tmp_path, monkeypatch):
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(jpeg(0) + b"\0" * (20 << 20))  # a valid 64x48 JPEG and 20 MiB of zeros after it
    with pytest.raises(BadImageError, match=r"^image '.*padded\.jpg' is 20,97\d,\d+ bytes, more than its 3,072 "
                                            r"pixels can need; is it a corrupt or padded file\?"):
        decode_file(padded, 32)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0\0\0" + b"\0" * (20 << 20))  # a JPEG's magic, then nothing
    start = time.monotonic()
    with pytest.raises(BadImageError, match=r"^image '.*junk\.jpg' \(20,971,526 bytes\) has no image header a "
                                            r"decoder can read"):
        decode_file(junk, 32)
    assert time.monotonic() - start < 5
    member = TarMember(str(padded), "padded.jpg", 0, padded.stat().st_size)
    with pytest.raises(BadImageError, match=r"^image '.*padded\.jpg#padded\.jpg' is 20,97"):
        member.open_rgb(32)
    big = tmp_path / "big.png"  # a real image over 16 MiB still decodes
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2500, 2500, 3), dtype=np.uint8)).save(
        big, compress_level=0)
    assert big.stat().st_size > 16 << 20 and decode_file(big, 32).size[0] > 0

    import clipzoo.embed.decode as decode

    def second_decode(*a, **k):
        raise AssertionError("decoded twice")

    monkeypatch.setattr(decode, "open_image", second_decode)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg(1)[:300])
    with pytest.raises(BadImageError, match=r"^image '.*broken\.jpg' cannot be decoded \(\w+: .*\); is it a corrupt"):
        decode_file(broken, 32)

def test_a_padded_image_at_a_url_is_refused_before_it_is_read(tmp_path):
    """The Ray engine's fsspec inputs read as local files are read: a remote file or tar member larger than its
    header's pixels can need is refused before the rest is fetched (it was read whole, any size)."""
    from clipzoo.embed.remote_inputs import RemoteFile, RemoteTarMember

    padded = tmp_path / "padded.jpg"
    padded.write_bytes(jpeg(0) + b"\0" * (20 << 20))
    with pytest.raises(BadImageError, match=r"^image 'file://.*padded\.jpg' is 20,97\d,\d+ bytes, more than its "
                                            r"3,072 pixels can need"):
        RemoteFile(f"file://{padded}").open_rgb(32)
    member = RemoteTarMember(f"file://{padded}", "padded.jpg", 0, padded.stat().st_size)
    with pytest.raises(BadImageError, match=r"^image 'file://.*padded\.jpg#padded\.jpg' is 20,97"):
        member.read()
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(jpeg(1))
    assert RemoteFile(f"file://{whole}").read() == whole.read_bytes()
    assert RemoteTarMember(f"file://{whole}", "w.jpg", 2, 10).read() == whole.read_bytes()[2:12]


# ------------------------------------------------------------------ 8. inputs expanded once
def test_the_cli_expands_the_inputs_once_as_the_library_does(model_path, model, tmp_path, photos):
    rows = tmp_path / "rows.csv"
    rows.write_text(f"image_path\n{photos}\n")  # a row naming a folder
    with pytest.raises(BadImageError, match="is a folder"):
        embed_images(model, rows, workers=0)
    line = user_error("embed", model_path, "--images", rows, "--out", tmp_path / "o.npy", "--workers", "0",
                      "--no-progress")
    assert f"image {str(photos)!r} is a folder" in line and not (tmp_path / "o.npy").exists()
    caps = tmp_path / "caps.txt"
    caps.write_text("one caption\n")
    line = user_error("embed", model_path, "--images", rows, "--texts", caps, "--format", "clip-retrieval", "--out",
                      tmp_path / "cr", "--workers", "0", "--no-progress")
    assert "is a folder" in line and "pair" not in line


# ------------------------------------------------------------------ 9. a killed run's temporary file
def test_a_killed_runs_temporary_file_is_removed_by_the_next_run(model, tmp_path, photos):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "e.npy"
    stale = [tmp_path / f".e.npy.tmp-{dead.pid}", tmp_path / f".e.npy.tmp-{dead.pid}-trim"]
    kept = [tmp_path / f".e.npy.tmp-{os.getppid()}", tmp_path / f".other.npy.tmp-{dead.pid}",
            tmp_path / f"e.npy.tmp-{dead.pid}"]
    for p in stale + kept:
        p.write_bytes(b"x" * 1000)
    embed_to_file(model, out, images=[photos], workers=0)
    assert [p.exists() for p in stale] == [False, False] and all(p.exists() for p in kept)


# ------------------------------------------------------------------ 10. the pair written together
def test_a_sidecar_place_taken_by_a_folder_fails_before_the_npy_is_replaced(model, tmp_path, photos):
    out = tmp_path / "x.npy"
    np.save(out, np.zeros((1, 2), np.float32))
    before = out.read_bytes()
    (tmp_path / "x.json").mkdir()
    with pytest.raises(ClipzooError, match=r"^sidecar '.*x\.json' is a folder; choose another output name than "
                                           r"'.*x\.npy' \(its sidecar takes the name with \.json\)$"):
        embed_to_file(model, out, images=[photos], workers=0)
    assert out.read_bytes() == before


# ------------------------------------------------------------------ the minor ones
def test_the_api_refuses_what_the_cli_refuses(model, tmp_path, photos):
    with pytest.raises(BadOptionError, match=r"^batch size must be at least 1, got 0$"):
        embed_to_file(model, tmp_path / "b.npy", images=[photos], batch_size=0)
    with pytest.raises(BadTextError) as empty:
        embed_texts(model, [])
    with pytest.raises(BadTextError, match=f"^{empty.value}$"):
        embed_to_file(model, tmp_path / "t.npy", texts=[])
    assert not (tmp_path / "t.npy").exists()
    with pytest.raises(BadOptionError, match=r"^workers must be None or a whole number of 0 or more, got -1$"):
        embed_images(model, photos, workers=-1)


def test_a_lone_carriage_return_stays_inside_its_text(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(b"a cat\rsitting\nsecond\r\n\r\nthird")
    assert read_texts(f) == ["a cat\rsitting", "second", "third"]


def test_folders_expand_as_the_index_walks_them(tmp_path, photos):
    (photos / ".cache").mkdir()
    (photos / ".cache" / "thumb.jpg").write_bytes(jpeg(5))
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg(6))
    (photos / "out_link.jpg").symlink_to(outside)
    (photos / "in_link.jpg").symlink_to(photos / "0.jpg")
    got = expand_files(photos, (".jpg",), BadImageError, "image")
    assert got == sorted(str(photos / n) for n in ("0.jpg", "1.jpg", "2.jpg", "in_link.jpg"))


def test_the_sidecar_of_the_cli_is_valid_and_names_the_truncation(model_path, tmp_path):
    whole = tmp_path / "s.tar"
    second = write_tar(whole, [(64, 48)] * 2)[1]
    whole.write_bytes(whole.read_bytes()[:second.offset_data + 10])
    result = cli("embed", model_path, "--images", whole, "--out", tmp_path / "s.npy", "--skip-bad", "--workers", "0",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "s.json").read_text())
    assert side["inputs"] == [f"{whole}#0000.jpg"] and [s["input"] for s in side["skipped"]] == [str(whole)]
