"""Video inputs: decoding with PyAV, uniform frame sampling, segments, and frame-averaged features.

A video *item* is one of:

- a path to a video file (mp4, webm, mkv, avi, mov, m4v), decoded with PyAV (the ``[video]`` extra);
- a list of frames (PIL images, uint8 HxWxC arrays or tensors), or one uint8 array / tensor (T, H, W, C).

``encode_video(["a.mp4", "b.webm"])`` takes many videos; a list of frames is *one* video, and a list of
lists of frames is many. Decoding is bounded (:data:`~clipzoo.constants.MAX_VIDEO_SECONDS`, frames and
pixels per frame): a corrupt, unsupported or too large file raises :class:`BadVideoError` naming it.

Frames are sampled uniformly: of ``T`` frames, frame ``floor((i + 0.5) * T / N)`` for ``i < N`` (the centre
of each of ``N`` equal spans). :func:`encode_by_frames` is how *any* image–text model encodes a video.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .constants import DEFAULT_VIDEO_FRAMES, MAX_VIDEO_FRAMES, MAX_VIDEO_PIXELS, MAX_VIDEO_SECONDS, VIDEO_SUFFIXES
from .errors import ClipzooError, one_line
from .extras import require
from .files import checked_file, expand_files
from .inputs import to_pil

__all__ = ["BadVideoError", "VideoInfo", "encode_by_frames", "expand_video_paths", "is_video_path",
           "load_segments", "load_video", "probe", "read_all_frames", "read_frames", "segment_starts",
           "stream_segments", "uniform_indices", "video_items", "write_video", "VIDEO_SUFFIXES"]


class BadVideoError(ClipzooError, ValueError):
    """A video that cannot be used: missing, corrupt, unsupported, too long or too large, or a bad frame list."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: frame count (video packets), frames per second, duration (s), size."""

    frames: int
    fps: float
    duration: float
    width: int
    height: int


def is_video_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike)) and Path(os.fspath(item)).suffix.lower() in VIDEO_SUFFIXES


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def _ndim(item: Any) -> int | None:
    shape = getattr(item, "shape", None)
    return None if shape is None else len(shape)


def _is_frame(item: Any) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image) or _ndim(item) in (2, 3)


def video_items(inputs: Any) -> list[Any]:
    """One video or many -> a list of items, each a path or a list of frames (see the module docstring)."""
    if _is_path(inputs):
        return [inputs]
    if _ndim(inputs) == 4:
        return [list(inputs)]
    if _ndim(inputs) == 5:
        return [list(v) for v in inputs]
    if not isinstance(inputs, (list, tuple)):
        raise BadVideoError(f"cannot use a {type(inputs).__name__} as a video; pass a video file path, a list of "
                            "frames (PIL images or uint8 HxWxC arrays) or a uint8 array (T, H, W, C)")
    if not inputs:
        raise BadVideoError("no video given; pass a video file path or a list of frames")
    if all(_is_frame(f) for f in inputs):
        return [list(inputs)]
    items = []
    for i, item in enumerate(inputs):
        if _is_path(item):
            items.append(item)
        elif _ndim(item) == 4 or (isinstance(item, (list, tuple)) and item and all(_is_frame(f) for f in item)):
            items.append(list(item))
        else:
            raise BadVideoError(f"video {i} is a {type(item).__name__}; pass video file paths, lists of frames "
                                "(PIL images or uint8 HxWxC arrays) or uint8 arrays (T, H, W, C)")
    return items


def uniform_indices(total: int, n: int, exact: bool = True) -> list[int]:
    """``n`` frame indices spread uniformly over ``total`` frames (the centre of each of ``n`` equal spans).

    With fewer frames than ``n``: ``exact`` repeats frames to give ``n`` indices (models that take exactly
    ``n``), otherwise every frame once."""
    if total <= 0:
        return []
    if n <= 0:
        raise BadVideoError(f"cannot sample {n} frames; pass num_frames of 1 or more")
    if total < n and not exact:
        return list(range(total))
    return [min(total - 1, int(math.floor((i + 0.5) * total / n))) for i in range(n)]


def segment_starts(duration: float, seconds: float) -> list[float]:
    """Start times (s) of consecutive segments of ``seconds`` covering ``duration``."""
    if not seconds or seconds <= 0 or not math.isfinite(seconds):
        raise BadVideoError(f"video segment length {seconds!r} is not a positive number of seconds; pass e.g. 10")
    count = max(1, math.ceil(duration / seconds - 1e-9))
    return [round(k * seconds, 6) for k in range(count)]


# ------------------------------------------------------------------ decoding
def _av():
    return require("av", "video files")


def _bad(shown: str, exc: BaseException) -> BadVideoError:
    return BadVideoError(f"video {shown!r} cannot be decoded ({one_line(exc, 200)}); pass a valid mp4, webm, mkv or "
                         "avi file")


WRITE_CODECS = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx",
                ".avi": "mpeg4"}
"""The encoder :func:`write_video` uses for each suffix."""
MAX_READ_FRAMES = 10_000
"""At most this many frames are decoded into memory by :func:`read_all_frames` (``VIDEO.read_from_disk``)."""
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, IndexError, UnicodeDecodeError,
                                                   EOFError, RuntimeError)


def _open(path: "str | os.PathLike"):
    p, shown = checked_file(path, "video", BadVideoError, "pass the video files in it")
    av = _av()
    try:
        container = av.open(str(p), mode="r")
    except (av.FFmpegError, *_DECODE_ERRORS) as exc:
        raise _bad(shown, exc) from None
    if not container.streams.video:
        container.close()
        raise BadVideoError(f"video {shown!r} has no video stream; pass a file with video in it")
    return container, shown


def probe(path: "str | os.PathLike") -> VideoInfo:
    """Count the video packets (no decoding) and read rate, duration and size; bounded by the MAX_VIDEO_* limits."""
    av = _av()
    container, shown = _open(path)
    with container:
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if width * height > MAX_VIDEO_PIXELS:
            raise BadVideoError(f"video {shown!r} has {width}x{height} frames, more than {MAX_VIDEO_PIXELS:,} "
                                "pixels; scale it down first (e.g. ffmpeg -vf scale=1280:-2)")
        rate = stream.average_rate or stream.guessed_rate
        frames = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    frames += 1
                    if frames > MAX_VIDEO_FRAMES:
                        raise BadVideoError(f"video {shown!r} has more than {MAX_VIDEO_FRAMES:,} frames; cut it "
                                            "into shorter files")
        except (av.FFmpegError, *_DECODE_ERRORS) as exc:
            raise _bad(shown, exc) from None
        fps = float(rate) if rate else 0.0
        duration = frames / fps if fps else float(stream.duration * stream.time_base if stream.duration else 0)
    if frames == 0:
        raise BadVideoError(f"video {shown!r} holds no frames; pass a file with video in it")
    if duration > MAX_VIDEO_SECONDS:
        raise BadVideoError(f"video {shown!r} lasts {duration:.0f} s, more than {MAX_VIDEO_SECONDS:.0f} s; cut it "
                            "into shorter files")
    return VideoInfo(frames=frames, fps=fps or frames / max(duration, 1e-9), duration=duration,
                     width=width, height=height)


def read_frames(path: "str | os.PathLike", indices: Iterable[int]) -> list:
    """The frames at ``indices`` (presentation order, repeats allowed) as RGB PIL images, in one decode pass.
    An index past the last decodable frame gives the last frame."""
    indices = list(indices)
    got = dict(_decoded(path, set(indices)))
    return _filled(indices, got, got[max(got)] if got else None)


def _decoded(path: "str | os.PathLike", wanted: "set[int]") -> Iterator[tuple[int, Any]]:
    """``(index, RGB frame)`` for each index in ``wanted`` that decodes, in order, in one pass; decoding stops at
    the last one wanted, or at an error after the first frame (one before it, or no frame at all: BadVideoError)."""
    av = _av()
    last = max(wanted) if wanted else -1
    container, shown = _open(path)
    given = 0
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                if frame.width * frame.height > MAX_VIDEO_PIXELS:
                    raise BadVideoError(f"video {shown!r} has {frame.width}x{frame.height} frames, more than "
                                        f"{MAX_VIDEO_PIXELS:,} pixels; scale it down first")
                if i in wanted:
                    given += 1
                    yield i, frame.to_image()
                if i >= last:
                    break
        except (av.FFmpegError, *_DECODE_ERRORS) as exc:
            if not given:
                raise _bad(shown, exc) from None
    if wanted and not given:
        raise BadVideoError(f"video {shown!r}: no frame could be decoded; pass a valid mp4, webm, mkv or avi file")


def _filled(indices: Sequence[int], got: dict, fallback: Any) -> list:
    """The frames at ``indices`` from ``got``; one that did not decode is the one before it, else ``fallback``."""
    out, previous = [], None
    for i in indices:
        previous = got.get(i, previous)
        out.append(previous if previous is not None else fallback)
    return out


def _frames_of(item: Any, index: int) -> list:
    frames = list(item)
    if not frames:
        raise BadVideoError(f"video {index} is an empty list of frames; pass at least one frame")
    return [to_pil(f, i) for i, f in enumerate(frames)]


def load_video(item: Any, num_frames: int = DEFAULT_VIDEO_FRAMES, exact: bool = True, index: int = 0) -> list:
    """One video item -> ``num_frames`` RGB PIL frames sampled uniformly (see :func:`uniform_indices`)."""
    if _is_path(item):
        info = probe(item)
        return read_frames(item, uniform_indices(info.frames, num_frames, exact))
    frames = _frames_of(item, index)
    return [frames[i] for i in uniform_indices(len(frames), num_frames, exact)]


def load_segments(path: "str | os.PathLike", seconds: float | None, num_frames: int = DEFAULT_VIDEO_FRAMES,
                  exact: bool = True) -> tuple[VideoInfo, list, list[tuple[float, list]]]:
    """One decode pass -> ``(info, whole-video frames, [(start_s, frames) per segment])``; no segments when
    ``seconds`` is None. Each segment's frames are sampled uniformly within it. Every segment's frames are held
    at once: :func:`stream_segments` hands them over one segment at a time."""
    segments: list[tuple[float, list]] = []
    info, whole = stream_segments(path, seconds, num_frames, exact, lambda start, frames: segments.append(
        (start, frames)))
    return info, whole, segments


def stream_segments(path: "str | os.PathLike", seconds: float | None, num_frames: int, exact: bool,
                    on_segment: Callable[[float, list], None], min_segments: int = 1) -> tuple[VideoInfo, list]:
    """One decode pass that calls ``on_segment(start_s, frames)`` for each segment as soon as its frames are
    decoded, holding at most one segment's frames and the whole video's (a 60 s 720p video in 1 s segments held
    480 frames, 1.8 GB); returns ``(info, whole-video frames)``. Fewer than ``min_segments`` segments: none."""
    info = probe(path)
    whole = uniform_indices(info.frames, num_frames, exact)
    spans = _spans(info, seconds, num_frames, exact) if seconds else []
    spans = spans if len(spans) >= min_segments else []
    wanted = set(whole).union(*(idx for _, idx in spans))
    got_whole: dict[int, Any] = {}
    current: dict[int, Any] = {}
    last = None
    for i, frame in _decoded(path, wanted):
        while spans and spans[0][1][-1] < i:  # a segment whose frames are all past: hand it over
            start, idx = spans.pop(0)
            on_segment(start, _filled(idx, current, last))
            current = {}
        if i in whole:
            got_whole[i] = frame
        if spans and i in spans[0][1]:
            current[i] = frame
        last = frame
    for start, idx in spans:  # decoding ended at or before them: the last frame stands in for the rest
        on_segment(start, _filled(idx, current, last))
        current = {}
    return info, _filled(whole, got_whole, got_whole[max(got_whole)] if got_whole else last)


def _spans(info: VideoInfo, seconds: float, num_frames: int, exact: bool) -> list[tuple[float, list[int]]]:
    """``(start_s, frame indices)`` of each segment: ``num_frames`` sampled uniformly within it, ascending. At most
    one segment starts on each frame, so there are never more segments than frames: a segment that would start on
    the frame the one before it starts on (segments shorter than a frame, as a tiny video that declares a very low
    frame rate has them) shows nothing new and is left out."""
    spans: list[tuple[float, list[int]]] = []
    last = -1  # the frame the segment before starts on
    for start in segment_starts(info.duration, seconds):
        first = min(info.frames - 1, int(round(start * info.fps)))
        if first <= last:
            continue
        last = first
        stop = min(info.frames, max(first + 1, int(round((start + seconds) * info.fps))))
        spans.append((start, [first + i for i in uniform_indices(stop - first, num_frames, exact)]))
    return spans


def poster_frame(path: "str | os.PathLike", at_seconds: float = 0.0):
    """The frame at ``at_seconds`` (the first frame by default) as an RGB PIL image: a video's poster."""
    info = probe(path)
    return read_frames(path, [min(info.frames - 1, int(at_seconds * info.fps))])[0]


def read_all_frames(path: "str | os.PathLike", max_frames: int = MAX_READ_FRAMES) -> list:
    """Every frame of a video file, in order, as RGB PIL images (``VIDEO.read_from_disk``); more than
    ``max_frames`` is refused (pass the path to ``encode_video`` instead: it samples)."""
    info = probe(path)
    if info.frames > max_frames:
        raise BadVideoError(f"video {os.fspath(path)!r} has {info.frames} frames, more than the {max_frames} kept in "
                            "memory at once; pass its path to encode_video instead (it samples frames)")
    return read_frames(path, range(info.frames))


def write_video(path: "str | os.PathLike", frames: Any, fps: int = 8) -> Path:
    """Frames (PIL images, uint8 HxWxC arrays, or a (T, H, W, C) array) -> a video file whose codec follows the
    suffix (:data:`WRITE_CODECS`; yuv420p, so sides are cut to even numbers); returns the path."""
    import numpy as np

    path = Path(os.fspath(path))
    codec = WRITE_CODECS.get(path.suffix.lower())
    if codec is None:
        raise BadVideoError(f"cannot write a video to {str(path)!r}; use one of {', '.join(WRITE_CODECS)}")
    items = video_items(frames if _ndim(frames) == 4 or not _is_path(frames) else [frames])
    if len(items) != 1 or _is_path(items[0]):
        raise BadVideoError(f"write one video's frames to {str(path)!r} (a list of frames or a (T, H, W, C) array)")
    arrays = [np.asarray(f) for f in _frames_of(items[0], 0)]
    height, width = (arrays[0].shape[0] // 2) * 2, (arrays[0].shape[1] // 2) * 2
    av = _av()
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 4_000_000
        for array in arrays:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array[:height, :width, :3]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def poster_jpeg(path: "str | os.PathLike", size: int = 256, at_seconds: float = 0.0, quality: int = 85) -> bytes:
    """JPEG bytes of the frame at ``at_seconds``, at most ``size`` pixels on its longer side: a video row's
    thumbnail in the service (the page's poster frame)."""
    from PIL import Image

    image = poster_frame(path, at_seconds)
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ------------------------------------------------------------------ image–text models
def encode_by_frames(comparator: Any, videos: Any, *, num_frames: int | None = None, normalize: bool = True,
                     batch_size: int = 64):
    """Video features from an image–text model: ``num_frames`` (default 8) uniform frames per video, each
    encoded with ``encode_image`` and L2-normalised; the video's feature is the mean of those normalised frame
    features, renormalised to unit length when ``normalize`` (the plain mean when ``normalize=False``)."""
    n = int(num_frames or DEFAULT_VIDEO_FRAMES)
    clips = [load_video(item, n, exact=False, index=i) for i, item in enumerate(video_items(videos))]
    return mean_frame_features(comparator, clips, normalize=normalize, batch_size=batch_size)


def mean_frame_features(comparator: Any, clips: Sequence[list], *, normalize: bool = True, batch_size: int = 64):
    """Already-sampled frame lists -> (N, D): the mean of each clip's normalised frame features
    (renormalised when ``normalize``). The index build calls this with one decode per video."""
    import torch
    import torch.nn.functional as F

    flat = [f for clip in clips for f in clip]
    feats = comparator.encode_image(flat, normalize=True, batch_size=batch_size)
    out, at = [], 0
    for clip in clips:
        out.append(feats[at:at + len(clip)].mean(dim=0))
        at += len(clip)
    stacked = torch.stack(out)
    return F.normalize(stacked, dim=-1) if normalize else stacked


def expand_video_paths(paths: "str | os.PathLike | Iterable[str | os.PathLike]") -> list[str]:
    """Files stay as given; a folder becomes its video files (recursively, sorted, hidden skipped)."""
    return expand_files(paths, VIDEO_SUFFIXES, BadVideoError, "video")
