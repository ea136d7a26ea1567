"""The HF transformers backend against transformers itself, on tiny random-weight folders written by
``save_pretrained`` (with real tokenizers and image processors): features and logits within 1e-5."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

import clipzoo  # noqa: E402
from clipzoo.errors import (  # noqa: E402
    ArchitectureMismatchError,
    BadTextError,
    CheckpointError,
    ModelNotCachedError,
    UnsupportedError,
)
from clipzoo.testing import tiny_hf  # noqa: E402

TOL = 1e-5
FAMILIES = ["clip", "siglip", "siglip2", "siglip2_naflex", "chinese_clip", "altclip"]
SIGLIP = {"siglip", "siglip2", "siglip2_naflex"}
TEXTS = ["a photo of a cat", "A Red Square, on white!", "一只狗的照片", "two birds", "x", "Ein Hund?"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny model is written once, on first use."""
    root = tmp_path_factory.mktemp("tiny_hf")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = tiny_hf.WRITERS[name](root / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def loaded(folders):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = clipzoo.load(folders(name))
        return cache[name]

    return get


def sample_images(square_only: bool = False):
    from PIL import Image

    rs = np.random.RandomState(0)
    shapes = [(48, 48), (300, 300)] if square_only else [(48, 48), (40, 64), (90, 50)]
    return [Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def reference(folder, name, imgs, texts, context_length):
    """What transformers computes on the same folder, used the documented way."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    if name in SIGLIP:
        # SigLIP was trained on texts padded to the full context with no attention mask (big_vision,
        # open_clip); transformers 5 tokenizers also return a mask, which the model must not be given.
        text_inputs = {"input_ids": processor.tokenizer(texts, padding="max_length", max_length=context_length,
                                                        return_tensors="pt")["input_ids"]}
    else:
        text_inputs = dict(processor.tokenizer(texts, padding=True, return_tensors="pt"))
    image_inputs = dict(processor(images=imgs, return_tensors="pt"))
    with torch.no_grad():
        image_features = model.get_image_features(**image_inputs).pooler_output
        text_features = model.get_text_features(**text_inputs).pooler_output
        logits = model(**text_inputs, **image_inputs).logits_per_image
    return image_inputs, image_features, text_features, logits


@pytest.mark.parametrize("name", FAMILIES)
def test_parity_with_transformers(name, folders, loaded):
    m = loaded(name)
    imgs = sample_images(square_only=name == "siglip2_naflex")
    pixels, ref_img, ref_txt, ref_logits = reference(folders(name), name, imgs, TEXTS, m.context_length)

    img = m.encode_image(imgs, normalize=False)
    txt = m.encode_text(TEXTS, normalize=False)
    assert (img - ref_img).abs().max() <= TOL
    assert (txt - ref_txt).abs().max() <= TOL
    assert (m.similarity(img, txt) - ref_logits).abs().max() <= TOL
    logits_per_image, logits_per_text = m(imgs, TEXTS)
    assert (logits_per_image - ref_logits).abs().max() <= TOL
    assert torch.equal(logits_per_text, logits_per_image.T)
    # the token-tensor path gives the same features as the string path
    assert (m.encode_text(m.tokenize(TEXTS), normalize=False) - txt).abs().max() <= TOL

    if name == "siglip2_naflex":  # NaFlex pixels are patches; ours are the same patches as an image
        from clipzoo.backends.transformers import to_patches

        ours, mask, shapes = to_patches(torch.stack([m.preprocess(i) for i in imgs]), *m._naflex)
        assert (ours - pixels["pixel_values"]).abs().max() <= TOL
        assert torch.equal(shapes, pixels["spatial_shapes"].long())
    else:
        ours = torch.stack([m.preprocess(i) for i in imgs])
        assert (ours - pixels["pixel_values"]).abs().max() <= TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_attributes(name, loaded):
    import transformers

    m = loaded(name)
    hf_class = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "SiglipModel",
                "siglip2_naflex": "Siglip2Model", "chinese_clip": "ChineseCLIPModel", "altclip": "AltCLIPModel"}[name]
    assert isinstance(m.model, getattr(transformers, hf_class))
    assert m.hf_tokenizer is not None and m.image_processor is not None
    assert m.embed_dim == m.encode_text("a cat").shape[-1] == m.encode_image(sample_images()[:1]).shape[-1]
    assert m.image_size == (256 if name == "siglip2_naflex" else tiny_hf.IMAGE)
    assert m.preprocess(sample_images()[1]).shape == (3, m.image_size, m.image_size)
    assert m.context_length == {"chinese_clip": 52, "clip": 77, "altclip": 77}.get(name, 16)
    if name in SIGLIP:
        assert m.probability == "sigmoid"
        assert m.logit_scale == pytest.approx(10.0) and m.logit_bias == pytest.approx(-10.0)
    else:
        assert m.probability == "softmax" and m.logit_bias is None
        assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


@pytest.mark.parametrize("name", ["siglip", "siglip2"])
def test_siglip_pads_to_context_and_uses_sigmoid(name, loaded):
    m = loaded(name)
    tokens = m.tokenize(["a cat", "a photo of a dog"])
    assert tokens.shape == (2, m.context_length)
    assert tokens[0, -1] == m.hf_tokenizer.pad_token_id  # padded to the full context, pad attended to
    imgs = sample_images()
    probs = m.predict(imgs, ["cat", "dog", "bird"])
    logits = m.similarity(m.encode_image(imgs), m.classifier(["cat", "dog", "bird"]))
    assert torch.allclose(probs, torch.sigmoid(logits), atol=1e-6)
    assert not torch.allclose(probs.sum(-1), torch.ones(len(imgs)))


def test_clip_predict_is_softmax(loaded):
    m = loaded("clip")
    probs = m.predict(sample_images(), ["cat", "dog", "bird"], templates=["a photo of a {}.", "a {}"])
    assert probs.shape == (3, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_too_long_text(name, loaded):
    m = loaded(name)
    long_text = " ".join(["a photo of a cat"] * 40)
    with pytest.raises(BadTextError, match="context length"):
        m.encode_text(long_text)
    with pytest.raises(BadTextError, match="truncate=True"):
        m.tokenize([long_text])
    tokens = m.tokenize([long_text, "a cat"], truncate=True)
    assert tokens.shape == (2, m.context_length)
    assert m.encode_text(long_text, truncate=True).shape == (1, m.embed_dim)
    # a text of exactly the context length is accepted
    exact = m.tokenize(["a"], truncate=True)
    assert exact.shape[1] == m.context_length


def test_precision_fp16(folders, loaded):
    ref = loaded("clip")
    m = clipzoo.load(folders("clip"), precision="fp16")
    assert m.dtype == torch.float16
    assert (m.encode_image(sample_images()) - ref.encode_image(sample_images())).abs().max() < 1e-2
    assert (m.encode_text(TEXTS) - ref.encode_text(TEXTS)).abs().max() < 1e-2


def test_hf_class_override(folders):
    m = clipzoo.load(folders("clip"), hf_class="CLIPModel")
    assert type(m.model).__name__ == "CLIPModel"


# ------------------------------------------------------------------------------------ hub cache


def test_hub_id_not_cached_names_the_repo(offline):
    empty = offline / "empty_cache"
    with pytest.raises(ModelNotCachedError, match="openai/clip-vit-base-patch32"):
        clipzoo.load("[clip - openai - clip-vit-base-patch32]", cache_dir=empty)
    with pytest.raises(ModelNotCachedError, match="google/siglip-base-patch16-224"):
        clipzoo.load("hf-hub:google/siglip-base-patch16-224", cache_dir=empty)
    with pytest.raises(ModelNotCachedError, match="nobody/no-such-model"):
        clipzoo.load("hf-hub:nobody/no-such-model", cache_dir=empty)


@pytest.mark.parametrize("name,repo,spec", [
    ("clip", "openai/clip-vit-base-patch32", "[clip - openai - clip-vit-base-patch32]"),
    ("siglip", "google/siglip-base-patch16-224", "hf-hub:google/siglip-base-patch16-224"),
    ("altclip", "tiny/altclip", "hf-hub:tiny/altclip"),
])
def test_loads_offline_from_hub_cache(name, repo, spec, offline, folders, loaded):
    cache = offline / "hub"
    tiny_hf.cache_as_hub(folders(name), repo, cache)
    m = clipzoo.load(spec, cache_dir=cache)
    assert m.card.source.hf_repo == repo
    local = loaded(name)
    assert (m.encode_image(sample_images()) - local.encode_image(sample_images())).abs().max() <= TOL
    assert (m.encode_text(TEXTS) - local.encode_text(TEXTS)).abs().max() <= TOL


# ------------------------------------------------------------------------------------ bad input
def test_weights_that_do_not_fit_name_the_keys(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(folders("clip"), bad)
    sd = load_file(bad / "model.safetensors")
    sd.pop("text_projection.weight")
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ArchitectureMismatchError, match="text_projection.weight"):
        clipzoo.load(bad)

    shutil.copy(folders("clip") / "model.safetensors", bad / "model.safetensors")
    config = json.loads((bad / "config.json").read_text())
    config["projection_dim"] = 8
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArchitectureMismatchError, match="visual_projection.weight"):
        clipzoo.load(bad)


def test_not_an_image_text_model(tmp_path):
    folder = tiny_hf.write_distilbert(tmp_path / "distilbert")
    with pytest.raises(UnsupportedError, match="distilbert"):
        clipzoo.load(folder)


@pytest.mark.parametrize("keep,missing", [
    (("config.json", "model.safetensors", "processor_config.json"), "tokenizer"),
    (("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"), "image processor"),
])
def test_folder_without_tokenizer_or_image_processor(keep, missing, folders, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in keep:
        shutil.copy(folders("clip") / f, bare / f)
    with pytest.raises(CheckpointError, match=missing):
        clipzoo.load(bare)


def test_a_file_is_not_a_folder(folders):
    from clipzoo.backends.transformers import load
    from clipzoo.registry import local_card

    card = local_card(str(folders("clip") / "config.json")).replace(backend="transformers")
    with pytest.raises(CheckpointError, match="folder"):
        load(card)


def test_hub_fetch_skips_other_frameworks_and_falls_back_to_bin(monkeypatch, tmp_path):
    """Only PyTorch files are fetched; ``*.bin`` weights only where a model folder has no safetensors."""
    import clipzoo.backends.transformers as hf_backend
    from clipzoo.backends.transformers import hub_model_folder

    calls = []
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")

    def fake_snapshot(repo, cache_dir=None, revision=None, allow_patterns=None):
        calls.append(list(allow_patterns))
        return snapshot

    monkeypatch.setattr(hf_backend, "hub_snapshot", fake_snapshot)
    assert hub_model_folder("org/old-repo") == snapshot  # no weights among the first files: fetch *.bin too
    assert len(calls) == 2 and "*.bin" in calls[1] and "*.bin" not in calls[0]
    assert not any(p.endswith((".h5", ".msgpack", ".onnx")) for p in calls[1])

    calls.clear()
    (snapshot / "model.safetensors").write_bytes(b"")
    hub_model_folder("org/new-repo")
    assert len(calls) == 1
