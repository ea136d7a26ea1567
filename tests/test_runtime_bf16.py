"""runtime="bf16" (clipzoo.runtime.bf16): bfloat16 weights on a CPU with native bf16, refused elsewhere."""
from __future__ import annotations

import pytest
import torch

import clipzoo
from clipzoo.errors import ClipzooError
from clipzoo.runtime import bf16


@pytest.fixture
def native(monkeypatch):
    """This CPU reports AVX512-BF16 (the numbers are the same where it is emulated, only slower)."""
    monkeypatch.setattr(bf16, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))


def test_bf16_stays_within_0999_of_fp32(native, tiny_files, images):
    path = str(tiny_files["open_clip_safetensors"])
    ref = clipzoo.load(path)
    m = clipzoo.load(path, runtime="bf16")
    assert m.runtime == "bf16" and m.dtype == torch.bfloat16
    texts = ["a red circle", "a blue square", "a dog on a beach"]
    cos_image = (m.encode_image(images).float() * ref.encode_image(images)).sum(-1).min().item()
    cos_text = (m.encode_text(texts).float() * ref.encode_text(texts)).sum(-1).min().item()
    assert min(cos_image, cos_text) >= 0.999, (cos_image, cos_text)
    assert cos_image < 1.0 - 1e-7 or cos_text < 1.0 - 1e-7  # it really ran in bf16


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(bf16, "cpu_flags", lambda: frozenset({"sse4_2", "avx2", "avx512f", "avx512_vnni"}))
    with pytest.raises(ClipzooError) as err:
        clipzoo.load("clipzoo/tiny-shapes", runtime="bf16")
    assert str(err.value) == ("runtime='bf16' needs a CPU with native bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo); "
                              "this one emulates it several times slower than fp32 — use runtime='int8' or 'onnx'")
    assert "\n" not in str(err.value)


def test_cpu_flags_reader(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    monkeypatch.setattr(bf16, "CPUINFO", info)
    bf16.cpu_flags.cache_clear()
    try:
        assert bf16.cpu_flags() == frozenset({"fpu", "avx2", "amx_bf16", "amx_tile"})
        assert bf16.native_bf16() and not bf16.native_bf16(frozenset({"avx2"}))
        monkeypatch.setattr(bf16, "CPUINFO", tmp_path / "missing")
        bf16.cpu_flags.cache_clear()
        assert bf16.cpu_flags() == frozenset()
    finally:
        bf16.cpu_flags.cache_clear()
