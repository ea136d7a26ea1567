"""Every open_clip / OpenAI checkpoint format, loaded offline, against the reference implementations."""
from __future__ import annotations

import json
import warnings

import numpy as np
import open_clip
import pytest
import torch

import clipzoo
from clipzoo.errors import (
    ArchitectureMismatchError,
    BadImageError,
    BadTextError,
    CheckpointError,
    ModelNotCachedError,
    UnknownModelError,
    UnsafePickleError,
)
from clipzoo.testing.tiny import TINY_CONFIG

TEXTS = ["a photo of a cat", "a red circle on the left", "Ünïcödé & emoji 🐈 猫"]
TOL = 1e-5


def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clipzoo.load(str(path), **kw)


def _ref_open_clip(path):
    from open_clip.model import CLIP

    model = CLIP(**TINY_CONFIG).eval()
    open_clip.load_checkpoint(model, str(path))
    return model


def _compare(comp, ref_model, ref_preprocess, ref_tokens, images):
    pixels = torch.stack([ref_preprocess(im) for im in images])
    assert torch.equal(comp.pixels(images), pixels), "preprocessing differs from the reference"
    with torch.no_grad():
        ri, rt = ref_model.encode_image(pixels).float(), ref_model.encode_text(ref_tokens).float()
    ci = comp.encode_image(images, normalize=False)
    ct = comp.encode_text(TEXTS, normalize=False)
    assert (ci - ri).abs().max() <= TOL
    assert (ct - rt).abs().max() <= TOL
    ref_logits = ref_model.logit_scale.exp() * (ri / ri.norm(dim=-1, keepdim=True)) @ (rt / rt.norm(dim=-1, keepdim=True)).T  # noqa: E501
    logits = comp.similarity(comp.encode_image(images), comp.encode_text(TEXTS))
    assert (logits - ref_logits).abs().max() <= TOL * 100  # logits are scaled by ~14
    return float((ci - ri).abs().max()), float((ct - rt).abs().max())


@pytest.mark.parametrize("fmt", ["openai_jit", "openai_state_dict"])
def test_openai_formats_match_openai_clip(fmt, tiny_files, images):
    import clip as openai_clip

    ref, ref_pre = openai_clip.load(str(tiny_files[fmt]), device="cpu", jit=False)
    comp = _load(tiny_files[fmt])
    assert type(comp.model).__name__ == "CLIP"
    assert (comp.embed_dim, comp.image_size, comp.context_length) == (32, 32, 77)
    _compare(comp, ref, ref_pre, openai_clip.tokenize(TEXTS), images)


@pytest.mark.parametrize("fmt", ["open_clip_pt", "open_clip_safetensors"])
def test_open_clip_files_match_open_clip(fmt, tiny_files, images):
    ref = _ref_open_clip(tiny_files[fmt])
    ref_pre = open_clip.image_transform(32, is_train=False)
    comp = _load(tiny_files[fmt])
    _compare(comp, ref, ref_pre, open_clip.tokenize(TEXTS), images)


def test_open_clip_hub_folder_matches_open_clip(tiny_files, images):
    folder = tiny_files["open_clip_hub"]
    ref, ref_pre = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    comp = _load(folder)
    _compare(comp, ref.eval(), ref_pre, tok(TEXTS), images)


def test_model_name_selects_a_config(tiny_files, tmp_path, images):
    cfg = tmp_path / "tiny-test-cfg.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(cfg))
    ref = open_clip.create_model("tiny-test-cfg", pretrained=str(tiny_files["open_clip_pt"])).eval()
    comp = _load(tiny_files["open_clip_pt"], model_name="tiny-test-cfg")
    assert comp.model_name == "tiny-test-cfg"
    _compare(comp, ref, open_clip.image_transform(32, is_train=False), open_clip.tokenize(TEXTS), images)


def test_inferred_layout_warns(tiny_files):
    with pytest.warns(UserWarning, match="inferred from tensor shapes in OpenAI's layout"):
        clipzoo.load(str(tiny_files["openai_state_dict"]))


def test_registered_checkpoint_loads_by_alias(tiny_files):
    card = clipzoo.register(architecture="clip", publisher="me", id="tiny-run", path=str(tiny_files["open_clip_hub"]))
    try:
        comp = clipzoo.load("[clip - me - tiny-run]")
        direct = clipzoo.load(str(tiny_files["open_clip_hub"]))
        assert comp.card.alias == card.alias
        assert torch.equal(comp.encode_text("hi"), direct.encode_text("hi"))
    finally:
        clipzoo.REGISTRY.unregister(card.alias)


def test_hub_cache_offline(tiny_files, tmp_path, monkeypatch):
    """An hf-hub: open_clip repo loads from huggingface_hub's cache layout with the hub unreachable."""
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--someone--tiny-clip"
    snap = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_files["open_clip_hub"], snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    comp = clipzoo.load("hf-hub:someone/tiny-clip", cache_dir=str(tmp_path))
    assert comp.card.backend == "open_clip"
    assert comp.encode_text("x").shape == (1, 32)
    with pytest.raises(ModelNotCachedError, match="'someone/other-clip'.*not in the local Hugging Face cache"):
        clipzoo.load("hf-hub:someone/other-clip", cache_dir=str(tmp_path))


def test_pretrained_tag_not_cached_names_the_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotCachedError, match="laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        clipzoo.load("open_clip:ViT-B-32/laion2b_s34b_b79k", cache_dir=str(tmp_path))


def test_api_shapes_and_predict(tiny_files, images, image_files):
    comp = _load(tiny_files["open_clip_hub"])
    f_pil = comp.encode_image(images)
    comp.encode_image(image_files)  # paths load too
    assert f_pil.shape == (3, 32) and torch.allclose(f_pil.norm(dim=-1), torch.ones(3))
    arr = np.array(images[0])
    assert torch.allclose(comp.encode_image(arr), f_pil[:1], atol=1e-6)
    assert torch.allclose(comp.encode_image(torch.from_numpy(arr)), f_pil[:1], atol=1e-6)
    pix = comp.preprocess(images[0])
    assert torch.allclose(comp.encode_image(pix), f_pil[:1], atol=1e-6)
    assert torch.allclose(comp.encode_image(images, batch_size=2), f_pil, atol=1e-6)
    probs = comp.predict(images, ["cat", "dog"], templates=["a {}", "the {}"])
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(-1), torch.ones(3)) and not probs.requires_grad
    w = comp.classifier(["cat", "dog"], ["a {}", "the {}"])
    t = comp.encode_text(["a cat", "the cat"])
    assert torch.allclose(w[0], torch.nn.functional.normalize(t.mean(0), dim=0), atol=1e-6)
    expected = (comp.logit_scale * comp.encode_image(images) @ w.T).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert comp.logit_scale == pytest.approx(1 / 0.07, rel=1e-5) and comp.logit_bias is None
    assert comp.modalities == ("image", "text")
    assert torch.equal(comp.encode("text", "a"), comp.encode_text("a"))


def test_gradients_flow_from_float_pixels(tiny_files):
    comp = _load(tiny_files["open_clip_hub"])
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    score = comp.similarity(comp.encode_image(x), comp.encode_text("a cat")).sum()
    score.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_precisions(tiny_files, images):
    fp32 = _load(tiny_files["open_clip_hub"])
    bf16 = _load(tiny_files["open_clip_hub"], precision="bf16")
    a, b = fp32.encode_image(images), bf16.encode_image(images)
    assert b.dtype == torch.float32 and torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    with pytest.raises(clipzoo.ClipzooError, match="unknown precision 'fp8'"):
        _load(tiny_files["open_clip_hub"], precision="fp8")


# ------------------------------------------------------------------------------ bad input
def test_too_long_text(tiny_files):
    comp = _load(tiny_files["open_clip_hub"])
    long = "word " * 100
    with pytest.raises(BadTextError, match=r"is 102 tokens, longer than the model's context length 77; shorten it, "
                                           r"pass truncate=True where the call takes it, or load the model with "
                                           r"long_text='truncate' or 'chunks'$"):
        comp.encode_text(long)
    assert comp.encode_text(long, truncate=True).shape == (1, 32)
    with pytest.raises(BadTextError, match="text 1 is a int"):
        comp.encode_text(["ok", 3])


def test_bad_images(tiny_files, tmp_path):
    comp = _load(tiny_files["open_clip_hub"])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(BadImageError, match=r"image '.*broken.jpg' cannot be decoded"):
        comp.encode_image([str(bad)])
    with pytest.raises(BadImageError, match="does not exist"):
        comp.encode_image(str(tmp_path / "nope.png"))
    with pytest.raises(BadImageError, match="must be 32x32 for this model, got 20x20"):
        comp.encode_image(torch.rand(1, 3, 20, 20))
    with pytest.raises(BadImageError, match="dtype float64 is not uint8"):
        comp.encode_image(np.zeros((8, 8, 3)))


def test_unsafe_pickle_refused(tmp_path, tiny_files):
    import collections

    path = tmp_path / "pickled.pt"
    sd = collections.OrderedDict(torch.load(tiny_files["openai_state_dict"], weights_only=True))
    torch.save({"state_dict": sd, "args": argparse_like()}, path)
    with pytest.raises(UnsafePickleError, match="pass trust_pickle=True"):
        clipzoo.load(str(path))
    comp = _load(path, trust_pickle=True)
    assert comp.embed_dim == 32


class argparse_like:  # noqa: N801 - a stand-in for the argparse.Namespace open_clip's old checkpoints carry
    lr = 0.1


def test_corrupt_and_wrong_files(tmp_path, tiny_files):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        clipzoo.load(str(empty))
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(tiny_files["open_clip_safetensors"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        clipzoo.load(str(truncated))
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        clipzoo.load(str(text))
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="not a model folder clipzoo knows"):
        clipzoo.load(str(folder))


def test_architecture_mismatch_names_keys(tmp_path, tiny_files):
    sd = torch.load(tiny_files["openai_state_dict"], weights_only=True)
    sd.pop("ln_final.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    cfg = tmp_path / "tiny-mismatch.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(cfg))
    with pytest.raises(ArchitectureMismatchError, match=r"1 missing key\(s\) \[ln_final.weight\], 1 unexpected key\(s\) \[extra.weight\]"):  # noqa: E501
        _load(path, model_name="tiny-mismatch")
    with pytest.raises(ArchitectureMismatchError, match=r"tiny-open_clip.pt: model config 'ViT-B-32' builds a model "
                                                        r"of 151,277,313 parameters where the weights hold 3,384,897"):
        _load(tiny_files["open_clip_pt"], model_name="ViT-B-32")  # refused before ViT-B-32 is allocated
    with pytest.raises(UnknownModelError, match="open_clip has no model config 'ViT-Q-99'"):
        _load(tiny_files["open_clip_pt"], model_name="ViT-Q-99")


def test_untrained_card_warns():
    with pytest.warns(UserWarning, match="random \\(untrained\\) weights"):
        comp = clipzoo.load("open_clip:RN50")  # config only
    assert comp.embed_dim == 1024 and comp.image_size == 224


@pytest.mark.parametrize("variant", ["siglip", "coca"])
def test_siglip_and_coca_variants_match_open_clip(variant, tmp_path, images):
    from clipzoo.testing.tiny import TINY_COCA_CONFIG, TINY_SIGLIP_CONFIG, write_open_clip_hub_folder

    config = TINY_SIGLIP_CONFIG if variant == "siglip" else TINY_COCA_CONFIG
    folder = write_open_clip_hub_folder(tmp_path / variant, seed=3, config=config)
    ref, ref_pre = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    comp = _load(folder)
    ref = ref.eval()
    pixels = torch.stack([ref_pre(im) for im in images])
    with torch.no_grad():
        ri = ref.encode_image(pixels, normalize=True)
        rt = ref.encode_text(tok(TEXTS), normalize=True)
    assert (comp.encode_image(images) - ri).abs().max() <= TOL
    assert (comp.encode_text(TEXTS) - rt).abs().max() <= TOL
    logits = comp.similarity(comp.encode_image(images), comp.encode_text(TEXTS))
    ref_logits = ref.logit_scale.exp() * ri @ rt.T
    if variant == "siglip":
        assert comp.probability == "sigmoid" and comp.logit_bias == pytest.approx(-10.0)
        ref_logits = ref_logits + ref.logit_bias
        probs = comp.predict(images, ["cat", "dog"])
        assert not torch.allclose(probs.sum(-1), torch.ones(3))  # independent sigmoids, not a softmax
    else:
        assert type(comp.model).__name__ == "CoCa" and comp.context_length == 76
    assert (logits - ref_logits).abs().max() <= 1e-4


def test_text_features_skip_the_padding_after_the_longest_text(tiny_files):
    """A causal text tower pooled at end-of-text: clipzoo runs only the columns up to the batch's last
    end-of-text token; features equal open_clip's full-context encode_text, for any mix of lengths."""
    import open_clip

    from clipzoo.models.padding_free import trimmable as _trimmable

    m = clipzoo.load(str(tiny_files["open_clip_safetensors"]))
    assert _trimmable(m.model)
    long = " ".join(["word"] * 70)  # 72 tokens with start and end: almost the whole context
    for texts in (["a dog"], ["a dog", "a photo of a red circle on a blue background"], ["a dog", long]):
        tokens = m.tokenize(texts)
        with torch.no_grad():
            full = m.model.encode_text(tokens)
        assert torch.allclose(m.encode_tokens(tokens), full, atol=1e-5), texts
    from clipzoo.testing.tiny import TINY_CONFIG

    siglip = open_clip.CLIP(**{**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "no_causal_mask": True,
                                                            "pool_type": "last"}})
    assert not _trimmable(siglip)  # bidirectional attention: the padding matters, the whole context runs
