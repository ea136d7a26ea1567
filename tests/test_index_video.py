"""Issue 20 §3, video search: ``clipzoo index build`` indexes videos (one row per video, plus per-segment rows
with their start time via ``--video-segments``), corrupt or unsupported videos are skipped and counted, ``/search``
returns video rows with a ``timestamp``, ``/thumb`` is the poster frame there and ``/video`` serves the file;
bad uploads are 4xx."""
from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from _serve_common import NEEDS_CHROMIUM, browser  # noqa: F401  (fixture)
from _video_common import make_video, segment_colours
from clipzoo.cli import app as cli_app
from clipzoo.index import build_index
from clipzoo.index.search import open_index
from clipzoo.index.videos import split_key

pytest.importorskip("fastapi")
MODEL = "clipzoo/tiny-shapes"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    segment_colours(root / "rgb.mp4", ["red", "green", "blue"], per_segment=8, size=64)  # 3 segments of 1 s
    (root / "clips").mkdir()
    make_video(root / "clips" / "green.webm", count=8, size=64, colour="green")  # 1 s: one row only
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 200)
    (root / "notes.avi").write_text("not a video")
    Image.new("RGB", (48, 48), (230, 30, 30)).save(root / "red.png")
    return root


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "media.index"
    res = CliRunner().invoke(cli_app, ["index", "build", str(folder), "--model", MODEL, "--out", str(out),
                                       "--video-segments", "1", "--workers", "0", "--runtime", "eager",
                                       "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.output[res.output.index("{"):])


def test_issue20_index_build_video_rows_and_segments(built):
    out, report = built
    assert report["added"] == 3  # red.png, rgb.mp4, clips/green.webm
    assert report["total"] == 1 + (1 + 3) + 1  # the image; rgb: whole + 3 segments; green: whole only
    skipped = {p.rsplit("/", 1)[-1]: reason for p, reason in report["skipped"]}
    assert set(skipped) == {"broken.mp4", "notes.avi"}
    assert skipped["broken.mp4"].startswith("video '") and "cannot be decoded" in skipped["broken.mp4"]
    idx = open_index(out)
    rows = sorted((h.relpath, h.timestamp) for h in idx.search_text("a square", k=10))
    assert rows == [("clips/green.webm", 0.0), ("red.png", None), ("rgb.mp4", 0.0), ("rgb.mp4", 0.0),
                    ("rgb.mp4", 1.0), ("rgb.mp4", 2.0)]


def test_issue20_segment_rows_find_their_colour(built):
    """Each 1 s segment of rgb.mp4 shows one colour: a text query for that colour ranks its segment first."""
    idx = open_index(built[0])
    for colour, start in (("red", 0.0), ("green", 1.0), ("blue", 2.0)):
        best = next(h for h in idx.search_text(f"a {colour} square", k=10) if h.relpath == "rgb.mp4")
        assert best.timestamp == start, colour


def test_issue20_split_key():
    assert split_key("a/b.mp4#t=2.5") == ("a/b.mp4", 2.5)
    assert split_key("a/b.webm") == ("a/b.webm", 0.0)
    assert split_key("a/b.png") == ("a/b.png", None)
    assert split_key("odd#t=3.png") == ("odd#t=3.png", None)


def test_issue20_index_rerun_incremental(folder, tmp_path):
    root = tmp_path / "media"
    shutil.copytree(folder, root)
    out = tmp_path / "i"
    first = build_index(root, out, model=MODEL, workers=0, video_segments=1.0)
    again = build_index(root, out, workers=0, video_segments=1.0)
    assert (again.added, again.updated, again.removed, again.unchanged, again.total) == (0, 0, 0, 3, first.total)
    assert len(again.skipped) == 2
    whole_only = build_index(root, out, workers=0, video_segments=None)  # another setting: videos again
    assert (whole_only.updated, whole_only.unchanged, whole_only.total) == (2, 1, 3)
    (root / "rgb.mp4").unlink()
    gone = build_index(root, out, workers=0)
    assert gone.removed == 1 and gone.total == 2


def test_issue20_service_video_hits(built, folder):
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(built[0])) as client:
        r = client.post("/search", json={"text": "a blue square", "k": 10})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        videos = [h for h in hits if h.get("video")]
        images = [h for h in hits if not h.get("video")]
        assert {h["timestamp"] for h in videos} == {0.0, 1.0, 2.0}
        assert all(h["video"] == f"video/{h['id']}" and h["thumb"] == f"thumb/{h['id']}" for h in videos)
        assert [h.get("timestamp") for h in images] == [None]
        seg = next(h for h in videos if h["timestamp"] == 2.0)
        poster = client.get(seg["thumb"])
        assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
        pixels = Image.open(io.BytesIO(poster.content)).convert("RGB")
        square = [pixels.getpixel((x, 25)) for x in range(pixels.width)]
        assert max(p[2] - p[0] for p in square) > 100  # the 2 s poster shows the blue square
        whole = client.get(f"video/{seg['id']}")
        assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
        assert whole.content == (folder / "rgb.mp4").read_bytes()
        part = client.get(f"video/{seg['id']}", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100
        image_id = images[0]["id"]
        assert client.get(f"video/{image_id}").status_code == 404
        item = client.get(f"items/{seg['id']}").json()
        assert item["relpath"] == "rgb.mp4" and item["timestamp"] == 2.0


def test_issue20_service_rejects_video_and_corrupt_uploads(built, folder):
    from fastapi.testclient import TestClient

    from clipzoo.serve import create_app

    with TestClient(create_app(built[0])) as client:
        as_image = base64.b64encode((folder / "rgb.mp4").read_bytes()).decode()
        r = client.post("/search", json={"image": as_image})
        assert r.status_code == 400 and "image" in r.json()["detail"]
        r = client.post("/search", files={"image": ("clip.webm", (folder / "clips" / "green.webm").read_bytes(),
                                                     "video/webm")})
        assert 400 <= r.status_code < 500
        r = client.post("/search", json={"image": base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()})
        assert r.status_code == 400


@NEEDS_CHROMIUM
def test_issue20_page_shows_poster_and_plays_from_timestamp(built, browser):
    """The search page: a video row is a <video> whose poster is its frame and whose src plays from #t=START."""
    from clipzoo.serve import create_app, running

    with running(create_app(built[0])) as url:
        context = browser.new_context(viewport={"width": 1000, "height": 800})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        page.fill("#query", "a blue square")
        page.press("#query", "Enter")
        page.wait_for_selector("#results .result.video video")
        videos = page.eval_on_selector_all(
            "#results .result.video video", "vs => vs.map(v => ({src: v.getAttribute('src'), poster: v.poster, "
            "start: v.dataset.start, where: v.parentElement.querySelector('.where').textContent}))")
        starts = sorted(float(v["start"]) for v in videos)
        assert starts == [0.0, 0.0, 0.0, 1.0, 2.0]
        for v in videos:
            assert v["src"].startswith("video/") and v["src"].endswith(f"#t={v['start']}")
            assert "/thumb/" in v["poster"]
        assert any("▶ 0:02" in v["where"] for v in videos)
        seg = page.locator("#results .result.video video[data-start='2']").first
        seg.evaluate("v => v.play()")
        page.wait_for_function("v => v.currentTime >= 2.0", arg=seg.element_handle(), timeout=10_000)
        assert page.locator("#results img").count() == 1  # the one image row stays an <img>
        assert not errors, errors
        context.close()


def test_issue20_repair_reembeds_lost_video_rows(folder, tmp_path):
    """Lost vectors of video and segment rows are embedded again by `clipzoo index repair` (same ids, same
    vectors), not dropped as missing files."""
    import numpy as np

    root = tmp_path / "media"
    shutil.copytree(folder, root)
    out = tmp_path / "i"
    build_index(root, out, model=MODEL, workers=0, video_segments=1.0)
    with open_index(out) as idx:
        before = {i: idx.embedding(i) for i in sorted(idx.store.all_vectors()[0].tolist())}
    for shard in (out / "shards").glob("*.npy"):
        shard.unlink()
    r = CliRunner().invoke(cli_app, ["index", "repair", str(out), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (report["removed"], report["count"]) == (0, 6)
    with open_index(out) as idx:
        after = {i: idx.embedding(i) for i in sorted(idx.store.all_vectors()[0].tolist())}
        assert set(after) == set(before)
        for i, vec in after.items():
            np.testing.assert_allclose(vec, before[i], atol=1e-5)


def test_issue20_video_segments_must_be_positive(folder, tmp_path):
    res = CliRunner().invoke(cli_app, ["index", "build", str(folder), "--model", MODEL, "--out", str(tmp_path / "x"),
                                       "--video-segments", "-1", "--runtime", "eager", "--no-progress"])
    assert res.exit_code == 2
    assert "--video-segments -1.0 is not a positive number of seconds; pass e.g. 10" in res.output
    assert not (tmp_path / "x").exists()  # nothing left behind
