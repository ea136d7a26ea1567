"""Issue 20 §3: video as a modality — PyAV decoding, uniform sampling, bounds and one-line errors, and
``encode_video`` on any image–text model (the mean of the frames' normalised features, renormalised)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clipzoo
from _video_common import make_video, segment_colours, shape_frames
from clipzoo import constants
from clipzoo.modalities import VIDEO, get_modality
from clipzoo.video import (
    BadVideoError,
    load_segments,
    load_video,
    probe,
    read_frames,
    uniform_indices,
    video_items,
)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {suffix: make_video(folder / f"clip{suffix}", count=16) for suffix in (".mp4", ".webm", ".mkv", ".avi")}


@pytest.fixture(scope="module")
def model():
    return clipzoo.load("clipzoo/tiny-shapes")


def _frame_number(frame) -> int:
    """The frame number shape_frames drew as a grey bar (value 17 * t for 16 frames)."""
    return int(round(np.asarray(frame)[-3:, :, 0].mean() / 17))


def test_issue20_video_modality_object():
    assert get_modality("video") is VIDEO and get_modality("Video") is VIDEO
    assert VIDEO == "video" and VIDEO.encoder == "encode_video"
    assert constants.DEFAULT_VIDEO_FRAMES == 8


def test_issue20_uniform_sampling_indices():
    assert uniform_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert uniform_indices(10, 4) == [1, 3, 6, 8]
    assert uniform_indices(3, 6) == [0, 0, 1, 1, 2, 2]          # exact: frames repeat
    assert uniform_indices(3, 6, exact=False) == [0, 1, 2]      # averaging: every frame once


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv", ".avi"])
def test_issue20_decode_formats(videos, suffix):
    info = probe(videos[suffix])
    assert (info.frames, info.fps, info.duration, info.width, info.height) == (16, 8.0, 2.0, 48, 48)
    frames = load_video(videos[suffix], 8)
    assert [_frame_number(f) for f in frames] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert frames[0].size == (48, 48) and frames[0].mode == "RGB"


def test_issue20_segments_start_times(tmp_path):
    path = segment_colours(tmp_path / "three.mp4", ["red", "green", "blue"], per_segment=8, fps=8)  # 3 x 1 s
    info, whole, segments = load_segments(path, 1.0, num_frames=4)
    assert info.duration == 3.0 and len(whole) == 4
    assert [s for s, _ in segments] == [0.0, 1.0, 2.0]
    for (_, frames), channel in zip(segments, (0, 1, 2)):  # the square's colour dominates its own channel
        square = np.asarray(frames[0])[12:28].reshape(-1, 3).astype(int)
        assert square.max(axis=0).argmax() == channel


def test_segments_are_handed_over_as_they_are_decoded(tmp_path, monkeypatch):
    """load_segments held every segment's frames at once (a 60 s 720p video in 1 s segments: 480 frames, 1.8 GB):
    stream_segments hands each segment over once its last frame is decoded, with the same frames."""
    from clipzoo import video

    path = segment_colours(tmp_path / "six.mp4", ["red", "green", "blue"] * 2, per_segment=8, fps=8)  # 6 x 1 s
    _, whole, segments = load_segments(path, 1.0, num_frames=2)
    assert [s for s, _ in segments] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    expected = read_frames(path, [2, 10, 18, 26, 34, 42])  # each second's first of 2 sampled frames (2 and 6)
    assert [np.asarray(f).tolist() for _, fr in segments for f in fr[:1]] == [np.asarray(f).tolist() for f in expected]
    events, real = [], video._decoded

    def logged(p, wanted):
        for i, frame in real(p, wanted):
            events.append(("decoded", i))
            yield i, frame

    monkeypatch.setattr(video, "_decoded", logged)
    info, again = video.stream_segments(path, 1.0, 2, True, lambda start, fr: events.append(("segment", start)))
    assert [np.asarray(f).tolist() for f in again] == [np.asarray(f).tolist() for f in whole]
    for k in range(5):  # segment k is out before any frame after segment k + 1's first is decoded
        before = [e[1] for e in events[:events.index(("segment", float(k)))] if e[0] == "decoded"]
        assert max(before) == 8 * (k + 1) + 2, (k, before)
    events.clear()
    video.stream_segments(path, 10.0, 2, True, lambda start, fr: events.append(("segment", start)), min_segments=2)
    assert ("segment", 0.0) not in events  # one segment is the whole video: none


def test_issue20_video_items_forms():
    frames = shape_frames(3, 32)
    assert video_items("a.mp4") == ["a.mp4"]
    assert len(video_items(frames)) == 1 and len(video_items(frames)[0]) == 3
    assert len(video_items([frames, frames, "b.webm"])) == 3
    assert len(video_items(np.stack(frames))[0]) == 3
    with pytest.raises(BadVideoError, match="no video given"):
        video_items([])
    with pytest.raises(BadVideoError, match="video 1 is a int"):
        video_items(["a.mp4", 3])


def test_issue20_corrupt_and_unsupported_errors(tmp_path, videos):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    with pytest.raises(BadVideoError, match=r"^video '.*junk\.mp4' cannot be decoded \(.*\); pass a valid mp4"):
        probe(junk)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(videos[".mp4"].read_bytes()[:300])
    with pytest.raises(BadVideoError, match="cut.mp4"):
        load_video(truncated)
    with pytest.raises(BadVideoError, match=r"video '.*missing\.mp4' does not exist; check the path"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(BadVideoError, match="is a folder"):
        probe(tmp_path)
    for exc in (BadVideoError("x"),):
        assert isinstance(exc, clipzoo.errors.ClipzooError)


def test_issue20_decode_bounds(monkeypatch, videos):
    import clipzoo.video as video

    monkeypatch.setattr(video, "MAX_VIDEO_FRAMES", 10)
    with pytest.raises(BadVideoError, match="has more than 10 frames; cut it into shorter files"):
        probe(videos[".mp4"])
    monkeypatch.setattr(video, "MAX_VIDEO_FRAMES", 1000)
    monkeypatch.setattr(video, "MAX_VIDEO_PIXELS", 1000)
    with pytest.raises(BadVideoError, match="has 48x48 frames, more than 1,000 pixels"):
        probe(videos[".webm"])
    monkeypatch.setattr(video, "MAX_VIDEO_PIXELS", 10**8)
    monkeypatch.setattr(video, "MAX_VIDEO_SECONDS", 1.0)
    with pytest.raises(BadVideoError, match="lasts 2 s, more than 1 s"):
        probe(videos[".mkv"])


def test_issue20_encode_video_frame_average(model, videos, monkeypatch):
    """Any image–text model: N uniform frames (default 8), encoded, their normalised features averaged and
    renormalised (``normalize=False``: the plain mean of the normalised frame features)."""
    feats = model.encode_video([videos[".mp4"], videos[".webm"]], num_frames=4)
    assert feats.shape == (2, model.embed_dim)
    frames = read_frames(videos[".mp4"], uniform_indices(16, 4))
    per_frame = F.normalize(model.encode_image(frames, normalize=False), dim=-1)
    assert torch.allclose(feats[0], F.normalize(per_frame.mean(0), dim=-1), atol=1e-5)
    raw = model.encode(VIDEO, videos[".mp4"], normalize=False, num_frames=4)  # through the modality's encoder
    assert torch.allclose(raw[0], per_frame.mean(0), atol=1e-5)
    few = shape_frames(3, 40)  # fewer frames than asked: each once
    direct = F.normalize(F.normalize(model.encode_image(few), dim=-1).mean(0), dim=-1)
    assert torch.allclose(model.encode_video(few)[0], direct, atol=1e-5)
    seen = []
    encode_image = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x, **kw: (seen.append(len(x)), encode_image(x, **kw))[1])
    model.encode_video(videos[".mp4"])
    assert seen == [constants.DEFAULT_VIDEO_FRAMES]


def test_issue20_encode_video_ranks_matching_colour(model, tmp_path):
    """Zero-shot over videos with the frame-average: the tiny shapes model names each square's colour."""
    paths = [make_video(tmp_path / f"{c}.mp4", count=8, size=64, colour=c) for c in ("red", "green", "blue")]
    video_feats = model.encode_video(paths)
    text_feats = model.encode_text([f"a {c} square" for c in ("red", "green", "blue")])
    image_feats = model.encode_image([shape_frames(8, 64, c)[4] for c in ("red", "green", "blue")])
    agree = (video_feats @ text_feats.T).argmax(1).tolist() == (image_feats @ text_feats.T).argmax(1).tolist()
    assert agree
    assert torch.allclose(video_feats.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_issue20_missing_pyav_is_one_line(monkeypatch, videos):
    """Without PyAV, a video file is one line naming the extra; frame lists still work (no decoding needed)."""
    import sys

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(clipzoo.errors.MissingExtraError,
                       match=r"^video files needs av, which is not installed; .*clipzoo\[video\]"):
        probe(videos[".mp4"])
    assert len(load_video(shape_frames(5, 32), 3)) == 3


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_issue20_video_modality_read_write_disk(tmp_path, suffix):
    """mmc's Modality read/write for video: frames -> a file (codec by suffix) -> the same frames back."""
    frames = shape_frames(6, 48, "blue")
    path = VIDEO.write_to_disk(tmp_path / f"out{suffix}", frames)
    back = VIDEO.read_from_disk(path)
    assert len(back) == 6 and back[0].size == (48, 48)
    assert [_frame_number_of(f, 6) for f in back] == list(range(6))
    assert np.abs(np.asarray(back[3]).astype(int) - frames[3].astype(int)).mean() < 6
    with pytest.raises(BadVideoError, match=r"cannot write a video to .*out\.gif'; use one of \.mp4"):
        VIDEO.write_to_disk(tmp_path / "out.gif", frames)
    with pytest.raises(BadVideoError, match="does not exist"):
        VIDEO.read_from_disk(tmp_path / "none.mp4")


def _frame_number_of(frame, count: int) -> int:
    return int(round(np.asarray(frame)[-3:, :, 0].mean() * (count - 1) / 255))
