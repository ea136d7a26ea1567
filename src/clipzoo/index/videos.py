"""Videos in an index: one row per video file, plus optional per-segment rows with their start time.

A video row's key (``relpath`` in the store) is the file's relative path (``clips/a.mp4``); a segment row's key
is ``clips/a.mp4#t=START`` (seconds, as in a media-fragment URL), so the store's one-row-per-key rule holds and a
search hit knows where to play from (:func:`split_key`). Segment rows share their video's size, mtime, SHA-256,
caption and partition: when the video changes, all its rows are embedded again; when it is deleted, all go.

Embedding: the model's own video tower when it has one (X-CLIP, PE video, VideoPrism: exactly its number of
frames), otherwise the mean of the normalised features of :data:`~clipzoo.constants.DEFAULT_VIDEO_FRAMES`
uniform frames (any image–text model, :func:`clipzoo.video.encode_by_frames`). A segment's frames are sampled
within it. All rows of one video come from one decode pass. A video that cannot be decoded (corrupt, no video
stream, too long) is skipped and listed in the build report's ``skipped``, never fatal.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import DEFAULT_VIDEO_FRAMES, VIDEO_SUFFIXES
from ..errors import ClipzooError
from ..modalities import VIDEO
from ..progress import progress as progress_bar
from ..video import BadVideoError, stream_segments
from .embedding_store import EmbeddingStore, ItemRow
from .folder import caption_of, partition_of, sha256_file, walk_files

__all__ = ["SEGMENT_META", "is_video_key", "segment_key", "split_key", "walk_videos", "video_rows_to_keep",
           "plan_videos", "embed_videos"]

SEGMENT_META = "video_segments"
"""The store's meta key recording ``--video-segments`` (seconds, or None): a change re-embeds every video."""
_SEGMENT = re.compile(r"^(?P<base>.+)#t=(?P<start>[0-9]+(?:\.[0-9]+)?)$")


def segment_key(relpath: str, start: float) -> str:
    return f"{relpath}#t={start:g}"


def split_key(key: str) -> tuple[str, float | None]:
    """A row key -> ``(file relpath, start seconds)``: 0.0 for a whole-video row, None for an image."""
    m = _SEGMENT.match(key)
    if m and is_video_key(m["base"]):
        return m["base"], float(m["start"])
    return key, (0.0 if is_video_key(key) else None)


def is_video_key(relpath: str) -> bool:
    return os.path.splitext(relpath.split("#", 1)[0])[1].lower() in VIDEO_SUFFIXES


def walk_videos(root: "str | os.PathLike", exclude: "str | os.PathLike | None" = None,
                skipped: list | None = None) -> list[str]:
    """Relative POSIX paths of the video files under ``root`` (sorted; hidden entries and ``exclude`` skipped;
    links out of the folder listed in ``skipped``)."""
    return sorted(p.relative_to(root).as_posix() for p in walk_files(root, VIDEO_SUFFIXES, exclude, skipped))


def video_rows_to_keep(known: Iterable[str], videos: set[str], to_embed: set[str]) -> set[str]:
    """Segment keys of videos still present and not re-embedded: they stay in the index."""
    return {k for k in known if k not in videos and split_key(k)[0] in videos and split_key(k)[0] not in to_embed}


def plan_videos(store: EmbeddingStore, known: dict, videos: list[str], to_embed: list[str], segments: float | None,
                report: Any) -> tuple[list[str], list[str]]:
    """Split what a build embeds into ``(images, videos)``: a segment row (a lost one) stands for its video; when
    ``segments`` differs from the recorded setting every video is embedded again (and the setting recorded)."""
    if segments is not None and (not isinstance(segments, (int, float)) or not segments > 0):
        raise ClipzooError(f"--video-segments {segments!r} is not a positive number of seconds; pass e.g. 10")
    recorded = store.get_meta(SEGMENT_META)
    redo = set(videos) if recorded != segments and any(split_key(k)[0] in set(videos) for k in known) else set()
    if recorded != segments:
        store.set_meta(**{SEGMENT_META: segments})
    images = [r for r in to_embed if not is_video_key(r)]
    chosen = {split_key(r)[0] for r in to_embed if is_video_key(r)}
    report.unchanged -= len(redo - chosen)
    return images, sorted(chosen | redo)


def _clips(comparator: Any) -> tuple[int, bool]:
    """How many frames the model takes and whether exactly (its own video tower) or at most (frame average)."""
    native = VIDEO in tuple(comparator.modalities)
    frames = int(getattr(comparator, "num_frames", 0) or DEFAULT_VIDEO_FRAMES) if native else DEFAULT_VIDEO_FRAMES
    return frames, native


def _video_rows(comparator: Any, path: Path, segments: "float | None", frames: int, exact: bool
                ) -> tuple[np.ndarray, list[float]]:
    """A video's rows — the whole video's, then each segment's (none when one segment would be the whole
    video) — and the segments' starts; each segment is encoded as soon as it is decoded, so that memory holds
    one segment's frames, not the video's."""
    rows, starts = [], []

    def encode_segment(start: float, clip: list) -> None:
        rows.append(comparator.encode_video([clip], normalize=True).float().cpu().numpy())
        starts.append(start)

    _, whole = stream_segments(path, segments, frames, exact, encode_segment, min_segments=2)
    first = comparator.encode_video([whole], normalize=True).float().cpu().numpy()
    return np.concatenate([first, *rows]), starts


def embed_videos(store: EmbeddingStore, root: Path, relpaths: list[str], known: dict, comparator: Any, spec: str,
                 segments: float | None, report: Any, show_progress: bool = False) -> int:
    """Embed the videos ``relpaths`` (whole + segment rows) and commit them one video at a time; stale segment
    rows of these videos are removed; undecodable videos go to ``report.skipped``. Returns videos embedded."""
    comparator.require(VIDEO)
    store.check_model(spec, comparator.card.alias, comparator.embed_dim)
    frames, exact = _clips(comparator)
    embedded = 0
    with progress_bar(len(relpaths), f"indexing {len(relpaths)} videos", enabled=show_progress,
                      unit="videos") as advance:
        for rel in relpaths:
            path = root / rel
            stale = [k for k in known if k != rel and split_key(k)[0] == rel]
            try:
                st = path.stat()
                sha = sha256_file(path)
                vectors, starts = _video_rows(comparator, path, segments, frames, exact)
            except (BadVideoError, OSError) as exc:
                report.skipped.append((str(path), str(exc) if isinstance(exc, ClipzooError) else
                                       f"cannot be read ({exc})"))
                report.removed += store.remove([rel, *stale] if rel in known else stale)
                advance(1)
                continue
            if not np.all(np.isfinite(vectors)):
                report.skipped.append((str(path), "the model gave non-finite values (NaN or infinity)"))
                advance(1)
                continue
            caption, partition = caption_of(path, root), partition_of(rel)
            keys = [rel] + [segment_key(rel, start) for start in starts]
            store.remove([k for k in stale if k not in keys])
            store.add([ItemRow(k, st.st_size, st.st_mtime_ns, sha, caption, partition) for k in keys], vectors)
            if rel in known:
                report.updated += 1
            else:
                report.added += 1
            embedded += 1
            advance(1)
    return embedded
