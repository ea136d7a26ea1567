"""build_folder_once: the cache folders (ONNX exports, int8 models, remote listings) built by one process or
thread while others may build the same one — a complete folder is never removed, a failed build leaves nothing."""
from __future__ import annotations

import os
import threading

import pytest

from clipzoo import files
from clipzoo.files import build_folder_once


def _writer(text: str):
    def build(tmp):
        tmp.mkdir()
        (tmp / "data.txt").write_text(text)
        (tmp / "done.json").write_text("{}")
    return build


def test_builds_the_folder_and_leaves_no_temporary(tmp_path):
    out = build_folder_once(tmp_path / "cache" / "m", _writer("ours"), "done.json")
    assert out == tmp_path / "cache" / "m" and (out / "data.txt").read_text() == "ours"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m"]


def test_another_build_finished_first_is_kept(tmp_path):
    theirs = tmp_path / "m"

    def build(tmp):  # the other process completes the folder while ours builds
        _writer("theirs")(theirs)
        _writer("ours")(tmp)

    build_folder_once(theirs, build, "done.json")
    assert (theirs / "data.txt").read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_another_build_renamed_between_our_check_and_our_rename_is_kept(tmp_path, monkeypatch):
    """The race the check alone cannot close: their rename lands after we saw no marker. Ours fails to rename
    over their non-empty folder; theirs stays, with its readers' files, and ours is dropped without an error."""
    folder, real_replace, inodes = tmp_path / "m", os.replace, {}

    def replace(src, dst):
        if os.path.basename(src).startswith("m.tmp-") and not folder.exists():
            _writer("theirs")(folder)
            inodes["theirs"] = (folder / "data.txt").stat().st_ino
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    build_folder_once(folder, _writer("ours"), "done.json")
    assert (folder / "data.txt").read_text() == "theirs"
    assert (folder / "data.txt").stat().st_ino == inodes["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_incomplete_folder_is_replaced(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "half.bin").write_bytes(b"\0" * 10)  # no marker: a build that never finished
    build_folder_once(folder, _writer("ours"), "done.json")
    assert sorted(p.name for p in folder.iterdir()) == ["data.txt", "done.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(tmp):
        tmp.mkdir()
        (tmp / "data.txt").write_text("half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="^export failed$"):
        build_folder_once(tmp_path / "m", build, "done.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stale", [False, True])
def test_threads_building_one_folder_all_get_a_complete_one(tmp_path, stale):
    """Four at once, into an empty place or over an incomplete folder (which each of them may try to move aside)."""
    folder, barrier, errors, seen = tmp_path / "m", threading.Barrier(4), [], []
    if stale:
        folder.mkdir()
        (folder / "half.bin").write_bytes(b"\0")

    def build(tmp):
        barrier.wait(timeout=10)  # all four build at once, each into its own temporary folder
        _writer("x")(tmp)

    def worker():
        try:
            out = build_folder_once(folder, build, "done.json")
            seen.append((out / "data.txt").read_text())
        except Exception as exc:  # pragma: no cover - the failure this test is for
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and seen == ["x"] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
