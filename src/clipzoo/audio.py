"""Audio inputs for audio–text models (CLAP): decoding, mono downmix, resampling, and folders of audio files.

An audio *item* is one of:

- a path to a WAV, FLAC or OGG file (decoded with ``soundfile``; its own sample rate is read from the file);
- a pair ``(array, sample_rate)``: a numpy array or torch tensor of samples and their rate in Hz;
- a bare array or tensor: samples already at the model's rate.

Arrays are 1-D (samples) or 2-D with a channel axis, either ``(channels, samples)`` as torchaudio gives them or
``(samples, channels)`` as soundfile does: the shorter axis is taken as the channels (at most
:data:`MAX_CHANNELS`). Channels are averaged to mono; integer PCM is scaled to [-1, 1]; the result is resampled
to the model's rate with :func:`scipy.signal.resample_poly` (a polyphase filter with gcd-reduced factors).

    from clipzoo.audio import load_audio
    samples = load_audio("bark.wav", 48000)   # mono float64 at 48 kHz

Embedding many files (:func:`clipzoo.embed.embed_audio`) lives in :mod:`clipzoo.embed`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from .constants import AUDIO_SUFFIXES, MAX_AUDIO_SAMPLES, MAX_RESAMPLE_FACTOR, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from .errors import BackendMissingError, BadAudioError, ClipzooError, MissingExtraError, one_line
from .extras import require
from .files import checked_file, expand_files

__all__ = ["AUDIO_SUFFIXES", "MAX_CHANNELS", "audio_items", "audio_list", "describe", "load_audio", "read_audio_file",
           "read_audio_mono", "resample", "resample_factors", "to_mono", "expand_audio_paths"]

MAX_CHANNELS = 16
_FIX_ARRAY = "pass a 1-D array of samples, or (channels, samples), with its rate as (array, sample_rate)"


def _soundfile():
    try:
        return require("soundfile", "reading audio files")
    except OSError as exc:  # the wheel's bundled libsndfile failed to load
        raise BackendMissingError(f"soundfile cannot load libsndfile ({exc}); reinstall it: "
                                  "pip install --force-reinstall soundfile") from None


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def _is_array(item: Any) -> bool:
    import numpy as np

    if isinstance(item, np.ndarray):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return False
    return isinstance(item, torch.Tensor)


def _is_pair(item: Any) -> bool:
    """``(samples, rate)``: a tuple of two whose first is samples (not a path) and second not samples."""
    return (isinstance(item, tuple) and len(item) == 2 and not _is_path(item[0]) and not _is_path(item[1])
            and not _is_array(item[1]) and not isinstance(item[1], (list, tuple)))


def describe(item: Any, index: int | None = None) -> str:
    """How an error names an audio item: ``audio file 'a.wav'`` / ``audio array 2``."""
    if _is_path(item):
        return f"audio file {os.fspath(item)!r}"
    return "audio array" + (f" {index}" if index is not None else "")


def audio_list(inputs: Any) -> list[Any]:
    """A path, an array / tensor, or a ``(array, sample_rate)`` pair -> a list of such items (``AUDIO.coerce``);
    a list or tuple is already one, unchecked: :func:`audio_items` checks each item."""
    if isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[1], (int, float)):
        return [inputs]
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise ClipzooError("no audio given; pass at least one file path or (array, sample_rate) pair")
        return list(inputs)
    return [inputs]


def audio_items(inputs: Any) -> list[Any]:
    """One item, or a list / tuple of items -> a list of items (a ``(array, rate)`` pair counts as one)."""
    items = [inputs] if _is_pair(inputs) else audio_list(inputs)
    for i, item in enumerate(items):
        if not (_is_path(item) or _is_array(item) or _is_pair(item)):
            raise BadAudioError(f"audio input {i} is a {type(item).__name__}; pass a .wav/.flac/.ogg path, an "
                                "array of samples at the model's rate, or an (array, sample_rate) pair")
    return items


# ------------------------------------------------------------------ decoding
def read_audio_file(path: "str | os.PathLike"):
    """A file -> ``(samples, sample_rate)``: float64 samples shaped (frames, channels)."""
    return _read_file(path, mono=False)


def read_audio_mono(path: "str | os.PathLike"):
    """A file -> ``(samples, sample_rate)``: 1-D float64 samples, the mean of its channels, read a block at a time
    (the whole file as float64 took 9 times its size)."""
    return _read_file(path, mono=True)


def _read_file(path: "str | os.PathLike", mono: bool):
    """The file's samples, its header checked first (:func:`_check_header`): its frames × channels, or mono."""
    import numpy as np

    p, shown = checked_file(path, "audio file", BadAudioError,
                            "pass a .wav, .flac or .ogg file (folders are expanded by embed_audio / --audio)")
    sf = _soundfile()
    try:
        with sf.SoundFile(str(p)) as f:
            _check_header(f.frames, f.channels, f.samplerate, shown)
            if not mono:
                return f.read(dtype="float64", always_2d=True), int(f.samplerate)
            parts = [block.mean(axis=1) for block in f.blocks(1 << 16, dtype="float64", always_2d=True)]
            return (np.concatenate(parts) if parts else np.zeros(0)), int(f.samplerate)
    except BadAudioError:
        raise
    except Exception as exc:  # LibsndfileError (a RuntimeError), TypeError for unknown formats, …
        raise BadAudioError(f"audio file {shown!r} cannot be decoded ({one_line(exc, 200)}); pass a valid WAV, "
                            "FLAC or OGG file") from None


def _check_header(frames: int, channels: int, rate: int, shown: str) -> None:
    """A file's declared shape within the bounds: channels, sample rate, samples (a 2 KB WAV claiming a rate of
    999,999,937 Hz took 320 GB to resample; 58 MB of 16-channel 8-bit PCM took 544 MB)."""
    name = f"audio file {shown!r}"
    if frames <= 0:
        raise BadAudioError(f"{name} is empty (no samples); pass at least one sample")
    if channels > MAX_CHANNELS:
        raise BadAudioError(f"{name} has {channels} channels, more than {MAX_CHANNELS}; mix it down first")
    _check_rate_range(rate, name)
    if frames * channels > MAX_AUDIO_SAMPLES:
        raise BadAudioError(f"{name} holds {frames * channels:,} samples ({frames / rate:,.0f} s × {channels} "
                            f"channels at {rate} Hz), more than {MAX_AUDIO_SAMPLES:,}; cut it into shorter clips")


def _as_numpy(array: Any, name: str):
    import numpy as np

    if not isinstance(array, np.ndarray):  # a torch tensor (half / bfloat16 have no numpy twin)
        import torch

        array = array.detach().cpu()
        if array.is_floating_point() and array.dtype not in (torch.float32, torch.float64):
            array = array.float()
        array = array.numpy()
    if array.dtype.kind == "i":  # integer PCM: int16 / int32 full scale -> [-1, 1)
        return array.astype(np.float64) / float(2 ** (8 * array.dtype.itemsize - 1))
    if array.dtype.kind == "u":  # unsigned 8-bit PCM is centred at 128
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        return (array.astype(np.float64) - half) / half
    if array.dtype.kind == "b" or array.dtype.kind not in "fi":
        raise BadAudioError(f"{name} has dtype {array.dtype}; pass float samples in [-1, 1] or integer PCM")
    return array.astype(np.float64, copy=False)


def to_mono(samples: Any, name: str = "audio array"):
    """1-D samples stay; 2-D ``(channels, samples)`` or ``(samples, channels)`` -> the mean over channels."""

    x = _as_numpy(samples, name)
    if x.ndim == 2:
        channel_axis = 0 if x.shape[0] <= x.shape[1] else 1
        if x.shape[channel_axis] > MAX_CHANNELS:
            raise BadAudioError(f"{name} has shape {tuple(x.shape)}: no axis looks like channels (at most "
                                f"{MAX_CHANNELS}); {_FIX_ARRAY}")
        x = x.mean(axis=channel_axis)
    elif x.ndim != 1:
        raise BadAudioError(f"{name} has shape {tuple(x.shape)}; {_FIX_ARRAY} (a batch is a list of arrays)")
    return _checked_samples(x, name)


def _checked_samples(x, name: str):
    """Mono samples that are some and finite."""
    import numpy as np

    if x.size == 0:
        raise BadAudioError(f"{name} is empty (no samples); pass at least one sample")
    if not np.isfinite(x).all():
        raise BadAudioError(f"{name} holds NaN or infinite samples; pass finite values in [-1, 1]")
    return x


def _check_rate(rate: Any, name: str) -> int:
    if rate is None:
        raise BadAudioError(f"{name} has no sample rate; pass (array, sample_rate), e.g. (samples, 48000), or a "
                            "bare array already at the model's rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise BadAudioError(f"{name}: sample rate {rate!r} is not a positive number of Hz; "
                            "pass (array, sample_rate) with e.g. 48000")
    if float(rate) != int(rate):
        raise BadAudioError(f"{name}: sample rate {rate!r} is not a whole number of Hz; pass an integer rate")
    _check_rate_range(int(rate), name)
    return int(rate)


def _check_rate_range(rate: int, name: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadAudioError(f"{name}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz, the "
                            "rates taken")


def resample(samples, from_rate: int, to_rate: int):
    """Polyphase resampling (:func:`scipy.signal.resample_poly`) by ``to_rate / from_rate``, gcd-reduced; by the
    nearest ratio of factors ≤ :data:`~clipzoo.constants.MAX_RESAMPLE_FACTOR` when the exact one has larger."""
    if from_rate == to_rate:
        return samples
    try:
        from scipy.signal import resample_poly
    except ImportError:
        raise MissingExtraError("resampling audio needs scipy, which is not installed; "
                                "pip install 'clipzoo[audio]'") from None
    if min(from_rate, to_rate) * MAX_RESAMPLE_FACTOR < max(from_rate, to_rate):
        raise ClipzooError(f"cannot resample from {from_rate} Hz to {to_rate} Hz: a ratio beyond "
                           f"{MAX_RESAMPLE_FACTOR} : 1")
    up, down = resample_factors(int(from_rate), int(to_rate))
    return resample_poly(samples, up, down)


def resample_factors(from_rate: int, to_rate: int) -> tuple[int, int]:
    """``(up, down)`` for :func:`resample`: ``to_rate / from_rate`` in lowest terms, or the nearest fraction whose
    terms are at most :data:`~clipzoo.constants.MAX_RESAMPLE_FACTOR`."""
    ratio = Fraction(to_rate, from_rate)
    if max(ratio.numerator, ratio.denominator) > MAX_RESAMPLE_FACTOR:
        ratio = _bounded_fraction(ratio)
    return ratio.numerator, ratio.denominator


def _bounded_fraction(ratio):
    """The fraction nearest ``ratio`` (within 1000 : 1 either way) whose terms are both ≤ MAX_RESAMPLE_FACTOR: the
    smaller term is the one ``limit_denominator`` bounds."""
    if ratio >= 1:
        return 1 / (1 / ratio).limit_denominator(MAX_RESAMPLE_FACTOR)
    return ratio.limit_denominator(MAX_RESAMPLE_FACTOR)


def load_audio(item: Any, sample_rate: int, index: int | None = None):
    """One audio item -> mono float64 samples (1-D numpy) at ``sample_rate``.

    Raises :class:`~clipzoo.errors.BadAudioError` naming the item (missing / undecodable file, wrong shape,
    empty, bad sample rate).
    """
    name = describe(item, index)
    if _is_path(item):
        samples, rate = read_audio_mono(item)
        samples = _checked_samples(samples, name)
    elif _is_pair(item):
        array, rate = item
        if not _is_array(array):
            array = _list_to_array(array, name)
        rate = _check_rate(rate, name)
        samples = to_mono(array, name)
    elif _is_array(item):
        rate = sample_rate
        samples = to_mono(item, name)
    else:
        raise BadAudioError(f"{name} is a {type(item).__name__}; pass a .wav/.flac/.ogg path, an array at the "
                            f"model's rate ({sample_rate} Hz), or an (array, sample_rate) pair")
    out = resample(samples, rate, sample_rate)
    if out.size == 0:
        raise BadAudioError(f"{name} is too short to resample from {rate} Hz to {sample_rate} Hz")
    return out


def _list_to_array(values: Any, name: str):
    import numpy as np

    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadAudioError(f"{name} is not numeric; {_FIX_ARRAY}") from None


# ------------------------------------------------------------------ files
def expand_audio_paths(paths: "str | os.PathLike | Iterable[str | os.PathLike]") -> list[str]:
    """Files stay as given; a folder becomes its .wav/.flac/.ogg files (recursively, sorted, hidden skipped).

    Raises :class:`~clipzoo.errors.BadAudioError` naming a path that does not exist or a folder without audio.
    """
    return expand_files(paths, AUDIO_SUFFIXES, BadAudioError, "audio")

