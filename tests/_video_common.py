"""Small videos written by PyAV itself for the video tests: coloured shapes moving on a plain background."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CODECS = {".mp4": "libx264", ".webm": "libvpx", ".mkv": "libx264", ".avi": "mpeg4"}
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 230), "white": (240, 240, 240)}


def shape_frames(count: int, size: int = 48, colour: str = "red", background=(20, 20, 20)) -> list[np.ndarray]:
    """``count`` uint8 HxWx3 frames: a square of ``colour`` sliding left to right, its frame number drawn as a
    grey bar at the bottom (so frame identity can be read back after lossy compression)."""
    frames = []
    for t in range(count):
        f = np.empty((size, size, 3), np.uint8)
        f[:] = background
        x = int((size - size // 3) * t / max(1, count - 1))
        f[size // 4: size // 4 + size // 3, x: x + size // 3] = COLOURS[colour]
        f[-6:, :] = (t * 255) // max(1, count - 1)
        frames.append(f)
    return frames


def write_video(path: "str | Path", frames: list[np.ndarray], fps: int = 8) -> Path:
    """Encode ``frames`` into ``path`` with the codec its suffix calls for (yuv420p)."""
    import av

    path = Path(path)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(CODECS[path.suffix.lower()], rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000  # near-lossless at this size, so frame numbers read back exactly
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_video(path: "str | Path", count: int = 16, size: int = 48, colour: str = "red", fps: int = 8) -> Path:
    return write_video(path, shape_frames(count, size, colour), fps)


def segment_colours(path: "str | Path", colours: list[str], per_segment: int = 8, size: int = 48,
                    fps: int = 8) -> Path:
    """A video whose consecutive spans of ``per_segment`` frames each show one colour's square."""
    frames = [f for c in colours for f in shape_frames(per_segment, size, c)]
    return write_video(path, frames, fps)
