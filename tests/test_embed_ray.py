"""Issue 21 §1, distributed embedding with Ray Data: `clipzoo embed … --engine ray` on a local Ray (started and stopped
here) writes what the local engine writes (same ids in the same order, rows within 1e-6), from a folder, a webdataset
tar and a CSV / parquet table; a rerun skips finished shards; an actor killed mid-run is restarted by Ray and every
row is written once; without Ray, one line names the extra."""
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
from clipzoo.cli import app
from clipzoo.embed import embed_to_file, load_embeddings, part_name, parts_dir, sidecar_path
from clipzoo.embed.ray_engine import KILL_ENV, RayOptions, embed_with_ray, shard_plan
from clipzoo.embed.sources import expand_image_inputs, table_image_paths
from clipzoo.errors import BadImageError
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
    ours, theirs = EmbeddingStore(tmp_path / "ray.index"), EmbeddingStore(tmp_path / "local.index")
    try:
        mine, ref = ours.files(), theirs.files()
        assert sorted(mine) == sorted(ref) and len(mine) == 24
        assert {k: v[1:] for k, v in mine.items()} == {k: v[1:] for k, v in ref.items()}  # size, mtime, sha, caption
        assert ours.partitions() == theirs.partitions() and "sub" in ours.partitions()
        a = ours.vectors([mine[k][0] for k in sorted(mine)])
        b = theirs.vectors([ref[k][0] for k in sorted(ref)])
        assert float(np.abs(a - b).max()) <= 1e-6
    finally:
        ours.close()
        theirs.close()


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
     "error: --engine ray embeds --images PATH… into --format npy; embed texts and audio with --engine local"),
])
def test_engine_options_are_checked_in_one_line(inputs, tmp_path, extra, message):
    args = ["embed", MODEL, "--images", str(inputs / "photos"), "--out", str(tmp_path / "x.npy"), *extra]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [message]


def test_ray_runs_leave_builtins_print_alone(local_ray):
    """Ray Data's progress-bar manager replaces ``builtins.print`` unless told not to; a library must not."""
    import builtins

    assert builtins.print.__module__ == "builtins"  # after the runs above in this module
