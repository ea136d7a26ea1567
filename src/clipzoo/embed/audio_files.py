"""Embedding audio files and folders with an audio–text model (CLAP); decoding lives in :mod:`clipzoo.audio`.

    from clipzoo.embed import embed_audio
    result = embed_audio(model, ["sounds/"], progress=True)   # folders expand to .wav/.flac/.ogg, sorted
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..audio import expand_audio_paths, load_audio
from ..errors import BadAudioError
from ..modalities import AUDIO
from ..progress import progress as progress_bar
from .batches import check_batch_size
from .results import Embeddings

__all__ = ["embed_audio"]


def embed_audio(comparator, paths: "str | os.PathLike | Iterable[str | os.PathLike]", *, batch_size: int = 32,
                normalize: bool = True, progress: bool = False, skip_bad: bool = False) -> Embeddings:
    """Embed audio files and folders (folders expand recursively to .wav/.flac/.ogg, sorted) with an audio
    comparator (CLAP). Returns :class:`~clipzoo.embed.Embeddings` with modality ``"audio"``.

    Each file is decoded, downmixed and resampled to the model's rate, and encoded ``batch_size`` at a time.
    A file that cannot be decoded raises :class:`~clipzoo.errors.BadAudioError` naming it, or is left out (and
    listed in ``skipped``) when ``skip_bad``. Rows equal ``comparator.encode_audio(paths)``.
    """
    import numpy as np

    batch_size = check_batch_size(batch_size)
    comparator.require(AUDIO)
    rate = int(comparator.sample_rate)
    files = expand_audio_paths(paths)
    rows: list[Any] = []
    kept: list[str] = []
    skipped: list[dict[str, str]] = []
    with progress_bar(len(files), f"embedding {len(files)} audio files", enabled=progress, unit="files") as advance:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            waves, names = _decode(chunk, rate, skip_bad, skipped)
            if waves:
                feats = comparator.encode_audio(waves, normalize=normalize, batch_size=batch_size)
                rows.append(feats.float().cpu().numpy())
                kept.extend(names)
            advance(len(chunk))
    if not rows:
        raise BadAudioError(f"none of the {len(files)} audio files could be decoded; first error: "
                            f"{skipped[0]['error'] if skipped else '(none)'}")
    return Embeddings(np.concatenate(rows).astype(np.float32, copy=False), kept, AUDIO,
                      comparator.card.alias, normalize, skipped)


def _decode(chunk: list[str], rate: int, skip_bad: bool, skipped: list[dict[str, str]]) -> tuple[list, list[str]]:
    """Decode a chunk of files at ``rate``: ``(waves, names)``; a bad file raises, or is added to ``skipped``."""
    waves, names = [], []
    for path in chunk:
        try:
            waves.append(load_audio(path, rate))
            names.append(path)
        except BadAudioError as exc:
            if not skip_bad:
                raise BadAudioError(f"{exc} (to leave such files out: --skip-bad, skip_bad=True)") from None
            skipped.append({"input": path, "error": str(exc)})
    return waves, names
