"""Probe "scale": the Ray engine, merge_parts, the Milvus store and video segments, where a user's data was at
stake. `--engine ray` refuses an output whose sidecar is an input (it overwrote the texts file); a resumed run keeps
a shard only for the same inputs in the same order and the same weights (reordered texts, or new weights at the
same path, were mixed in silently); a part cut short or unreadable is refused by `merge_parts` in one line and
redone by the Ray engine (it was merged out of step, or a traceback every rerun); a Milvus Lite file open in
another process (`clipzoo serve`) is said in one line before any work, never called corrupt; a Milvus sync stopped
midway never leaves the published rows short, and `index verify` compares the row count; `--images URL` on the
local engine names `--engine ray`; a tiny video with a very low frame rate gets no more segments than frames.

Ray runs in one module-scoped local session (2 CPUs, its own temporary folder), shut down at the end."""
from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _photo_folders import photo_folder, png
from _video_common import shape_frames
from clipzoo.api import load
from clipzoo.cli import app
from clipzoo.embed import embed_to_file, load_embeddings, merge_parts, part_name, parts_dir, sidecar_path
from clipzoo.errors import ClipzooError
from clipzoo.testing.tiny import write_open_clip_safetensors

MODEL = "clipzoo/tiny-shapes"
ENV = {"COLUMNS": "250", "NO_COLOR": "1"}
TEXTS = [f"a {c} {s} on a plain background" for c in ("red", "green", "blue", "white") for s in ("circle", "square")]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    temp = tempfile.mkdtemp(prefix="czray")  # short: Ray's socket paths live under it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def model():
    return load(MODEL)


def _options(rows: int):
    from clipzoo.embed.ray_engine import RayOptions

    return RayOptions(num_workers=1, batch_size=rows, shard_rows=rows)


def _texts_on_ray(model, out, texts, rows: int, loader=None):
    from clipzoo.embed.ray_engine import embed_texts_with_ray

    return embed_texts_with_ray(model, loader or functools.partial(load, MODEL), out, texts, options=_options(rows))


def _one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ------------------------------------------------------------------ 1. an input overwritten by the sidecar
def test_engine_ray_refuses_an_output_whose_sidecar_is_an_input_as_the_local_engine_does(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    Path("caps.json").write_text("a red circle\na blue square\n")
    common = ["embed", MODEL, "--texts", "caps.json", "--out", "caps", "--no-progress"]
    local = CliRunner().invoke(app, common, env=ENV)
    ray_run = CliRunner().invoke(app, [*common, "--engine", "ray", "--num-workers", "1"], env=ENV)
    message = ("error: sidecar 'caps.json' is the input 'caps.json': writing there would destroy it; choose another "
               "output name than 'caps.npy' (its sidecar takes the name with .json)")
    assert local.exit_code == ray_run.exit_code == 2
    assert _one_line(local) == _one_line(ray_run) == message
    assert Path("caps.json").read_text() == "a red circle\na blue square\n" and not Path("caps.npy").exists()
    # the audio path too, before the model loads (an image model here: the check comes first)
    import soundfile as sf

    Path("clips").mkdir()
    sf.write("clips/a.wav", np.zeros(4000), 16000)
    Path("taken.npy").mkdir()
    common = ["embed", MODEL, "--audio", "clips", "--out", "taken.npy", "--no-progress"]
    local = CliRunner().invoke(app, common, env=ENV)
    ray_run = CliRunner().invoke(app, [*common, "--engine", "ray", "--num-workers", "1"], env=ENV)
    assert local.exit_code == ray_run.exit_code == 2 and _one_line(local) == _one_line(ray_run)
    assert _one_line(ray_run).startswith("error: output 'taken.npy' is a folder")


# ------------------------------------------------------------------ 2.-4. what a resumed Ray run keeps
def test_resumed_ray_run_redoes_a_shard_whose_inputs_were_reordered(local_ray, model, tmp_path):
    out = tmp_path / "t.npy"
    first = _texts_on_ray(model, out, TEXTS[:6], rows=4)
    assert first["ray"] == {"shards": 2, "skipped_shards": 0, "embedded_shards": 2}
    swapped = [TEXTS[1], TEXTS[0], *TEXTS[2:6]]  # the user fixes the order of the first two lines
    again = _texts_on_ray(model, out, swapped, rows=4)
    assert again["ray"] == {"shards": 2, "skipped_shards": 1, "embedded_shards": 1}
    ours = load_embeddings(out)
    assert ours.inputs == swapped
    embed_to_file(model, tmp_path / "local.npy", texts=swapped)
    assert float(np.abs(ours.features - np.load(tmp_path / "local.npy")).max()) <= 1e-6


def test_resumed_ray_run_redoes_every_shard_when_the_weights_at_the_same_path_changed(local_ray, tmp_path):
    checkpoint = write_open_clip_safetensors(tmp_path / "model.safetensors", seed=0, embed_config=True)
    out, texts = tmp_path / "t.npy", TEXTS[:4]
    old = load(str(checkpoint), device="cpu")
    loader = functools.partial(load, str(checkpoint), device="cpu")
    _texts_on_ray(old, out, texts, rows=2, loader=loader)
    sidecar_path(parts_dir(out) / part_name(1, 2)).unlink()  # the run was stopped before shard 1's record
    write_open_clip_safetensors(checkpoint, seed=1, embed_config=True)  # retrained: other weights, same path
    new = load(str(checkpoint), device="cpu")
    assert new.card.alias == old.card.alias
    again = _texts_on_ray(new, out, texts, rows=2, loader=loader)
    assert again["ray"] == {"shards": 2, "skipped_shards": 0, "embedded_shards": 2}
    reference = new.encode_text(texts).float().numpy()
    assert float(np.abs(np.load(out) - reference).max()) <= 1e-6  # every row from the current weights


def _tamper(part: Path, how: str) -> None:
    rows = np.load(part)
    if how == "fewer_rows":
        np.save(part, rows[:-1])
    elif how == "truncated":
        part.write_bytes(part.read_bytes()[:200])
    elif how == "not_npy":
        part.write_text("not an array\n")
    elif how == "one_d":
        np.save(part, rows[:, 0])
    elif how == "narrow":
        np.save(part, rows[:, :-1])


TAMPERED = {
    "fewer_rows": "holds 3 rows but its record part-00000-of-00004.json counts 4 and lists 4 inputs (cut short, or "
                  "copied in part?)",
    "truncated": "is not a readable .npy file (",
    "not_npy": "is not a readable .npy file (",
    "one_d": "holds a 1-D array of shape (4,), not rows of embeddings",
    "narrow": "holds rows 63 wide but its record part-00000-of-00004.json says 64",
}


def test_bad_parts_are_refused_by_merge_parts_and_redone_by_the_ray_engine(local_ray, model, tmp_path):
    from clipzoo.embed.ray_engine import finished_shards, shard_plan

    out = tmp_path / "t.npy"
    texts = TEXTS + TEXTS[:6]  # 14 texts: shards of 4, 4, 4, 2
    _texts_on_ray(model, out, texts, rows=4)
    reference = np.load(out)
    folder = parts_dir(out)
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    part0 = folder / part_name(0, 4)
    for how, what in TAMPERED.items():
        _tamper(part0, how)
        with pytest.raises(ClipzooError) as info:
            merge_parts(out, 4)
        message = str(info.value)
        assert message.startswith(f"cannot merge {out}: part {str(part0)!r} {what}") and "\n" not in message, how
        assert message.endswith("; copy that part again from the machine that wrote it, or rerun the run that "
                                "wrote it (--engine ray redoes such a shard)")
        from clipzoo.embed.ray_engine import weights_of

        plan = shard_plan(len(texts), 4)  # the engine leaves that shard out: a rerun redoes it
        assert finished_shards(out, texts, plan, model.card.alias, True, weights_of(model)) == {1, 2, 3}, how
        part0.write_bytes(saved[part0.name])
    sidecar_path(part0).write_text("{not json")
    with pytest.raises(ClipzooError, match=r"^cannot merge .*: part record '.*part-00000-of-00004.json' is unreadable "
                                           r"\(JSONDecodeError: "):
        merge_parts(out, 4)
    sidecar_path(part0).write_bytes(saved[sidecar_path(part0).name])
    # three parts broken at once: the rerun redoes those three shards and keeps the good one
    for i, how in enumerate(("fewer_rows", "truncated", "one_d")):
        _tamper(folder / part_name(i, 4), how)
    again = _texts_on_ray(model, out, texts, rows=4)
    assert again["ray"] == {"shards": 4, "skipped_shards": 1, "embedded_shards": 3}
    assert again["inputs"] == texts and float(np.abs(np.load(out) - reference).max()) <= 1e-6
    # merge_parts checks the output places before the .npy is committed: a folder at the sidecar's place
    out.unlink()
    sidecar_path(out).unlink()
    sidecar_path(out).mkdir()
    with pytest.raises(ClipzooError, match="is a folder"):
        merge_parts(out, 4)
    assert not out.exists()


# ------------------------------------------------------------------ 5.-6. Milvus Lite
def _milvus_index(root: Path, n: int = 10) -> tuple[Path, Path]:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from clipzoo.index import build_index

    folder = photo_folder(root / "photos", n)
    index = root / "photos.index"
    build_index(folder, index, model=MODEL, workers=0, vector_options={"vector_store": "milvus"})
    return folder, index


def _release(db: Path) -> None:
    """This process lets go of the Milvus Lite database, as a finished build process does."""
    from milvus_lite.server_manager import server_manager_instance

    from clipzoo.index.stores import milvus as milvus_store

    client = milvus_store._CLIENTS.pop(str(db), None)
    if client is not None:
        client.close()
    server_manager_instance.release_server(str(db))


def _items(index: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(index / "index.sqlite")
    try:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]
    finally:
        conn.close()


def test_a_milvus_lite_file_open_in_another_process_is_one_line_before_any_work(tmp_path):
    folder, index = _milvus_index(tmp_path)
    db = index / "index.milvus.db"
    _release(db)
    holder = subprocess.Popen(  # what a running `clipzoo serve` on the index holds
        [sys.executable, "-c", "import sys, pymilvus; pymilvus.MilvusClient(uri=sys.argv[1]); print('ready', "
                               "flush=True); sys.stdin.read()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        message = (f"error: Milvus Lite database '{db}' is open in another process (a running `clipzoo serve`?): "
                   "Milvus Lite allows one process per .db file; stop that process, or use a Milvus server with "
                   "--uri http://HOST:19530")
        (folder / "a" / "new.png").write_bytes(png(99))
        build = CliRunner().invoke(app, ["index", "build", str(folder), "--model", "no-such-model", "--out",
                                         str(index), "--no-progress"], env=ENV)
        assert build.exit_code == 2 and _one_line(build) == message  # before the model loads
        assert _items(index) == 10  # nothing embedded, nothing committed
        search = CliRunner().invoke(app, ["search", str(index), "red", "-k", "1"], env=ENV)
        assert search.exit_code == 2 and _one_line(search) == message  # not "is corrupt; run repair"
        repair = CliRunner().invoke(app, ["index", "repair", str(index), "--no-progress"], env=ENV)
        assert repair.exit_code == 2 and _one_line(repair) == message
        verify = CliRunner().invoke(app, ["index", "verify", str(index)], env=ENV)
        assert verify.exit_code == 2 and _one_line(verify) == message
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # a --uri that names something else than a Milvus Lite database is named and left as it is
    (tmp_path / "junk.db").write_text("notes\n")
    (tmp_path / "other.db").mkdir()
    (tmp_path / "other.db" / "mine.txt").write_text("mine\n")
    for name, what in (("junk.db", "is a file, not a Milvus Lite database (Milvus Lite keeps its data in a .db "
                                   "folder)"),
                       ("other.db", "is a folder that holds no Milvus Lite database")):
        uri = tmp_path / name
        r = CliRunner().invoke(app, ["index", "build", str(folder), "--model", MODEL, "--out", str(tmp_path / "x"),
                                     "--store", "milvus", "--uri", str(uri), "--no-progress"], env=ENV)
        assert r.exit_code == 2 and _one_line(r) == (f"error: {str(uri)!r} {what}; it was left as it is: pass --uri "
                                                     "with another FILE.db")
    assert (tmp_path / "junk.db").read_text() == "notes\n" and [p.name for p in (tmp_path / "other.db").iterdir()] \
        == ["mine.txt"]


def test_a_milvus_sync_stopped_midway_never_leaves_the_published_rows_short(tmp_path, monkeypatch):
    from clipzoo.index import build_index, open_index
    from clipzoo.index.repair import verify_index
    from clipzoo.index.stores.milvus import MilvusStore

    folder, index = _milvus_index(tmp_path, n=12)
    live = open_index(index)  # a service that opened the published generation
    pointer = index / "vectors" / json.loads((index / "vectors" / "vectors.json").read_text())["all"]["file"]

    def rows() -> int:
        return len(MilvusStore.open(pointer))

    for i in range(4):  # new captions: rows whose metadata changed
        (folder / "ab"[i % 2] / f"{i:03d}.txt").write_text(f"caption {i}")
    (folder / "a" / "010.png").unlink()  # gone
    (folder / "b" / "011.png").unlink()
    for i in (20, 21):  # new
        (folder / "ab"[i % 2] / f"{i:03d}.png").write_bytes(png(i))

    def stop(method):
        original = getattr(MilvusStore, method)

        def stopped(self, *args, **kwargs):
            if not self.fresh and self.synced is None:  # inside the sync
                raise KeyboardInterrupt("stopped during the sync")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(MilvusStore, method, stopped)

    stop("_insert")  # stopped at its first write
    with pytest.raises(KeyboardInterrupt):
        build_index(folder, index, model=MODEL, workers=0)
    assert rows() == 12 and len(live.search_text("a photo", k=50)) == 12
    monkeypatch.undo()
    stop("_delete")  # stopped after the writes, at the deletes
    with pytest.raises(KeyboardInterrupt):
        build_index(folder, index, model=MODEL, workers=0)
    monkeypatch.undo()
    assert rows() == 14 and len(live.search_text("a photo", k=50)) == 12  # extra rows: skipped, none missing
    found = verify_index(index)
    collection = json.loads(pointer.read_text())["collection"]
    assert found.problems == [(str(pointer), f"Milvus collection {collection!r} holds 14 rows, the manifest says 12 "
                                             "(a build or repair stopped during its sync)")]
    r = CliRunner().invoke(app, ["index", "verify", str(index)], env=ENV)
    assert r.exit_code == 2 and "holds 14 rows, the manifest says 12" in r.output
    build_index(folder, index, model=MODEL, workers=0)  # the next build mends it
    assert verify_index(index).ok and _items(index) == 12
    live.close()


# ------------------------------------------------------------------ 7. URLs on the local engine, and the docs
def test_local_engine_says_urls_need_engine_ray(tmp_path):
    (tmp_path / "a.png").write_bytes(png(1))
    url = (tmp_path / "a.png").as_uri()
    r = CliRunner().invoke(app, ["embed", MODEL, "--images", url, "--out", str(tmp_path / "o.npy"),
                                 "--no-progress"], env=ENV)
    assert r.exit_code == 2 and _one_line(r) == (f"error: image input {url!r} is a URL, and the local engine reads "
                                                 "local paths only; pass --engine ray (embed_with_ray) to read fsspec "
                                                 "URLs, or the local path")


def test_scale_doc_lists_only_what_is_not_covered():
    text = (Path(__file__).resolve().parents[1] / "docs" / "scale.md").read_text()
    gaps = text[text.index("## Not covered yet"):]
    assert "Audio on Ray" not in gaps and "A Milvus server or cluster in the tests" not in gaps
    assert "one process per `.db`" in text and "index verify" in text


# ------------------------------------------------------------------ 8. segments of a tiny low-frame-rate video
def test_a_video_gets_no_more_segments_than_frames(tmp_path):
    av = pytest.importorskip("av")
    from clipzoo.index import build_index
    from clipzoo.video import load_segments, probe

    folder = tmp_path / "media"
    folder.mkdir()
    path = folder / "lowfps.mkv"
    with av.open(str(path), "w") as out:  # 4 frames at 1/3000 fps: 12,000 s declared
        stream = out.add_stream("libx264", rate=Fraction(1, 3000))
        stream.width = stream.height = 48
        stream.pix_fmt = "yuv420p"
        for frame in shape_frames(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    info = probe(path)
    assert info.frames == 4 and info.duration >= 11_000
    starts = [start for start, _ in load_segments(path, 60)[2]]
    assert 2 <= len(starts) <= 4 and starts[0] == 0.0 and starts == sorted(set(starts))
    (folder / "red.png").write_bytes(png(3))
    r = CliRunner().invoke(app, ["index", "build", str(folder), "--model", MODEL, "--out", str(tmp_path / "v.index"),
                                 "--video-segments", "60", "--workers", "0", "--runtime", "eager", "--no-progress"],
                           env=ENV)
    assert r.exit_code == 0, r.output
    assert f"indexed 1 image and 1 video ({2 + len(starts)} rows with the videos' segments) in " in r.stderr
    report = build_index(folder, tmp_path / "v.index", model=MODEL, workers=0, video_segments=60)
    assert report.total == 2 + len(starts) and (report.videos, report.video_rows) == (1, 1 + len(starts))
