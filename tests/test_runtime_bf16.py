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
        bf16.cpu_model.cache_clear()
        assert bf16.cpu_model() == "X"  # the auto runtime's cache key: same flags, another CPU, measured again
        monkeypatch.setattr(bf16, "CPUINFO", tmp_path / "missing")
        bf16.cpu_flags.cache_clear()
        bf16.cpu_model.cache_clear()
        assert bf16.cpu_flags() == frozenset() and bf16.cpu_model() == ""
    finally:
        bf16.cpu_flags.cache_clear()
        bf16.cpu_model.cache_clear()


# issue 22 §2: bf16 that runs fast on a CPU with AMX — every weight bf16, self-attention through SDPA
def test_issue22_bf16_runtime_is_all_bf16_with_sdpa_attention(native, tiny_files):
    m = clipzoo.load(str(tiny_files["open_clip_safetensors"]), runtime="bf16")
    mixed = clipzoo.load(str(tiny_files["open_clip_safetensors"]), precision="bf16")
    fp32_left = sorted(n for n, t in [*mixed.model.named_parameters(), *mixed.model.named_buffers()]
                       if t.dtype == torch.float32 and t.numel() > 1)
    assert fp32_left, "open_clip's mixed precision keeps some fp32 tensors: what to_bf16 casts"
    left = [n for n, t in [*m.model.named_parameters(), *m.model.named_buffers()]
            if t.dtype == torch.float32 and t.numel() > 1]
    norms = {n for n, mod in m.model.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    assert left and all(n.rpartition(".")[0] in norms for n in left), left  # only the norms' weights stay fp32
    assert any(n.rpartition(".")[0] not in norms for n in fp32_left)  # and the mixed build left more than those
    lns = [mod for mod in m.model.modules() if type(mod).__name__ == "LayerNormFp32"]
    assert lns and all(mod.forward.__func__ is bf16.mixed_layer_norm for mod in lns)
    x = torch.randn(2, 5, lns[0].normalized_shape[0]).bfloat16()
    assert lns[0](x).dtype == torch.bfloat16  # no fp32 round trip
    attns = [a for a in m.model.modules() if isinstance(a, torch.nn.MultiheadAttention)]
    assert attns and all(a.forward.__func__ is bf16.sdpa_forward for a in attns)
    assert m.model.state_dict().keys() == mixed.model.state_dict().keys()  # same modules, same names
    assert m.model.logit_scale.dtype == torch.float32 and m.logit_scale == mixed.logit_scale  # scalars stay fp32


def test_issue22_bf16_keeps_norm_weights_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.LayerNorm(4))
    fp32_norm = type("LayerNormFp32", (torch.nn.LayerNorm,), {"forward": lambda self, x: x.float()})(4)
    model.append(fp32_norm)
    assert bf16.to_bf16(model) == 2  # the Linear's weight and bias
    assert model[0].weight.dtype == torch.bfloat16
    assert model[1].weight.dtype == model[1].running_var.dtype == model[2].weight.dtype == torch.float32
    assert fp32_norm.weight.dtype == torch.float32
    x = torch.randn(3, 4)
    want = torch.nn.functional.layer_norm(x.bfloat16().float(), (4,), fp32_norm.weight, fp32_norm.bias)
    got = fp32_norm(x.bfloat16())
    assert got.dtype == torch.bfloat16 and (got.float() - want).abs().max().item() < 2e-2


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "causal-float", "causal-bool"])
def test_issue22_sdpa_attention_matches_multihead_attention(batch_first, mask):
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    attn_mask = {"none": None, "causal-bool": causal,
                 "causal-float": torch.zeros(7, 7).masked_fill(causal, float("-inf"))}[mask]
    with torch.no_grad():
        want = attn(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
        assert bf16.sdpa_attention(torch.nn.Sequential(attn)) == 1
        got, weights = attn(x, x, x, need_weights=False, attn_mask=attn_mask)
        assert weights is None and got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-5
        # a call SDPA does not cover (attention weights wanted) falls back to the module's own forward
        out, weights = attn(x, x, x, need_weights=True, attn_mask=attn_mask)
        assert weights is not None and (out - want).abs().max().item() < 1e-5


def test_issue22_bf16_cosine_guard_on_the_embedded_model(native, tmp_path):
    """The embedded, trained tiny-shapes model: bf16 stays ≥ 0.999 to fp32 on held-out shapes, and a row barely
    depends on its batch (bf16 rounding: < 4e-3, where a row of eager fp32 moves by ~1e-7)."""
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.train import recipes

    ref = clipzoo.load("clipzoo/tiny-shapes")
    m = clipzoo.load("clipzoo/tiny-shapes", runtime="bf16")
    assert m.runtime == "bf16" and m.dtype == torch.bfloat16
    records = list(open_dataset(recipes.write_heldout("shapes-heldout:64", tmp_path / "held", ref.image_size)))
    images, texts = [r.image for r in records], [r.captions[0] for r in records]
    cos_image = (m.encode_image(images).float() * ref.encode_image(images)).sum(-1).min().item()
    cos_text = (m.encode_text(texts).float() * ref.encode_text(texts)).sum(-1).min().item()
    assert min(cos_image, cos_text) >= 0.999, (cos_image, cos_text)
    assert cos_image < 1.0 - 1e-6  # it really ran in bf16
    for encode, items in ((m.encode_image, images[:32]), (m.encode_text, texts[:32])):
        alone, batch = encode(items[5:6]).float(), encode(items, batch_size=32).float()
        assert (alone[0] - batch[5]).abs().max().item() < 4e-3


def test_issue22_bf16_is_not_an_auto_candidate_without_native_bf16():
    from clipzoo.runtime import auto

    assert "bf16" not in auto.available("cpu", frozenset({"sse4_2", "avx2", "avx512f", "avx512_vnni"}))
    assert "bf16" in auto.available("cpu", frozenset({"avx512f", "amx_bf16"}))
    assert "bf16" in auto.available("cpu", frozenset({"avx512f", "avx512_bf16"}))
