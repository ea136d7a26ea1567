"""Audio files and arrays an attacker (or a strange recorder) sends: bounded time and memory, one line each.

Found by probing `clipzoo embed --audio`: a 2 KB WAV whose header claims 999,999,937 Hz asked the resampler for
a 320 GB filter (a MemoryError traceback); 58 MB of 16-channel 8-bit PCM took 544 MB; a one-frame stereo file was
read as two mono samples; a header with no samples said it "holds NaN or infinite samples"."""
from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np
import pytest

from clipzoo import audio
from clipzoo.audio import load_audio, read_audio_file, resample_factors
from clipzoo.errors import BadAudioError

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("scipy")


def _wav(path, rate: int, samples: np.ndarray, channels: int = 1):
    """16-bit PCM with whatever rate the header should claim (libsndfile refuses to write some)."""
    data = samples.astype(np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * 2 * channels) & 0xFFFFFFFF, 2 * channels, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", len(data)) + data)
    return path


@pytest.mark.parametrize("rate", [999_999_937, 2_147_483_647, 768_001, 999])
def test_a_header_rate_outside_the_rates_taken_is_one_line(tmp_path, rate):
    path = _wav(tmp_path / "r.wav", rate, np.arange(1000) % 100)
    with pytest.raises(BadAudioError) as err:
        load_audio(str(path), 48_000)
    assert str(err.value) == (f"audio file '{path}': sample rate {rate} Hz is outside 1000–768000 Hz, the rates "
                              "taken")
    with pytest.raises(BadAudioError, match="sample rate 999999937 Hz is outside"):
        load_audio((np.zeros(100), 999_999_937), 48_000)


def test_rates_without_a_small_ratio_resample_by_the_nearest_one():
    assert resample_factors(44_100, 48_000) == (160, 147)  # exact where the factors are small
    up, down = resample_factors(44_101, 48_000)  # exactly 48000/44101: a filter of 960,000 taps
    assert max(up, down) <= 1000 and abs(Fraction(up, down) / Fraction(48_000, 44_101) - 1) < 1e-6
    up, down = resample_factors(767_999, 32_000)
    assert max(up, down) <= 1000 and abs(Fraction(up, down) / Fraction(32_000, 767_999) - 1) < 1e-5
    x = np.sin(np.arange(44_101) / 10.0)
    out = load_audio((x, 44_101), 48_000)
    assert abs(len(out) - 48_000) <= 1


def test_channels_and_frames_are_read_from_the_header(tmp_path):
    soundfile.write(str(tmp_path / "one.wav"), np.array([[0.5, -0.5]]), 32_000)
    assert load_audio(str(tmp_path / "one.wav"), 32_000).tolist() == [0.0]  # was two samples, [0.5, -0.5]
    soundfile.write(str(tmp_path / "many.wav"), np.full((10, 20), 0.1), 32_000)
    with pytest.raises(BadAudioError, match=r"many.wav' has 20 channels, more than 16; mix it down first$"):
        load_audio(str(tmp_path / "many.wav"), 32_000)  # was read as 20 samples of 10 channels
    empty = _wav(tmp_path / "empty.wav", 32_000, np.zeros(0))
    for read in (lambda p: load_audio(p, 32_000), read_audio_file):
        with pytest.raises(BadAudioError, match=r"empty.wav' is empty \(no samples\); pass at least one sample$"):
            read(str(empty))  # said "holds NaN or infinite samples"


def test_a_file_over_the_sample_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    stereo = np.stack([np.linspace(-0.5, 0.5, 3000), np.linspace(0.5, -0.5, 3000)], axis=1)
    soundfile.write(str(tmp_path / "long.wav"), stereo, 8_000)
    assert np.abs(load_audio(str(tmp_path / "long.wav"), 8_000)).max() < 1e-4  # 16-bit PCM of opposite ramps
    monkeypatch.setattr(audio, "MAX_AUDIO_SAMPLES", 5_000)
    with pytest.raises(BadAudioError) as err:
        load_audio(str(tmp_path / "long.wav"), 8_000)
    assert str(err.value).endswith("long.wav' holds 6,000 samples (0 s × 2 channels at 8000 Hz), more than 5,000; "
                                   "cut it into shorter clips")


def test_a_file_read_in_blocks_equals_the_whole_file_mixed_down(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.9, 0.9, size=(200_000, 3))
    soundfile.write(str(tmp_path / "x.wav"), x, 16_000, subtype="DOUBLE")
    assert np.array_equal(load_audio(str(tmp_path / "x.wav"), 16_000), x.mean(axis=1))
