"""``clipzoo.compat.clip`` against openai's own ``clip`` (the ``clip-anytorch`` package) on the same files."""
from __future__ import annotations

import json
import sys
import types
import warnings

import numpy as np
import open_clip as real_open_clip
import pytest
import torch
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # clip-anytorch imports pkg_resources
    import clip as openai_clip

import clipzoo
from _compat_common import maxdiff, quiet
from clipzoo.compat import clip
from clipzoo.compat._models import ClipModel, OpenAICLIP
from clipzoo.testing import tiny

TOL = 1e-5
TEXTS = ["a photo of a cat", "a red circle on the left", "Ünïcödé &amp; emoji 🐈 猫", ""]
OPENAI_NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                "ViT-L/14@336px"]


@pytest.fixture(autouse=True)
def reset_active_tokenizer(monkeypatch):
    """clip.tokenize follows the last clip.load (module state): keep each test's own."""
    monkeypatch.setattr(clip, "_active_comparator", None)


@pytest.fixture(scope="module")
def pil_images():
    rng = np.random.default_rng(1)
    out = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(48, 64), (70, 33), (32, 32)]]
    out.append(Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8), "L"))     # greyscale
    out.append(Image.fromarray(rng.integers(0, 255, (45, 45, 4), dtype=np.uint8), "RGBA"))  # with alpha
    return out


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat-clip")
    return {"siglip": tiny.write_open_clip_hub_folder(root / "siglip", config=tiny.TINY_SIGLIP_CONFIG),
            "coca": tiny.write_open_clip_hub_folder(root / "coca", config=tiny.TINY_COCA_CONFIG)}


# --------------------------------------------------------------------------- catalogue
def test_available_models_lists_openai_names_first_then_every_other_alias():
    names = clip.available_models()
    assert names[:9] == OPENAI_NAMES == openai_clip.available_models()
    assert "[clip - openai - ViT-B/32]" not in names  # the same model as "ViT-B/32"
    assert "[clip - openai - ViT-B-32/openai]" in names  # open_clip's pair is its own card
    assert "[siglip - google - siglip-base-patch16-224]" in names
    servable = [c for c in clipzoo.REGISTRY if {"image", "text"} <= set(c.modalities)]
    assert len(names) == len(set(names)) == 9 + len(servable) - 9


def test_available_models_lists_only_what_openais_api_can_serve(tiny_files):
    """issue 20 §6: no audio (or image-only) models in ``clip.available_models()``."""
    names = set(clip.available_models())
    audio = [c.alias for c in clipzoo.REGISTRY if "audio" in c.modalities]
    assert audio, "the registry has audio models (CLAP) to leave out"
    assert not names & set(audio)
    card = clipzoo.register(architecture="clap", publisher="test", id="audio-only-compat", backend="open_clip",
                            modalities=("audio", "text"),
                            path=str(tiny_files["openai_state_dict"]))
    try:
        assert card.alias not in clip.available_models()
    finally:
        clipzoo.REGISTRY.unregister(card.alias)


def test_unknown_model_raises_runtime_error_like_openai():
    with pytest.raises(RuntimeError, match=r"^Model no-such-model not found; "):
        clip.load("no-such-model", device="cpu")


# --------------------------------------------------------------------------- parity with openai
def test_openai_clip_loads_our_tiny_archive_both_ways(tiny_files, pil_images):
    """issue 20 §6: the TorchScript archive our tests write is one openai's own ``clip.load`` accepts,
    with ``jit=True`` (the archive, device/dtype patched) and ``jit=False`` (``build_model``)."""
    path = str(tiny_files["openai_jit"])
    jit_model, jit_pre = quiet(openai_clip.load, path, device="cpu", jit=True)
    py_model, py_pre = quiet(openai_clip.load, path, device="cpu", jit=False)
    ours, pre = quiet(clip.load, path, device="cpu")
    assert isinstance(jit_model, torch.jit.ScriptModule) and not isinstance(py_model, torch.jit.ScriptModule)
    assert jit_model.input_resolution.item() == py_model.visual.input_resolution == 32
    pixels = torch.stack([py_pre(im) for im in pil_images])
    assert torch.equal(torch.stack([jit_pre(im) for im in pil_images]), pixels)
    assert torch.equal(torch.stack([pre(im) for im in pil_images]), pixels)
    tokens = openai_clip.tokenize(TEXTS)
    with torch.no_grad():
        jit_out, py_out, our_out = jit_model(pixels, tokens), py_model(pixels, tokens), ours(pixels, tokens)
        diffs = {}
        for label, ref in (("jit", jit_model), ("py", py_model)):
            diffs[f"{label} encode_image"] = maxdiff(ours.encode_image(pixels), ref.encode_image(pixels))
            diffs[f"{label} encode_text"] = maxdiff(ours.encode_text(tokens), ref.encode_text(tokens))
    assert isinstance(jit_out, tuple) and len(jit_out) == 2  # openai's forward: logits, not open_clip's 3-tuple
    for i in range(2):
        diffs[f"jit logits[{i}]"] = maxdiff(jit_out[i], our_out[i])
        diffs[f"py logits[{i}]"] = maxdiff(py_out[i], our_out[i])
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("fmt", ["openai_jit", "openai_state_dict"])
def test_load_matches_openai_clip(fmt, tiny_files, pil_images):
    path = str(tiny_files[fmt])
    ref, ref_pre = quiet(openai_clip.load, path, device="cpu", jit=False)
    model, preprocess = quiet(clip.load, path, device="cpu")

    # the real open_clip module, with openai's API and OpenAI's state-dict layout
    assert isinstance(model, real_open_clip.CLIP) and isinstance(model, OpenAICLIP)
    assert set(model.state_dict()) == set(ref.state_dict())
    assert model.visual.input_resolution == ref.visual.input_resolution == 32
    assert model.dtype == ref.dtype == torch.float32
    assert isinstance(model.logit_scale, torch.nn.Parameter)
    assert model.logit_scale.item() == ref.logit_scale.item()
    assert not model.training

    pixels = torch.stack([ref_pre(im) for im in pil_images])
    ours = torch.stack([preprocess(im) for im in pil_images])
    assert torch.equal(ours, pixels), "preprocess differs from openai's"

    tokens = openai_clip.tokenize(TEXTS)
    assert torch.equal(clip.tokenize(TEXTS), tokens)
    with torch.no_grad():
        ref_img, ref_txt = ref.encode_image(pixels), ref.encode_text(tokens)
        img, txt = model.encode_image(pixels), model.encode_text(tokens)
        ref_lpi, ref_lpt = ref(pixels, tokens)
        lpi, lpt = model(pixels, tokens)
    diffs = {"encode_image": maxdiff(img, ref_img), "encode_text": maxdiff(txt, ref_txt),
             "logits_per_image": maxdiff(lpi, ref_lpi), "logits_per_text": maxdiff(lpt, ref_lpt)}
    assert max(diffs.values()) <= TOL, diffs
    assert lpi.shape == (len(pil_images), len(TEXTS)) and torch.equal(lpt, lpi.t())
    assert not torch.allclose(img.norm(dim=-1), torch.ones(len(pil_images)))  # unnormalised, as openai's


def _text_through_internals(model, tokens):
    """How CoOp-style prompt learners encode text: openai's internals, sequence-first, the mask inside."""
    x = model.token_embedding(tokens).type(model.dtype) + model.positional_embedding.type(model.dtype)
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    return model.ln_final(x)[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def _image_through_internals(model, pixels):
    v = model.visual
    x = v.conv1(pixels).reshape(len(pixels), v.conv1.out_channels, -1).permute(0, 2, 1)
    x = torch.cat([v.class_embedding + torch.zeros(len(pixels), 1, x.shape[-1]), x], dim=1) + v.positional_embedding
    x = v.transformer(v.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
    return v.ln_post(x[:, 0, :]) @ v.proj


def test_openais_internals_run_as_openais(tiny_files):
    """model.transformer / model.visual.transformer were open_clip's (batch-first, the causal mask passed by
    encode_text): code walking openai's internals got text features 2.78 off, without an error."""
    path = str(tiny_files["openai_state_dict"])
    ref, _ = quiet(openai_clip.load, path, device="cpu", jit=False)
    model, _ = quiet(clip.load, path, device="cpu")
    tokens, pixels = clip.tokenize(TEXTS), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = _text_through_internals(model, tokens), _text_through_internals(ref, tokens)
        assert maxdiff(ours, theirs) <= TOL and maxdiff(ours, model.encode_text(tokens)) <= TOL
        ours, theirs = _image_through_internals(model, pixels), _image_through_internals(ref, pixels)
        assert maxdiff(ours, theirs) <= TOL and maxdiff(ours, model.encode_image(pixels)) <= TOL
        assert maxdiff(model(pixels, tokens)[0], ref(pixels, tokens)[0]) <= TOL  # open_clip's own path unchanged
    assert set(model.state_dict()) == set(ref.state_dict())


def test_a_saved_jit_model_loads_back_in_openais_clip(tiny_files, tmp_path):
    """A traced model saved with torch.jit.save held its masks as state-dict entries that openai's build_model
    refused ("Unexpected key(s) in state_dict: attn_mask")."""
    traced, _ = quiet(clip.load, str(tiny_files["openai_state_dict"]), device="cpu", jit=True)
    torch.jit.save(traced, str(tmp_path / "traced.pt"))
    ref, _ = quiet(openai_clip.load, str(tmp_path / "traced.pt"), device="cpu", jit=False)
    tokens = clip.tokenize(TEXTS)
    with torch.no_grad():
        assert maxdiff(ref.encode_text(tokens), traced.encode_text(tokens)) <= TOL


def test_state_dict_loads_into_openais_build_model(tiny_files):
    model, _ = quiet(clip.load, str(tiny_files["openai_state_dict"]), device="cpu")
    from clip.model import build_model

    rebuilt = build_model({k: v.clone() for k, v in model.state_dict().items()}).float().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert maxdiff(rebuilt.encode_image(x), model.encode_image(x)) <= TOL


def test_model_moves_and_casts_like_an_nn_module(tiny_files):
    model, _ = quiet(clip.load, str(tiny_files["openai_state_dict"]), device="cpu")
    model = model.half()
    assert model.dtype == torch.float16
    model.float()
    assert model.dtype == torch.float32


# --------------------------------------------------------------------------- jit
def test_jit_true_returns_the_torchscript_module(tiny_files, pil_images):
    path = str(tiny_files["openai_jit"])
    ref, ref_pre = quiet(openai_clip.load, path, device="cpu", jit=False)
    model, preprocess = quiet(clip.load, path, device="cpu", jit=True)
    assert isinstance(model, torch.jit.ScriptModule)
    pixels = torch.stack([ref_pre(im) for im in pil_images])
    assert torch.equal(torch.stack([preprocess(im) for im in pil_images]), pixels)
    tokens = clip.tokenize(TEXTS)
    with torch.no_grad():
        assert maxdiff(model.encode_image(pixels), ref.encode_image(pixels)) <= TOL
        assert maxdiff(model.encode_text(tokens), ref.encode_text(tokens)) <= TOL


def test_jit_true_returns_a_torchscript_module_that_behaves_as_openais(tiny_files, pil_images):
    """issue 20 §6: ``jit=True`` on a model that is not an archive still gives openai's JIT model."""
    path = str(tiny_files["openai_state_dict"])
    ref_jit, ref_pre = quiet(openai_clip.load, str(tiny_files["openai_jit"]), device="cpu", jit=True)
    model, preprocess = quiet(clip.load, path, device="cpu", jit=True)
    eager, _ = quiet(clip.load, path, device="cpu")
    assert isinstance(model, torch.jit.ScriptModule) and isinstance(ref_jit, torch.jit.ScriptModule)
    assert model.input_resolution.item() == ref_jit.input_resolution.item() == 32
    assert model.context_length.item() == 77 and model.vocab_size.item() == 49408
    pixels = torch.stack([ref_pre(im) for im in pil_images])
    assert torch.equal(torch.stack([preprocess(im) for im in pil_images]), pixels)
    tokens = clip.tokenize(TEXTS)
    with torch.no_grad():
        out, ref_out, eager_out = model(pixels, tokens), ref_jit(pixels, tokens), eager(pixels, tokens)
        diffs = {"encode_image": maxdiff(model.encode_image(pixels), ref_jit.encode_image(pixels)),
                 "encode_text": maxdiff(model.encode_text(tokens), ref_jit.encode_text(tokens))}
    assert isinstance(out, tuple) and len(out) == 2  # (logits_per_image, logits_per_text), as openai's
    diffs.update({f"logits[{i}]": maxdiff(a, b) for i, (a, b) in enumerate(zip(out, ref_out))})
    diffs.update({f"eager[{i}]": maxdiff(a, b) for i, (a, b) in enumerate(zip(out, eager_out))})
    assert max(diffs.values()) <= TOL, diffs


def test_jit_true_on_a_model_that_cannot_be_traced_warns_and_loads_eager(fake_model):
    with pytest.warns(UserWarning, match=r"is not a TorchScript archive nor an open_clip module that can be "
                                         r"traced \(fake backend\)"):
        model, _ = clip.load(fake_model, device="cpu", jit=True)
    assert isinstance(model, ClipModel)


# --------------------------------------------------------------------------- other models
def test_siglip_style_model_logits_include_its_bias(tiny_folders):
    folder = str(tiny_folders["siglip"])
    ref = quiet(real_open_clip.create_model_from_pretrained, f"local-dir:{folder}", return_transform=False).eval()
    model, _ = quiet(clip.load, folder, device="cpu")
    x, tokens = torch.randn(2, 3, 32, 32), clip.tokenize(TEXTS)
    with torch.no_grad():
        ref_lpi, _ = ref.get_logits(x, tokens)
        lpi, lpt = model(x, tokens)
    assert model.logit_bias.item() == -10.0
    assert maxdiff(lpi, ref_lpi) <= TOL and torch.equal(lpt, lpi.t())


def test_tokenize_follows_a_model_with_another_tokenizer(tiny_folders, tiny_files):
    folder = str(tiny_folders["coca"])  # CoCa: context 76, wrapped generically
    ref = quiet(real_open_clip.create_model_from_pretrained, f"local-dir:{folder}", return_transform=False).eval()
    ref_tok = real_open_clip.get_tokenizer(f"local-dir:{folder}")
    model, preprocess = quiet(clip.load, folder, device="cpu")
    assert isinstance(model, ClipModel)
    assert model.visual.input_resolution == 32 and model.dtype == torch.float32
    tokens = clip.tokenize(TEXTS)
    assert tokens.shape == (len(TEXTS), 76) and torch.equal(tokens, ref_tok(TEXTS))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert maxdiff(model.encode_image(x), ref.encode_image(x, normalize=False)) <= TOL
        assert maxdiff(model.encode_text(tokens), ref.encode_text(tokens, normalize=False)) <= TOL
        lpi, lpt = model(x, tokens)
        img = ref.encode_image(x, normalize=True)
        txt = ref.encode_text(tokens, normalize=True)
    assert maxdiff(lpi, ref.logit_scale.exp() * img @ txt.t()) <= TOL
    with pytest.raises(RuntimeError, match="longer than the model's context length 76"):
        clip.tokenize(" ".join(["word"] * 100))
    assert torch.equal(clip.tokenize(" ".join(["word"] * 100), truncate=True),
                       ref_tok(" ".join(["word"] * 100)))

    quiet(clip.load, str(tiny_files["openai_state_dict"]), device="cpu")  # back to OpenAI's tokenizer
    assert torch.equal(clip.tokenize(TEXTS), openai_clip.tokenize(TEXTS))


# --------------------------------------------------------------------------- a non-open_clip backend
class _HubLikeModel(torch.nn.Module):
    """Stands in for an HF model: holds its own log-scale and bias parameters."""

    def __init__(self):
        super().__init__()
        cfg = {**tiny.TINY_CONFIG, "text_cfg": {**tiny.TINY_CONFIG["text_cfg"], "context_length": 16}}
        self.towers = tiny.tiny_model(3, cfg)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-3.0))


def _fake_backend():
    from clipzoo.comparator import Comparator
    from clipzoo.errors import BadTextError

    class FakeComparator(Comparator):
        probability = "sigmoid"

        def __init__(self, card):
            model = _HubLikeModel().eval()
            super().__init__(card, model, transform=real_open_clip.image_transform(32, is_train=False),
                             embed_dim=32, image_size=32, context_length=16)
            self.tok = real_open_clip.SimpleTokenizer(context_length=16)

        def encode_pixels(self, pixels):
            return self.model.towers.encode_image(pixels)

        def encode_tokens(self, tokens):
            return self.model.towers.encode_text(tokens)

        def tokenize(self, texts, truncate=False):
            if not truncate and any(len(self.tok.encode(t)) + 2 > 16 for t in texts):
                raise BadTextError("text too long for 16 tokens")
            return self.tok(texts)

        def logit_params(self):
            return self.model.logit_scale.exp(), self.model.logit_bias

    module = types.ModuleType("clipzoo_fake_backend")
    module.load = lambda card, **kw: FakeComparator(card)
    return module


@pytest.fixture()
def fake_model(monkeypatch):
    from clipzoo import backends

    monkeypatch.setitem(sys.modules, "clipzoo_fake_backend", _fake_backend())
    monkeypatch.setitem(backends.BACKENDS, "fake", ("clipzoo_fake_backend", "fake"))
    card = clipzoo.register(architecture="siglip", publisher="test", id="fake-compat-clip", backend="fake")
    yield card.alias
    clipzoo.REGISTRY.unregister(card.alias)


def test_any_comparator_gets_openais_model_api(fake_model, pil_images):
    assert fake_model in clip.available_models()
    model, preprocess = clip.load(fake_model, device="cpu")
    assert isinstance(model, ClipModel)
    inner = model.comparator.model
    assert model.logit_scale is inner.logit_scale and model.logit_bias is inner.logit_bias
    tokens = clip.tokenize(TEXTS[:2])
    assert tokens.shape == (2, 16) and torch.equal(tokens, model.comparator.tok(TEXTS[:2]))
    pixels = torch.stack([preprocess(im) for im in pil_images])
    with torch.no_grad():
        img, txt = inner.towers.encode_image(pixels), inner.towers.encode_text(tokens)
        assert maxdiff(model.encode_image(pixels), img) <= TOL
        assert maxdiff(model.visual(pixels), img) <= TOL
        lpi, lpt = model(pixels, tokens)
    ref = inner.logit_scale.exp() * (img / img.norm(dim=1, keepdim=True)) @ (txt / txt.norm(dim=1, keepdim=True)).t() \
        + inner.logit_bias
    assert maxdiff(lpi, ref) <= TOL and torch.equal(lpt, lpi.t())
    with pytest.raises(RuntimeError):
        clip.tokenize("a long text " * 10)


def test_install_serves_openais_submodules(tiny_files):
    """`sys.modules["clip"] = shim` left `from clip import clip`, `clip.model.build_model` and
    `clip.simple_tokenizer.SimpleTokenizer` (CoOp's imports) failing: install() serves them, in a subprocess so
    that the alias does not leak into other tests."""
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import json, sys, warnings
        warnings.simplefilter("ignore")
        import torch
        import clip as real
        sd = torch.load({str(tiny_files["openai_state_dict"])!r}, weights_only=True)
        ref16 = real.model.build_model(dict(sd))
        ref = real.model.build_model(dict(sd)).float()
        real_tokens = real.simple_tokenizer.SimpleTokenizer().encode("a photo of a cat, 猫")
        real_url = real.clip._MODELS["ViT-B/32"]
        for name in [k for k in sys.modules if k == "clip" or k.startswith("clip.")]:
            del sys.modules[name]
        import clipzoo.compat.clip as shim
        shim.install()
        import clip
        from clip import clip as inner
        from clip.model import build_model
        from clip.simple_tokenizer import SimpleTokenizer
        model = build_model(dict(sd))
        dtypes = {{n: str(p.dtype) for n, p in model.named_parameters()}}
        ref_dtypes = {{n: str(p.dtype) for n, p in ref16.named_parameters()}}
        model = model.float()
        t, x = clip.tokenize(["a cat", "a dog"]), torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            text = float((model.encode_text(t) - ref.encode_text(t)).abs().max())
            image = float((model.encode_image(x) - ref.encode_image(x)).abs().max())
        tokens = SimpleTokenizer().encode("a photo of a cat, 猫") == real_tokens
        print(json.dumps({{"inner": inner is shim, "tokens": tokens,
                          "dtypes": dtypes == ref_dtypes, "eval": not model.training, "text": text, "image": image,
                          "url": clip._MODELS["ViT-B/32"] == real_url}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"inner": True, "tokens": True, "dtypes": True, "eval": True, "text": 0.0, "image": 0.0,
                   "url": True}
