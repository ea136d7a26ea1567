"""Issue 20 §6: mmc's API, complete (clipzoo.compat.mmc and the core pieces it rests on).

Modalities read and write files as mmc's do (image path <-> PIL, text file <-> str, audio file <-> samples and
rate) and custom modalities register; ``supports_modality`` on cards, loaders, Comparators and ensembles; every
match of a registry query loads at once; any loaded model wraps into openai's ``clip`` model API; mmc's raw-dot
``compare`` is ``normalize=False`` beside our cosine.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clipzoo
from clipzoo.api import load_all
from clipzoo.compat import mmc
from clipzoo.errors import BadAudioError, BadImageError, BadTextError, ClipzooError, UnknownModelError, UnsupportedError
from clipzoo.modalities import AUDIO, IMAGE, TEXT, get_modality, register_modality, unregister_modality
from clipzoo.registry import REGISTRY
from clipzoo.testing.tiny import write_open_clip_hub_folder

TEXTS = ["a red circle", "a photo of a dog", "two birds"]
CLAP = "[clap - laion - clap-htsat-unfused]"


@pytest.fixture(scope="module")
def tiny_cards(tmp_path_factory):
    """Two registered tiny open_clip models matching the query ``[mmctest - me - *]``."""
    root = tmp_path_factory.mktemp("mmc")
    cards = [clipzoo.register(architecture="mmctest", publisher="me", id=f"tiny-{seed}",
                              path=str(write_open_clip_hub_folder(root / f"tiny{seed}", seed=seed)))
             for seed in (0, 1)]
    yield cards
    for card in cards:
        REGISTRY.unregister(card.alias)


@pytest.fixture(scope="module")
def m(tiny_cards):
    return clipzoo.load(tiny_cards[0].alias)


def test_issue20_s6_mmc_modality_read_write_image_text_audio(tmp_path, images):
    path = IMAGE.write_to_disk(tmp_path / "a.png", images[0])
    back = mmc.IMAGE.read_from_disk(path)
    assert back.mode == "RGB" and back.size == images[0].size
    assert np.array_equal(np.asarray(back), np.asarray(images[0].convert("RGB")))
    arr = np.asarray(images[1].convert("RGB"))
    assert np.array_equal(np.asarray(IMAGE.read_from_disk(IMAGE.write_to_disk(tmp_path / "b.png", arr))), arr)

    text = "une légende\nsur deux lignes"
    assert TEXT.read_from_disk(TEXT.write_to_disk(tmp_path / "c.txt", text)) == text

    rate = 16000
    samples = (0.5 * np.sin(np.linspace(0, 200, rate // 10))).astype(np.float64)
    read, read_rate = AUDIO.read_from_disk(AUDIO.write_to_disk(tmp_path / "d.wav", (samples, rate)))
    assert read_rate == rate and read.shape == (rate // 10, 1)
    assert np.abs(read[:, 0] - samples).max() <= 1 / 32767  # 16-bit PCM, WAV's default

    with pytest.raises(BadImageError, match=r"^image file '.*nope\.png' does not exist; check the path$"):
        IMAGE.read_from_disk(tmp_path / "nope.png")
    with pytest.raises(BadTextError, match=r"^cannot write a int as text to '.*e\.txt'; pass a str$"):
        TEXT.write_to_disk(tmp_path / "e.txt", 3)
    with pytest.raises(BadAudioError, match=r"pass a \(samples, sample_rate\) pair$"):
        AUDIO.write_to_disk(tmp_path / "f.wav", samples)


def test_issue20_s6_mmc_register_custom_modality(tmp_path, m, images):
    depth = register_modality("depth", encoder="encode_image", read=lambda p: np.load(p),
                              write=lambda p, obj: np.save(p, obj))
    try:
        assert get_modality("Depth") is depth and depth == "depth" and depth.name == "depth"
        assert pickle.loads(pickle.dumps(depth)) is depth
        arr = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        assert np.array_equal(depth.read_from_disk(depth.write_to_disk(tmp_path / "x.npy", arr)), arr)
        with pytest.raises(ClipzooError, match=r"^modality 'depth' is already registered; pass overwrite=True"):
            register_modality("depth")
        assert not m.supports_modality(depth)
        m.modalities = (*m.modalities, depth)  # a model that takes depth maps through its image tower
        assert m.supports_modality("depth")
        assert torch.equal(m.encode("depth", images[:2]), m.encode_image(images[:2]))
        notes = register_modality(mmc.Modality(name="notes"))  # mmc's way: Modality(name=...)
        assert get_modality("notes") is notes and notes.read_from_disk(TEXT.write_to_disk(tmp_path / "n", "hi")) == "hi"
    finally:
        m.modalities = (IMAGE, TEXT)
        unregister_modality("depth"), unregister_modality("notes")
    with pytest.raises(ClipzooError, match=r"^unknown modality 'depth'"):
        get_modality("depth")
    with pytest.raises(ClipzooError, match=r"^modality 'image' is built in and cannot be re-registered"):
        register_modality("image")
    with pytest.raises(ClipzooError, match=r"is not a lower-case identifier"):
        register_modality("two words")


def test_issue20_s6_mmc_supports_modality(m, tiny_cards):
    card = tiny_cards[0]
    assert card.supports_modality(IMAGE) and card.supports_modality("text") and not card.supports_modality(AUDIO)
    assert not card.supports_modality("smell")
    clap = REGISTRY.resolve(CLAP)
    assert clap.supports_modality("audio") and not clap.supports_modality(IMAGE)
    assert m.supports_modality(IMAGE) and m.supports_modality(mmc.TEXT) and not m.supports_modality(AUDIO)
    loaders = mmc.REGISTRY.find(architecture="mmctest")
    assert sorted(str(ld) for ld in loaders) == sorted(c.alias for c in tiny_cards)
    assert all(ld.supports_modality(IMAGE) and not ld.supports_modality(AUDIO) for ld in loaders)
    assert [c.alias for c in REGISTRY.find(modality=AUDIO, architecture="clap")] == [
        c.alias for c in REGISTRY.find(architecture="clap") if c.supports_modality(AUDIO)]
    perceptor = mmc.MultiMMC(mmc.TEXT, mmc.IMAGE)
    assert perceptor.supports_image and perceptor.supports_text and not perceptor.supports_audio
    assert perceptor.supports_modality(IMAGE) and not perceptor.supports_modality(AUDIO)


def test_issue20_s6_mmc_load_all_matches_of_a_query(tiny_cards, images):
    models = load_all(architecture="mmctest", publisher="me")
    assert [x.card.alias for x in models] == [c.alias for c in tiny_cards]
    assert [x.card.alias for x in load_all("[mmctest - me - tiny-*]")] == [c.alias for c in tiny_cards]
    assert [x.card.alias for x in mmc.load_all({"id": "tiny-1", "architecture": "mmctest"})] == [tiny_cards[1].alias]
    a, b = (x.encode_image(images) for x in models)
    assert not torch.allclose(a, b)  # two different models, not one loaded twice
    with pytest.raises(UnknownModelError, match=r"^no model matches architecture='mmctest', id='nothing\*'"):
        load_all(architecture="mmctest", id="nothing*")
    perceptor = mmc.MultiMMC(mmc.TEXT, mmc.IMAGE)
    loaded = perceptor.load_model(architecture="mmctest", publisher="me", id=None)
    assert [x.card.alias for x in loaded] == perceptor.aliases == [c.alias for c in tiny_cards]
    score = perceptor.compare(image=images[0], text=TEXTS[0])
    with pytest.warns(UserWarning, match=r"already loaded, not added again \(as mmc skips them\): \[mmctest - me"):
        assert perceptor.load_model(architecture="mmctest", publisher="me", id="tiny-0") == []  # was a second copy
    assert perceptor.aliases == [c.alias for c in tiny_cards]
    assert torch.equal(perceptor.compare(image=images[0], text=TEXTS[0]), score)  # not doubled
    ens = clipzoo.Ensemble()
    assert [x.card.alias for x in ens.add_all("[mmctest - me - *]")] == [c.alias for c in tiny_cards]


def test_issue20_s6_mmc_raw_dot_compare(m, tiny_cards, images):
    img, txt = m.encode_image(images, normalize=False), m.encode_text(TEXTS, normalize=False)
    assert torch.allclose(m.compare(image=images, text=TEXTS, normalize=False), img @ txt.T, atol=1e-5)
    cos = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    assert torch.allclose(m.compare(image=images, text=TEXTS), cos, atol=1e-6)
    assert not torch.allclose(img @ txt.T, cos, atol=1e-3)  # the tiny model's features are not unit length
    with pytest.raises(ClipzooError, match=r"^compare\(\) needs exactly two inputs of image=, audio=, text= \(got 1\)"):
        m.compare(image=images)

    other = clipzoo.load(tiny_cards[1].alias)
    raw_other = other.encode_image(images[:1], normalize=False) @ other.encode_text(TEXTS[:1], normalize=False).T
    ens = clipzoo.Ensemble([m, other], weights=[2, 1])
    out = ens.compare(image=images[:1], text=TEXTS[:1], normalize=False)
    assert torch.allclose(out.similarity, (2 * img[:1] @ txt[:1].T + raw_other) / 3, atol=1e-5)
    perceptor = mmc.MultiMMC(mmc.TEXT, mmc.IMAGE)
    perceptor.add(m, weight=2), perceptor.add(other, weight=1)
    score = perceptor.compare(image=images[0], text=TEXTS[0])  # mmc: Σ weight · dot, weights as given
    assert score.shape == () and torch.allclose(score, (2 * img[:1] @ txt[:1].T + raw_other).reshape(()), atol=1e-5)
    assert torch.allclose(perceptor.similarity(images, TEXTS), ens.compare(image=images, text=TEXTS).similarity)


def test_issue20_s6_mmc_openai_clip_wrapper(m, images):
    """Code written for openai's clip.load result runs on any loaded model."""
    module = mmc.MockOpenaiClipModule(m)
    model, preprocess = module.load("anything")
    assert isinstance(model, mmc.MockOpenaiClip) and model.mmc_object is m
    assert model.visual.input_resolution == m.image_size and model.device == m.device
    image = torch.stack([preprocess(im) for im in images])
    text = module.tokenize(TEXTS)
    with torch.no_grad():
        image_features = model.encode_image(image)
        text_features = model.encode_text(text)
        logits_per_image, logits_per_text = model(image, text)
    assert torch.allclose(image_features, m.encode_image(images, normalize=False), atol=1e-6)
    assert torch.allclose(text_features, m.encode_text(TEXTS, normalize=False), atol=1e-6)
    expected = m.similarity(m.encode_image(images), m.encode_text(TEXTS))
    assert torch.allclose(logits_per_image, expected, atol=1e-4) and torch.equal(logits_per_text, logits_per_image.T)
    assert torch.allclose(model.logit_scale.exp(), torch.tensor(m.logit_scale), rtol=1e-5)
    assert module.available_models() == [m.card.alias]
    loader = mmc.REGISTRY.find(architecture="mmctest", publisher="me", id="tiny-0")[0]
    from_loader, _ = mmc.MockOpenaiClipModule(loader).load()  # mmc's own argument: was an UnknownModelError
    assert torch.equal(from_loader.encode_text(text), text_features)

    class AudioOnly:
        card = REGISTRY.resolve(CLAP)
        modalities = (AUDIO, TEXT)

        def supports_modality(self, modality):
            return modality in self.modalities

    with pytest.raises(UnsupportedError, match=r"has no image modality, which openai's clip API needs"):
        mmc.MockOpenaiClip(AudioOnly())
