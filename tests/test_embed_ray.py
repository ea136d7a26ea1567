"""Issue 21 §1, distributed embedding with Ray Data: `clipzoo embed … --engine ray` on a local Ray (started and stopped
here) writes what the local engine writes (same ids in the same order, rows within 1e-6), from a folder, a webdataset
tar and a CSV / parquet table, local or as fsspec URLs (file://, memory://), from texts, and as a clip-retrieval
folder, and audio files with an audio model (CLAP); `clipzoo index build` from a URL folder on Ray; a rerun skips
finished shards; an actor killed mid-run is restarted by Ray and every row is written once;
without Ray, one line names the extra."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import ray
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from clipzoo.api import load
from clipzoo.cards import TEXT
from clipzoo.cli import app
from clipzoo.embed import embed_to_file, load_embeddings, part_name, parts_dir, sidecar_path
from clipzoo.embed.ray_audio import AudioActor, decode_audio_batch
from clipzoo.embed.ray_engine import KILL_ENV, RayOptions, TextActor, collect_shards, embed_with_ray, shard_plan
from clipzoo.embed.sources import expand_image_inputs, table_image_paths
from clipzoo.errors import BadImageError, BadTextError
from clipzoo.index import build_index
from clipzoo.index.embedding_store import EmbeddingStore

MODEL = "clipzoo/tiny-shapes"
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    return load(MODEL)


def _image(rng, size) -> Image.Image:
    im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        x, y = int(rng.integers(0, size[0] - 10)), int(rng.integers(0, size[1] - 10))
        draw.ellipse((x, y, x + int(rng.integers(8, 60)), y + int(rng.integers(8, 60))),
                     fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder (JPEGs large enough for reduced-size decoding, and PNGs), a webdataset tar and a CSV table."""
    root = tmp_path_factory.mktemp("ray_inputs")
    rng = np.random.default_rng(21)
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(24):
        name = f"{i:03d}.{'jpg' if i % 2 else 'png'}"
        _image(rng, (320 + 7 * i, 240)).save(folder / ("sub" if i % 4 == 0 else "") / name)
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for i in range(6):
            path = root / f"t{i}.jpg"
            _image(rng, (200, 160 + i)).save(path)
            tar.add(path, arcname=f"{i:05d}.jpg")
    (root / "table").mkdir()
    for i in range(5):
        _image(rng, (96, 80)).save(root / "table" / f"r{i}.png")
    (root / "table" / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    rows = "".join(f"r{i}.png,shape {i}\n" for i in (3, 1, 4, 0)) + "bad.jpg,broken\nr2.png,shape 2\n"
    (root / "table" / "rows.csv").write_text("image_path,caption\n" + rows)
    return root


def test_table_inputs_list_paths_in_row_order(inputs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_paths = table_image_paths(inputs / "table" / "rows.csv")
    assert [p.rsplit("/", 1)[1] for p in csv_paths] == ["r3.png", "r1.png", "r4.png", "r0.png", "bad.jpg", "r2.png"]
    pq.write_table(pa.table({"caption": ["a", "b"], "path": ["r1.png", "r0.png"]}), inputs / "table" / "rows.parquet")
    assert expand_image_inputs([inputs / "table" / "rows.parquet"]) == csv_paths[1:2] + csv_paths[3:4]
    (inputs / "table" / "rows.parquet").unlink()


def test_engine_ray_cli_matches_local_engine(local_ray, model, inputs, tmp_path):
    given = [str(inputs / "photos"), str(inputs / "shard-000.tar"), str(inputs / "table" / "rows.csv")]
    local = embed_to_file(model, tmp_path / "local.npy", images=given, batch_size=8, workers=0, skip_bad=True)
    result = CliRunner().invoke(app, ["embed", MODEL, "--images", *given, "--out", str(tmp_path / "ray.npy"),
                                      "--engine", "ray", "--num-workers", "1", "--batch-size", "8", "--device", "cpu",
                                      "--runtime", "eager", "--skip-bad", "--no-progress"], env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "35 image embeddings" in result.stderr and "1 shard(s) embedded, 0 already done" in result.stderr
    assert "skipped 1 image(s) that could not be decoded, first: " in result.stderr
    ours = load_embeddings(tmp_path / "ray.npy")
    assert ours.inputs == local["inputs"] and len(ours.inputs) == 35 and len(set(ours.inputs)) == 35
    assert ours.skipped == local["skipped"] and [s["input"].rsplit("/", 1)[1] for s in ours.skipped] == ["bad.jpg"]
    assert ours.inputs[-1].endswith("r2.png") and "#00000.jpg" in ours.inputs[24]
    reference = np.load(tmp_path / "local.npy")
    assert ours.features.shape == reference.shape
    assert float(np.abs(ours.features - reference).max()) <= 1e-6


def test_killed_actor_is_retried_and_rerun_skips_finished_shards(local_ray, model, inputs, tmp_path, monkeypatch):
    folder = inputs / "photos"
    reference = embed_to_file(model, tmp_path / "local.npy", images=[folder], batch_size=4, workers=0)
    out, marker = tmp_path / "ray.npy", tmp_path / "killed"
    options = RayOptions(num_workers=1, batch_size=4, shard_rows=10)  # 24 rows: shards of 10, 10 and 4
    loader = functools.partial(load, MODEL)
    monkeypatch.setenv(KILL_ENV, f"13:{marker}")  # the actor embedding row 13 (shard 1) kills its process once
    first = embed_with_ray(model, loader, out, [folder], options=options)
    assert marker.is_file()  # the actor did die mid-shard
    assert first["ray"] == {"shards": 3, "skipped_shards": 0, "embedded_shards": 3}
    assert first["inputs"] == reference["inputs"] and len(set(first["inputs"])) == 24 == first["count"]
    rows = np.load(out)
    assert float(np.abs(rows - np.load(tmp_path / "local.npy")).max()) <= 1e-6
    monkeypatch.delenv(KILL_ENV)

    parts = [parts_dir(out) / part_name(i, 3) for i in range(3)]
    assert [json.loads(sidecar_path(p).read_text())["part"]["start"] for p in parts] == [0, 10, 20]
    stamps = [p.stat().st_mtime_ns for p in parts]
    again = embed_with_ray(model, loader, out, [folder], options=options)  # every shard done: no Ray work at all
    assert again["ray"] == {"shards": 3, "skipped_shards": 3, "embedded_shards": 0}
    assert [p.stat().st_mtime_ns for p in parts] == stamps

    sidecar_path(parts[1]).unlink()  # as if the run died before shard 1's record was written
    resumed = embed_with_ray(model, loader, out, [folder], options=options)
    assert resumed["ray"] == {"shards": 3, "skipped_shards": 2, "embedded_shards": 1}
    assert [p.stat().st_mtime_ns for p in parts][::2] == stamps[::2] and parts[1].stat().st_mtime_ns != stamps[1]
    assert resumed["inputs"] == reference["inputs"]
    assert float(np.abs(np.load(out) - rows).max()) <= 1e-6


def test_bad_image_stops_the_run_naming_it(local_ray, model, inputs, tmp_path):
    with pytest.raises(BadImageError, match=r"bad\.jpg.*\(to leave such images out: --skip-bad, skip_bad=True\)"):
        embed_with_ray(model, functools.partial(load, MODEL), tmp_path / "x.npy", [inputs / "table" / "rows.csv"],
                       options=RayOptions(num_workers=1, batch_size=2, shard_rows=4))
    assert not (tmp_path / "x.npy").exists()
    assert (parts_dir(tmp_path / "x.npy") / part_name(0, 2)).is_file()  # the shard before it was committed


def test_index_build_engine_ray_matches_local_build(local_ray, inputs, tmp_path, monkeypatch):
    local = build_index(inputs / "photos", tmp_path / "local.index", model=MODEL, batch_size=8, workers=0)
    monkeypatch.setenv(KILL_ENV, f"9:{tmp_path / 'killed'}")  # the Ray actors embed (one dies, and is replaced)
    result = CliRunner().invoke(app, ["index", "build", str(inputs / "photos"), "--model", MODEL, "--out",
                                      str(tmp_path / "ray.index"), "--engine", "ray", "--num-workers", "1",
                                      "--batch-size", "8", "--runtime", "eager", "--no-progress"], env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert local.added == 24 and "indexed 24 images" in result.stderr and "24 added" in result.stderr
    assert (tmp_path / "killed").is_file()
    partitions = same_index_rows(tmp_path / "ray.index", tmp_path / "local.index", fields=slice(1, None), rows=24)
    assert "sub" in partitions  # size, mtime, sha, caption equal


def test_shard_plan_covers_every_row_once():
    assert shard_plan(24, 10) == [(0, 10), (10, 20), (20, 24)]
    assert shard_plan(20, 10) == [(0, 10), (10, 20)] and shard_plan(0, 10) == []


HIDDEN = """
import sys
sys.modules["ray"] = None
from typer.testing import CliRunner
from clipzoo.cli import app
r = CliRunner().invoke(app, sys.argv[1:], env={"COLUMNS": "200", "NO_COLOR": "1"})
print(r.exit_code)
print(r.stderr, end="")
"""


def test_engine_ray_without_ray_names_the_extra(inputs, tmp_path):
    args = ["embed", MODEL, "--images", str(inputs / "photos"), "--out", str(tmp_path / "x.npy"), "--engine", "ray"]
    done = subprocess.run([sys.executable, "-c", HIDDEN, *args], capture_output=True, text=True, timeout=120)
    code, *lines = done.stdout.strip().splitlines()
    assert code == "2"
    assert lines == ["error: --engine ray needs ray, which is not installed; pip install 'clipzoo[ray]'"]
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--engine", "spark"], "error: --engine must be one of local, ray, got 'spark'"),
    (["--address", "auto"], "error: --address and --num-workers are for --engine ray"),
    (["--engine", "ray", "--num-workers", "0"], "error: --num-workers must be at least 1, got 0"),
    (["--engine", "ray", "--texts", "t.txt"],
     "error: pass exactly one of --images PATH… or --texts FILE (both, paired row by row: --format clip-retrieval)"),
    (["--engine", "ray", "--format", "parquet"], "error: --format must be npy or clip-retrieval, got 'parquet'"),
    (["--engine", "ray", "--audio", "a.wav"],
     "error: pass exactly one of --images PATH…, --audio PATH… or --texts FILE"),
    (["--engine", "ray", "--audio", "a.wav", "--format", "clip-retrieval"],
     "error: --format clip-retrieval holds images and texts; embed --audio with --format npy"),
])
def test_engine_options_are_checked_in_one_line(inputs, tmp_path, extra, message):
    args = ["embed", MODEL, "--images", str(inputs / "photos"), "--out", str(tmp_path / "x.npy"), *extra]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [message]


def test_fsspec_urls_as_inputs_match_the_local_engine(local_ray, model, inputs, tmp_path):
    """file:// URLs are read by the Ray tasks through fsspec; memory:// (one process's filesystem) travels as bytes."""
    import fsspec

    mem = fsspec.filesystem("memory")
    photos = sorted(p for p in (inputs / "photos").rglob("*") if p.is_file())
    for p in photos[:6]:
        mem.pipe(f"/ray-test/{p.relative_to(inputs / 'photos')}", p.read_bytes())
    mem.pipe("/ray-test/.hidden.png", photos[0].read_bytes())
    mem.pipe("/ray-test/rows.csv", b"image_path,caption\n" + "".join(
        f"{p.relative_to(inputs / 'photos')},x\n" for p in photos[4:1:-1]).encode())
    given = [(inputs / "photos").as_uri(), (inputs / "shard-000.tar").as_uri(), "memory://ray-test",
             "memory://ray-test/rows.csv"]
    local_inputs = [inputs / "photos", inputs / "shard-000.tar", *photos[:6], *photos[4:1:-1]]
    local = embed_to_file(model, tmp_path / "local.npy", images=local_inputs, batch_size=8, workers=0)
    result = CliRunner().invoke(app, ["embed", MODEL, "--images", *given, "--out", str(tmp_path / "ray.npy"),
                                      "--engine", "ray", "--num-workers", "1", "--batch-size", "8", "--device", "cpu",
                                      "--runtime", "eager", "--no-progress"], env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    ours = load_embeddings(tmp_path / "ray.npy")
    assert len(ours.inputs) == len(local["inputs"]) == 24 + 6 + 6 + 3
    assert ours.inputs[:24] == [p.as_uri() for p in photos]
    assert ours.inputs[24].endswith("shard-000.tar#00000.jpg") and ours.inputs[24].startswith("file://")
    assert ours.inputs[30:36] == [f"memory:///ray-test/{p.relative_to(inputs / 'photos')}" for p in photos[:6]]
    assert ours.inputs[36:] == [f"memory://ray-test/{p.relative_to(inputs / 'photos')}" for p in photos[4:1:-1]]
    assert float(np.abs(ours.features - np.load(tmp_path / "local.npy")).max()) <= 1e-6
    result = CliRunner().invoke(app, ["embed", MODEL, "--images", "memory://ray-test/nothing-here", "--out",
                                      str(tmp_path / "x.npy"), "--engine", "ray"], env=ENV)
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: image 'memory://ray-test/nothing-here' does not exist; check the URL"]


def test_texts_on_ray_match_the_local_engine(local_ray, model, tmp_path):
    texts = [f"a {c} {s} on a plain background" for c in ("red", "green", "blue") for s in ("circle", "square")]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    local = embed_to_file(model, tmp_path / "local.npy", texts=texts)
    result = CliRunner().invoke(app, ["embed", MODEL, "--texts", str(tmp_path / "t.txt"), "--out",
                                      str(tmp_path / "ray.npy"), "--engine", "ray", "--num-workers", "1",
                                      "--batch-size", "4", "--device", "cpu", "--runtime", "eager", "--no-progress"],
                                env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "wrote 6 text embeddings" in result.stderr and "2 shard(s) embedded" not in result.stderr
    ours = load_embeddings(tmp_path / "ray.npy")
    assert ours.inputs == local["inputs"] == texts and ours.modality == "text"
    assert float(np.abs(ours.features - np.load(tmp_path / "local.npy")).max()) <= 1e-6
    with pytest.raises(Exception) as local_error:  # a text over the context: the actor hands the local error back
        embed_to_file(model, tmp_path / "l.npy", texts=["short", "word " * 400])
    actor = TextActor(lambda: model, normalize=True, truncate=False)
    out = actor({"index": np.arange(2), "text": np.asarray(["short", "word " * 400], dtype=object)})
    assert list(out["error"]) == [str(local_error.value)] * 2 and "402 tokens" in out["error"][0]
    with pytest.raises(BadTextError, match="402 tokens"):
        rows = type("Rows", (), {"iter_batches": lambda self, **_: iter([out])})()  # what Ray Data hands the driver
        collect_shards(rows, model, ["short", "word " * 400], [(0, 2)], [0], tmp_path / "t.npy", True, False, False,
                       TEXT)
    out = TextActor(lambda: model, normalize=True, truncate=True)({"index": np.arange(1), "text": ["word " * 400]})
    assert list(out["error"]) == [""] and np.allclose(
        out["features"], model.encode_text(["word " * 400], truncate=True).float().numpy(), atol=1e-6)


def test_clip_retrieval_format_on_ray_matches_the_local_engine(local_ray, inputs, tmp_path):
    import pyarrow.parquet as pq

    images = sorted(str(p) for p in (inputs / "photos").glob("*.png"))[:5]
    (tmp_path / "captions.txt").write_text("".join(f"shape number {i}\n" for i in range(5)))
    common = ["embed", MODEL, "--images", *images, "--texts", str(tmp_path / "captions.txt"), "--format",
              "clip-retrieval", "--device", "cpu", "--runtime", "eager", "--no-progress"]
    done = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "local")], env=ENV)
    assert done.exit_code == 0, (done.output, done.exception)
    done = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--num-workers", "1"],
                              env=ENV)
    assert done.exit_code == 0, (done.output, done.exception)
    assert "in clip-retrieval's layout (1 shard(s)) on Ray" in done.stderr
    for sub in ("img_emb/img_emb_0.npy", "text_emb/text_emb_0.npy"):
        ours, theirs = np.load(tmp_path / "ray" / sub), np.load(tmp_path / "local" / sub)
        assert ours.shape == theirs.shape == (5, ours.shape[1]) and float(np.abs(ours - theirs).max()) <= 1e-6
    meta = [pq.read_table(tmp_path / d / "metadata" / "metadata_0.parquet").to_pylist() for d in ("ray", "local")]
    assert meta[0] == meta[1] and [m["caption"] for m in meta[0]] == [f"shape number {i}" for i in range(5)]
    assert not (tmp_path / "ray" / ".clipzoo-embed").exists()  # the scratch rows go once the folder is written


def test_audio_on_ray_matches_the_local_engine(local_ray, tmp_path):
    """Issue 21 leftover: `clipzoo embed CLAP --audio DIR --engine ray` (decoded in Ray tasks, embedded by CLAP
    actors) gives the local engine's ids in its order and rows within 1e-6; a bad file is the local one-line error."""
    import soundfile as sf

    from clipzoo.testing.tiny_clap import SAMPLE_RATE, tiny_clap

    clap = tiny_clap(tmp_path / "tiny-clap")
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i, n in enumerate((12_000, 32_000, 45_000, 20_000, 8_000, 40_000, 30_000)):
        rate = SAMPLE_RATE if i % 2 else 22_050  # resampled in the tasks, as locally
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(n) / rate) + 0.05 * rng.standard_normal(n)
        sf.write(clips / ("sub" if i % 3 == 0 else "") / f"{i:02d}.{('wav', 'flac')[i % 2]}", wave, rate)
    (clips / "sub" / "broken.wav").write_bytes(b"RIFF not audio at all")
    common = ["embed", str(clap), "--audio", str(clips), "--batch-size", "3", "--device", "cpu", "--no-progress"]
    local = CliRunner().invoke(app, [*common, "--skip-bad", "--out", str(tmp_path / "local.npy")], env=ENV)
    assert local.exit_code == 0, (local.output, local.exception)
    result = CliRunner().invoke(app, [*common, "--skip-bad", "--out", str(tmp_path / "ray.npy"), "--engine", "ray",
                                      "--num-workers", "1"], env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "wrote 7 audio embeddings" in result.stderr and "1 shard(s) embedded, 0 already done" in result.stderr
    ours, theirs = load_embeddings(tmp_path / "ray.npy"), load_embeddings(tmp_path / "local.npy")
    assert ours.inputs == theirs.inputs and len(ours.inputs) == 7 and ours.modality == theirs.modality == "audio"
    assert [s["input"] for s in ours.skipped] == [s["input"] for s in theirs.skipped] == [str(clips / "sub" /
                                                                                              "broken.wav")]
    assert ours.skipped == theirs.skipped
    assert ours.features.shape == theirs.features.shape == (7, ours.features.shape[1])
    assert float(np.abs(ours.features - theirs.features).max()) <= 1e-6
    from clipzoo.embed import embed_audio
    from clipzoo.errors import BadAudioError
    from clipzoo.modalities import AUDIO

    model = load(str(clap))  # a bad file: the local engine's one line, from the rows the tasks and actors give
    with pytest.raises(BadAudioError) as local_error:
        embed_audio(model, [clips], batch_size=3)
    paths = [str(clips / "sub" / "00.wav"), str(clips / "sub" / "broken.wav")]
    decoded = decode_audio_batch({"index": np.arange(2), "path": np.asarray(paths, dtype=object)},
                                 rate=model.sample_rate)
    out = AudioActor(lambda: model, normalize=True)(decoded)
    assert out["error"][0] == "" and "broken.wav" in out["error"][1]
    assert float(np.abs(out["features"][0] - ours.features[ours.inputs.index(paths[0])]).max()) <= 1e-6
    with pytest.raises(BadAudioError) as ray_error:
        rows = type("Rows", (), {"iter_batches": lambda self, **_: iter([out])})()  # what Ray Data hands the driver
        collect_shards(rows, model, paths, [(0, 2)], [0], tmp_path / "a.npy", True, False, False, AUDIO)
    assert str(ray_error.value) == str(local_error.value) and "\n" not in str(ray_error.value)
    assert str(ray_error.value).endswith("(to leave such files out: --skip-bad, skip_bad=True)")


def test_index_build_from_a_url_on_ray_matches_the_local_build(local_ray, inputs, tmp_path):
    """Issue 21 leftover: `clipzoo index build memory://… --engine ray` indexes the URL folder's copy on Ray: the
    rows of a local build of the same files (same relative paths, ids, hashes; vectors within 1e-6)."""
    import fsspec

    mem = fsspec.filesystem("memory")
    photos = sorted(p for p in (inputs / "photos").rglob("*") if p.is_file())[:6]
    for p in photos:
        mem.pipe(f"/ray-index-url/{p.relative_to(inputs / 'photos').as_posix()}", p.read_bytes())
        (tmp_path / "local" / p.relative_to(inputs / "photos")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "local" / p.relative_to(inputs / "photos")).write_bytes(p.read_bytes())
    local = build_index(tmp_path / "local", tmp_path / "local.index", model=MODEL, batch_size=4, workers=0)
    result = CliRunner().invoke(app, ["index", "build", "memory://ray-index-url", "--model", MODEL, "--out",
                                      str(tmp_path / "ray.index"), "--engine", "ray", "--num-workers", "1",
                                      "--batch-size", "4", "--runtime", "eager", "--no-progress"], env=ENV)
    mem.rm("/ray-index-url", recursive=True)
    assert result.exit_code == 0, (result.output, result.exception)
    assert local.added == 6 and "indexed 6 images" in result.stderr and "6 added" in result.stderr
    # id, size, sha, caption equal (mtimes differ: the URL folder is a copy)
    same_index_rows(tmp_path / "ray.index", tmp_path / "local.index", fields=[0, 1, 3, 4], rows=6)


def test_ray_runs_leave_builtins_print_alone(local_ray):
    """Ray Data's progress-bar manager replaces ``builtins.print`` unless told not to; a library must not."""
    import builtins

    assert builtins.print.__module__ == "builtins"  # after the runs above in this module


def same_index_rows(ours_dir, theirs_dir, fields, rows: int) -> dict:
    """Assert two indices hold the same files (the ``files()`` row fields named by ``fields``: a slice or
    positions), the same partitions and vectors within 1e-6; return the partitions."""
    ours, theirs = EmbeddingStore(ours_dir), EmbeddingStore(theirs_dir)
    try:
        mine, ref = ours.files(), theirs.files()
        pick = (lambda v: tuple(v[fields])) if isinstance(fields, slice) else (lambda v: tuple(v[i] for i in fields))
        assert {k: pick(v) for k, v in mine.items()} == {k: pick(v) for k, v in ref.items()} and len(mine) == rows
        assert ours.partitions() == theirs.partitions()
        a = ours.vectors([mine[k][0] for k in sorted(mine)])
        b = theirs.vectors([ref[k][0] for k in sorted(ref)])
        assert float(np.abs(a - b).max()) <= 1e-6
        return ours.partitions()
    finally:
        ours.close()
        theirs.close()
