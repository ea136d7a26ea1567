"""``clipzoo.compat.open_clip`` against open_clip itself on the same tiny checkpoints."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import open_clip as real_open_clip
import pytest
import torch
from PIL import Image

import clipzoo
from _compat_common import maxdiff, quiet, register_tiny_config
from clipzoo.compat import open_clip
from clipzoo.compat._models import OpenClipModel
from clipzoo.compat.open_clip import ComparatorTokenizer
from clipzoo.compat.open_clip._routing import route as _route
from clipzoo.errors import UnsupportedError
from clipzoo.testing import tiny

TOL = 1e-5
TEXTS = ["a photo of a cat", "a red circle on the left", "Ünïcödé &amp; emoji 🐈 猫"]
CFG_NAME = "tiny-compat-open-clip"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """The tiny config registered with open_clip under its own name (as a user's add_model_config)."""
    return register_tiny_config(real_open_clip, tmp_path_factory.mktemp("cfg"), CFG_NAME)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat-open-clip")
    return {"siglip": tiny.write_open_clip_hub_folder(root / "siglip", config=tiny.TINY_SIGLIP_CONFIG),
            "coca": tiny.write_open_clip_hub_folder(root / "coca", config=tiny.TINY_COCA_CONFIG)}


@pytest.fixture(scope="module")
def pil_images():
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(48, 64), (70, 33), (32, 32)]]


def _ref(tiny_config, path):
    """open_clip's own: create_model with the tiny config + load_checkpoint of the same file."""
    model = real_open_clip.create_model(tiny_config)
    real_open_clip.load_checkpoint(model, str(path))
    return model.eval()


def _compare(model, ref, pixels, tokens) -> dict:
    with torch.no_grad():
        out = {"encode_image": maxdiff(model.encode_image(pixels), ref.encode_image(pixels)),
               "encode_text": maxdiff(model.encode_text(tokens), ref.encode_text(tokens)),
               "encode_image(normalize=True)": maxdiff(model.encode_image(pixels, normalize=True),
                                                        ref.encode_image(pixels, normalize=True))}
        for i, (a, b) in enumerate(zip(model(pixels, tokens), ref(pixels, tokens))):
            out[f"forward[{i}]"] = maxdiff(a, b)
        out["logits"] = maxdiff(model.get_logits(pixels, tokens)[0], ref.get_logits(pixels, tokens)[0])
    assert max(out.values()) <= TOL, out
    return out


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize("fmt", ["open_clip_pt", "open_clip_safetensors"])
def test_open_clip_name_and_file_pass_straight_through(fmt, tiny_config, tiny_files, pil_images):
    path = tiny_files[fmt]
    model, train, val = quiet(open_clip.create_model_and_transforms, tiny_config, pretrained=str(path))
    ref = _ref(tiny_config, path)
    _, ref_train, ref_val = quiet(real_open_clip.create_model_and_transforms, tiny_config)
    assert type(model) is real_open_clip.CLIP
    pixels = torch.stack([ref_val(im) for im in pil_images])
    assert torch.equal(torch.stack([val(im) for im in pil_images]), pixels)
    assert [type(t).__name__ for t in train.transforms] == [type(t).__name__ for t in ref_train.transforms]
    _compare(model.eval(), ref, pixels, real_open_clip.tokenize(TEXTS))


@pytest.mark.parametrize("fmt", ["open_clip_pt", "open_clip_safetensors", "open_clip_hub", "openai_jit",
                                 "openai_state_dict"])
def test_local_checkpoint_as_model_name_loads_through_clipzoo(fmt, tiny_config, tiny_files, pil_images):
    path = tiny_files[fmt]
    model, train, val = quiet(open_clip.create_model_and_transforms, str(path))
    if fmt.startswith("openai"):
        ref = quiet(real_open_clip.load_openai_model, str(path), precision="fp32", device="cpu").eval()
    elif fmt == "open_clip_hub":
        ref = _ref(tiny_config, path / "open_clip_model.safetensors")
    else:
        ref = _ref(tiny_config, path)
    _, ref_train, ref_val = quiet(real_open_clip.create_model_and_transforms, tiny_config)
    assert type(model) is real_open_clip.CLIP  # the real open_clip module, not a wrapper
    assert model.visual.preprocess_cfg["size"] == (32, 32)  # visual.image_size, as open_clip records it
    pixels = torch.stack([ref_val(im) for im in pil_images])
    assert torch.equal(torch.stack([val(im) for im in pil_images]), pixels)
    assert [type(t).__name__ for t in train.transforms] == [type(t).__name__ for t in ref_train.transforms]
    _compare(model, ref, pixels, open_clip.get_tokenizer(str(path))(TEXTS))


def test_siglip_folder_forward_and_output_dict_match_open_clip(folders, pil_images):
    folder = folders["siglip"]
    ref, ref_pre = quiet(real_open_clip.create_model_from_pretrained, f"local-dir:{folder}")
    model, pre = quiet(open_clip.create_model_from_pretrained, str(folder))
    ref.eval()
    pixels = torch.stack([ref_pre(im) for im in pil_images])
    assert torch.equal(torch.stack([pre(im) for im in pil_images]), pixels)
    tokens = open_clip.get_tokenizer(str(folder))(TEXTS)
    assert torch.equal(tokens, real_open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS))
    with torch.no_grad():
        out, ref_out = model(pixels, tokens), ref(pixels, tokens)
    assert len(out) == len(ref_out) == 4  # image, text, logit_scale.exp(), logit_bias
    assert max(maxdiff(a, b) for a, b in zip(out, ref_out)) <= TOL

    as_dict = quiet(open_clip.create_model, str(folder), output_dict=True)
    with torch.no_grad():
        d = as_dict(pixels, tokens)
    assert set(d) == {"image_features", "text_features", "logit_scale", "logit_bias"}
    assert maxdiff(d["logit_bias"], ref_out[3]) == 0.0
    # local-dir: is open_clip's own schema and passes straight through
    native = quiet(open_clip.create_model_from_pretrained, f"local-dir:{folder}", return_transform=False)
    assert type(native) is real_open_clip.CLIP


def test_coca_folder_is_the_real_coca_module(folders):
    folder = folders["coca"]
    model = quiet(open_clip.create_model_from_pretrained, str(folder), return_transform=False)
    ref = quiet(real_open_clip.create_model_from_pretrained, f"local-dir:{folder}", return_transform=False).eval()
    assert type(model) is real_open_clip.CoCa
    tok = open_clip.get_tokenizer(str(folder))
    assert tok.context_length == 76
    x, tokens = torch.randn(2, 3, 32, 32), tok(TEXTS)
    with torch.no_grad():
        assert maxdiff(model.encode_image(x), ref.encode_image(x)) <= TOL
        assert maxdiff(model.encode_text(tokens), ref.encode_text(tokens)) <= TOL


# --------------------------------------------------------------------------- a non-open_clip backend
class _HubLikeModel(torch.nn.Module):
    """Stands in for an HF model (its own log-scale and bias parameters, another tokenizer)."""

    def __init__(self):
        super().__init__()
        cfg = {**tiny.TINY_CONFIG, "text_cfg": {**tiny.TINY_CONFIG["text_cfg"], "context_length": 16}}
        self.towers = tiny.tiny_model(4, cfg)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.5))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-4.0))


def _fake_backend(loads: list):
    from clipzoo.comparator import Comparator
    from clipzoo.errors import BadTextError

    class FakeComparator(Comparator):
        probability = "sigmoid"

        def __init__(self, card):
            super().__init__(card, _HubLikeModel().eval(), embed_dim=32, image_size=32, context_length=16,
                             transform=real_open_clip.image_transform(32, is_train=False, mean=(0.5,) * 3,
                                                                      std=(0.5,) * 3, interpolation="bilinear"))
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

    def load(card, **kw):
        loads.append(kw)
        return FakeComparator(card)

    module = types.ModuleType("clipzoo_fake_open_clip_backend")
    module.load = load
    return module


@pytest.fixture()
def fake(monkeypatch):
    from clipzoo import backends

    loads: list = []
    monkeypatch.setitem(sys.modules, "clipzoo_fake_open_clip_backend", _fake_backend(loads))
    monkeypatch.setitem(backends.BACKENDS, "fake", ("clipzoo_fake_open_clip_backend", "fake"))
    card = clipzoo.register(architecture="siglip", publisher="testpub", id="fake-compat-open-clip", backend="fake")
    yield card.alias, loads
    clipzoo.REGISTRY.unregister(card.alias)
    open_clip.factory.COMPARATORS.clear()


def test_any_comparator_gets_open_clips_model_api(fake, pil_images):
    alias, loads = fake
    model, train, val = open_clip.create_model_and_transforms(alias, pretrained="testpub", precision="amp")
    assert isinstance(model, OpenClipModel) and loads[-1]["precision"] == "fp32"
    comp, inner = model.comparator, model.comparator.model
    assert val is comp.transform and type(train.transforms[0]).__name__ == "RandomResizedCrop"
    assert model.visual.preprocess_cfg["mean"] == (0.5, 0.5, 0.5)
    assert model.visual.preprocess_cfg["interpolation"] == "bilinear"
    assert model.logit_scale is inner.logit_scale and model.logit_bias is inner.logit_bias

    tokenizer = open_clip.get_tokenizer(alias)
    assert isinstance(tokenizer, ComparatorTokenizer) and len(loads) == 1  # reused, not loaded again
    tokens = tokenizer(TEXTS + ["a long text " * 10])  # truncates, as open_clip's tokenizers do
    assert tokens.shape == (4, 16) and torch.equal(tokens, comp.tok(TEXTS + ["a long text " * 10]))

    pixels = torch.stack([val(im) for im in pil_images])
    with torch.no_grad():
        img = inner.towers.encode_image(pixels, normalize=True)
        txt = inner.towers.encode_text(tokens, normalize=True)
        feats_i, feats_t, scale, bias = model(pixels, tokens)
        logits, logits_t = model.get_logits(pixels, tokens)
        raw = model.encode_image(pixels)
    assert maxdiff(feats_i, img) <= TOL and maxdiff(feats_t, txt) <= TOL
    assert maxdiff(raw, inner.towers.encode_image(pixels)) <= TOL
    assert scale.item() == pytest.approx(float(torch.tensor(2.5).exp())) and bias.item() == -4.0
    assert maxdiff(logits, scale * img @ txt.T + bias) <= TOL and torch.equal(logits_t, logits.T)

    model.output_dict = True
    with torch.no_grad():
        d = model(pixels, None)
    assert d["text_features"] is None and maxdiff(d["image_features"], img) <= TOL and "logit_bias" in d


def test_listings_are_exactly_open_clips_and_registry_models_are_listed_apart(fake):
    """issue 20 §6: ``list_models()`` returns exactly open_clip's list; our aliases elsewhere."""
    alias, _ = fake
    assert open_clip.list_models() == real_open_clip.list_models()
    assert open_clip.list_pretrained() == real_open_clip.list_pretrained()
    assert open_clip.list_pretrained(as_str=True) == real_open_clip.list_pretrained(as_str=True)
    assert open_clip.list_pretrained_tags_by_model("ViT-B-32") == real_open_clip.list_pretrained_tags_by_model("ViT-B-32")  # noqa: E501
    assert open_clip.list_pretrained_models_by_tag("openai") == real_open_clip.list_pretrained_models_by_tag("openai")
    assert open_clip.list_pretrained_tags_by_model(alias) == []
    assert open_clip.list_pretrained_models_by_tag("testpub") == []
    assert alias in open_clip.list_registry_models() and alias not in open_clip.list_models()
    pairs = open_clip.list_registry_pretrained()
    assert (alias, "testpub") in pairs and f"{alias}:testpub" in open_clip.list_registry_pretrained(as_str=True)
    assert ("[siglip - google - siglip-base-patch16-224]", "google") in pairs
    assert not any(name.startswith("[clip - openai - ViT") for name, _ in pairs)  # open_clip names those
    assert isinstance(open_clip.create_model(alias, pretrained="testpub"), OpenClipModel)  # what create_model takes


def test_architecture_options_are_refused_only_for_models_without_an_open_clip_config(fake):
    alias, _ = fake
    with pytest.raises(UnsupportedError, match=r"^force_image_size cannot be applied to \[siglip - testpub - "
                       r"fake-compat-open-clip\]: it is a fake model, not an open_clip architecture"):
        open_clip.create_model(alias, force_image_size=64)
    with pytest.raises(UnsupportedError, match="force_custom_text, some_kwarg cannot be applied"):
        open_clip.create_model(alias, force_custom_text=True, some_kwarg=1)
    with pytest.raises(UnsupportedError, match="pretrained='laion2b'"):
        open_clip.create_model(alias, pretrained="laion2b")
    with pytest.warns(UserWarning, match="jit=True"):
        open_clip.create_model(alias, jit=True)
    # base-weight flags pick weights only when no full checkpoint is loaded: no-ops here, as in open_clip
    model = open_clip.create_model(alias, pretrained_hf=False, pretrained_image=True)
    assert isinstance(model, OpenClipModel)


# --------------------------------------------------------------------------- routing and pass-through
def test_routing():
    assert _route("ViT-B/32", None).native and _route("ViT-B/32", None).model_name == "ViT-B/32"
    r = _route("[clip - laion - ViT-B-32/laion2b_s34b_b79k]", None)
    assert r.native and (r.model_name, r.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    r = _route("open_clip:ViT-B-32/laion2b_s34b_b79k", None)
    assert r.native and (r.model_name, r.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert not _route("[siglip - google - siglip-base-patch16-224]", None).native
    assert not _route("hf-hub:google/siglip-base-patch16-224", None).native  # an HF repo: clipzoo loads it
    assert _route("local-dir:/somewhere", None).native
    with pytest.raises(RuntimeError, match="not found"):
        _route("no-such-model", None)
    # open_clip's names are case-sensitive: "rn50" loaded the registry's OpenAI RN50 weights with pretrained=None,
    # "vit-b-32" was clipzoo's AmbiguousModelError; open_clip says the config is not found
    for name, spelled in (("rn50", "RN50"), ("vit-b-32", "ViT-B-32"), ("vit-b/32", "ViT-B-32")):
        with pytest.raises(RuntimeError, match=rf"^Model config for '{name}' not found: open_clip's architecture "
                                               rf"names are case-sensitive — did you mean '{spelled}'\?$"):
            open_clip.create_model(name)
        with pytest.raises(RuntimeError, match=f"'{name.replace('/', '-')}' not found"):
            real_open_clip.create_model(name)
    # open_clip's get_tokenizer gives its default tokenizer for a name it does not know (the shim raised)
    ours, theirs = open_clip.get_tokenizer("no-such-model"), real_open_clip.get_tokenizer("no-such-model")
    assert type(ours) is type(theirs) and torch.equal(ours(TEXTS), theirs(TEXTS))
    with pytest.raises(UnsupportedError):
        _route("[clip - laion - ViT-B-32/laion2b_s34b_b79k]", "openai")


def test_open_clip_functions_and_attributes_pass_through():
    assert open_clip.tokenize is real_open_clip.tokenize and open_clip.decode is real_open_clip.decode
    assert open_clip.load_checkpoint is real_open_clip.load_checkpoint
    assert open_clip.OPENAI_IMAGENET_TEMPLATES is real_open_clip.OPENAI_IMAGENET_TEMPLATES
    assert open_clip.CLIP is real_open_clip.CLIP and open_clip.image_transform is real_open_clip.image_transform
    tok = open_clip.get_tokenizer("ViT-B-32")
    assert torch.equal(tok(TEXTS), real_open_clip.get_tokenizer("ViT-B-32")(TEXTS))
    with pytest.raises(AttributeError):
        open_clip.no_such_attribute  # noqa: B018


# --------------------------------------------------------------------------- architecture options (issue 20 §6)
def test_force_custom_text_is_honoured_as_open_clips_factory_does(tiny_config, tiny_files, pil_images):
    """``force_custom_text`` on a model clipzoo loads (a checkpoint path): open_clip's ``CustomTextCLIP``,
    its text tower open_clip's ``TextTransformer`` with the text projection, features equal to open_clip's."""
    from open_clip.transformer import TextTransformer

    path = str(tiny_files["open_clip_pt"])
    assert not _route(path, None).native  # a file path: loaded by clipzoo, not by open_clip
    model = quiet(open_clip.create_model, path, force_custom_text=True)
    ref = quiet(real_open_clip.create_model, tiny_config, pretrained=path, force_custom_text=True).eval()
    assert type(model) is type(ref) is real_open_clip.CustomTextCLIP
    assert isinstance(model.text, TextTransformer) and model.text.text_projection.shape == (64, 32)
    assert set(model.state_dict()) == set(ref.state_dict())
    val = real_open_clip.image_transform(32, is_train=False)
    _compare(model, ref, torch.stack([val(im) for im in pil_images]), real_open_clip.tokenize(TEXTS))


def test_other_architecture_options_rebuild_as_open_clip_does(tiny_config, tiny_files, pil_images):
    path = str(tiny_files["open_clip_safetensors"])
    kw = dict(force_image_size=64, force_context_length=32, force_patch_dropout=0.0)
    model, _, val = quiet(open_clip.create_model_and_transforms, path, **kw)
    ref, _, ref_val = quiet(real_open_clip.create_model_and_transforms, tiny_config, pretrained=path, **kw)
    ref.eval()
    assert model.visual.image_size == ref.visual.image_size == (64, 64)
    assert model.visual.preprocess_cfg["size"] == (64, 64) and model.positional_embedding.shape[0] == 32
    x = torch.randn(2, 3, 64, 64)
    _compare(model, ref, x, real_open_clip.tokenize(TEXTS, context_length=32))
    assert torch.equal(torch.stack([val(im) for im in pil_images]), torch.stack([ref_val(im) for im in pil_images]))
    scripted = quiet(open_clip.create_model, path, jit=True)
    assert isinstance(scripted, torch.jit.ScriptModule)


@pytest.fixture(scope="module")
def hf_text_folder(tmp_path_factory):
    """An open_clip folder whose text tower is an HF BERT read from a local folder (so it loads offline)."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("hf-text")
    bert = root / "bert"
    bert.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "photo", "of"]
    (bert / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(bert)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=40)).save_pretrained(bert)
    cfg = {"embed_dim": 32, "vision_cfg": tiny.TINY_CONFIG["vision_cfg"],
           "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "linear",
                        "hf_pooler_type": "cls_pooler", "context_length": 16}}
    folder = root / "open_clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg,
                                                              "preprocess_cfg": tiny.OPENAI_PREPROCESS}))
    torch.manual_seed(1)
    full = real_open_clip.CustomTextCLIP(**{**cfg, "text_cfg": {**cfg["text_cfg"], "hf_model_pretrained": False}})
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder, BertModel.from_pretrained(bert).embeddings.word_embeddings.weight.detach(), \
        full.text.transformer.embeddings.word_embeddings.weight.detach()


def test_pretrained_hf_is_honoured_for_hf_text_towers(hf_text_folder):
    """``pretrained_hf`` (open_clip's old name of ``pretrained_text``): with no full checkpoint loaded,
    True takes the HF text tower's pretrained weights, False leaves it untrained — as open_clip does;
    with the checkpoint loaded the checkpoint's weights win either way."""
    folder, hf_weights, ckpt_weights = hf_text_folder

    def word_embeddings(model):
        return model.text.transformer.embeddings.word_embeddings.weight.detach()

    for flag in (True, False):
        ours = quiet(open_clip.create_model, str(folder), load_weights=False, pretrained_hf=flag)
        ref = quiet(real_open_clip.create_model, f"local-dir:{folder}", load_weights=False, pretrained_hf=flag)
        assert type(ours) is real_open_clip.CustomTextCLIP
        assert torch.equal(word_embeddings(ours), hf_weights) is flag
        assert torch.equal(word_embeddings(ref), hf_weights) is flag
    for flag in (True, False):
        full = quiet(open_clip.create_model, str(folder), pretrained_hf=flag)
        assert torch.equal(word_embeddings(full), ckpt_weights)


def test_the_embedded_model_is_open_clips_own_module(monkeypatch):
    """clipzoo builds the embedded model with its own plain modules (a fast start); through the drop-ins it came
    back as a wrapper without lock_image_tower / transformer, its keys prefixed, its options refused
    ("not an open_clip architecture") and its tokenizer without context_length."""
    from clipzoo.compat import clip as clip_shim
    from clipzoo.compat._models import OpenAICLIP

    plain = clipzoo.load("clipzoo/tiny-shapes")
    model = open_clip.create_model("clipzoo/tiny-shapes")
    assert type(model) is real_open_clip.CLIP and hasattr(model, "lock_image_tower")
    theirs = real_open_clip.create_model(f"local-dir:{plain.card.source.path}")
    assert set(model.state_dict()) == set(theirs.state_dict())  # were prefixed "comparator.model."
    # open_clip's factory hands modules out in train mode (its README: call model.eval()); this one came in eval
    # mode, so a fine-tuning loop ran its BatchNorms on frozen statistics
    assert model.training and theirs.training and not plain.model.training
    assert all(m.training for m in model.modules())
    tokenizer = open_clip.get_tokenizer("clipzoo/tiny-shapes")
    tokens = tokenizer(TEXTS)
    with torch.no_grad():
        assert maxdiff(model.encode_text(tokens), plain.encode_text(TEXTS, normalize=False)) <= 1e-5
    assert tokenizer(TEXTS, context_length=10).shape == (len(TEXTS), 10)
    quick = open_clip.create_model("clipzoo/tiny-shapes", force_quick_gelu=True)
    assert type(quick) is real_open_clip.CLIP
    monkeypatch.setattr(clip_shim, "_active_comparator", None)  # clip.tokenize follows the last clip.load
    openai_model, _ = clip_shim.load("clipzoo/tiny-shapes", device="cpu")
    assert isinstance(openai_model, OpenAICLIP)
