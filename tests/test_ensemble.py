"""Modalities as objects, the Ensemble (compare / predict / add by query), and the openai drop-in's refusal."""
from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch

import clipzoo
from clipzoo import AUDIO, IMAGE, TEXT
from clipzoo.cards import ModelCard
from clipzoo.comparator import Comparator
from clipzoo.errors import AmbiguousModelError, ClipzooError
from clipzoo.modalities import Modality, get_modality


@pytest.fixture(scope="module")
def tiny48(tmp_path_factory):
    """A tiny random model at 48 px (OpenAI tokenizer, 77 tokens)."""
    from clipzoo.testing.tiny import TINY_CONFIG, write_open_clip_hub_folder

    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["vision_cfg"]["image_size"] = 48
    folder = write_open_clip_hub_folder(tmp_path_factory.mktemp("t48") / "tiny48", seed=1, config=cfg)
    return clipzoo.load(str(folder))


@pytest.fixture(scope="module")
def shapes():
    """The trained tiny model: 64 px, its own 24-token tokenizer."""
    return clipzoo.load("clipzoo/tiny-shapes")


class TextOnly(Comparator):
    def __init__(self):
        card = ModelCard(architecture="clip", publisher="test", id="text-only", backend="none", modalities=(TEXT,))
        super().__init__(card, torch.nn.Linear(2, 4), transform=None, embed_dim=4, image_size=None,
                         context_length=8, modalities=(TEXT,))


TEXTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


# ----------------------------------------------------------------------------- modalities
def test_modalities_are_the_old_strings():
    assert IMAGE == "image" and TEXT == "text" and AUDIO == "audio"
    assert isinstance(IMAGE, Modality) and isinstance(IMAGE, str)
    assert {"image": 1}[IMAGE] == 1 and "text" in (IMAGE, TEXT)
    assert json.dumps([IMAGE, TEXT]) == '["image", "text"]'
    assert pickle.loads(pickle.dumps(IMAGE)) is IMAGE and copy.deepcopy(TEXT) is TEXT
    assert get_modality("Image") is IMAGE and get_modality(TEXT) is TEXT
    assert IMAGE.encoder == "encode_image" and AUDIO.encoder == "encode_audio"
    with pytest.raises(ClipzooError, match="unknown modality 'smell'"):
        get_modality("smell")


def test_modality_coercion_and_generic_encode(shapes, images):
    assert IMAGE.coerce(images[0]) == [images[0]]
    assert len(IMAGE.coerce(images)) == 3
    tokens = TEXT.coerce(["a red circle"], shapes)
    assert tokens.shape == (1, shapes.context_length)
    assert TEXT.coerce("x") == ["x"]
    assert AUDIO.coerce(("wave", 16000)) == [("wave", 16000)]
    assert all(isinstance(m, Modality) for m in shapes.modalities)
    assert torch.equal(shapes.encode(TEXT, TEXTS), shapes.encode_text(TEXTS))
    assert torch.equal(shapes.encode("image", images), shapes.encode_image(images))
    assert torch.equal(shapes.encode(IMAGE, images, normalize=False), shapes.encode_image(images, normalize=False))
    with pytest.raises(ClipzooError, match="has no audio modality"):
        shapes.encode(AUDIO, ["x.wav"])


# ----------------------------------------------------------------------------- ensemble
def test_compare_is_weighted_mean_of_per_model_cosines(tiny48, shapes, images):
    assert tiny48.image_size != shapes.image_size and tiny48.context_length != shapes.context_length
    ens = clipzoo.Ensemble([tiny48, shapes], weights=[1, 3])
    assert ens.weights == {tiny48.card.alias: 0.25, shapes.card.alias: 0.75}
    assert abs(sum(ens.weights.values()) - 1) < 1e-12
    out = ens.compare(image=images, text=TEXTS)
    assert out.similarity.shape == (3, 4)
    per = {m.card.alias: m.encode_image(images) @ m.encode_text(TEXTS).T for m in (tiny48, shapes)}
    for alias, matrix in per.items():
        assert torch.allclose(out.per_model[alias], matrix, atol=1e-6)
    expected = 0.25 * per[tiny48.card.alias] + 0.75 * per[shapes.card.alias]
    assert torch.allclose(out.similarity, expected, atol=1e-6)
    assert out.similarity.abs().max() <= 1 + 1e-6  # cosines, not logits
    # equal default weights
    even = clipzoo.Ensemble([tiny48, shapes]).compare(image=images, text=TEXTS).similarity
    assert torch.allclose(even, 0.5 * per[tiny48.card.alias] + 0.5 * per[shapes.card.alias], atol=1e-6)


def test_float_tensors_are_01_images_for_an_ensemble(tiny48, shapes):
    x = torch.rand(2, 3, 50, 70)
    out = clipzoo.Ensemble([tiny48, shapes]).compare(image=x, text=TEXTS[:2])
    expected = sum(0.5 * (m.encode_image01(x) @ m.encode_text(TEXTS[:2]).T) for m in (tiny48, shapes))
    assert torch.allclose(out.similarity, expected, atol=1e-6)


def test_predict_rows_sum_to_one_and_average_probabilities(tiny48, shapes, images):
    labels = ["red circle", "blue square", "green triangle"]
    ens = clipzoo.Ensemble([tiny48, shapes], weights=[2, 1])
    probs = ens.predict(images, labels)
    assert probs.shape == (3, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    expected = (2 * tiny48.predict(images, labels) + shapes.predict(images, labels)) / 3
    assert torch.allclose(probs, expected, atol=1e-6)


def test_adding_a_model_without_a_declared_modality_raises(shapes):
    ens = clipzoo.Ensemble([shapes])
    with pytest.raises(ClipzooError) as err:
        ens.add(TextOnly())
    assert str(err.value) == ("cannot add [clip - test - text-only] to the ensemble: it has no image modality "
                              "(it has: text); this ensemble needs image, text")
    assert len(ens) == 1
    # a text-only ensemble takes it
    text_ens = clipzoo.Ensemble([TextOnly()], modalities=(TEXT,))
    assert text_ens.aliases == ["[clip - test - text-only]"]
    # a registered text-only card is refused before anything is loaded
    clipzoo.register(ModelCard(architecture="clip", publisher="test", id="text-card", backend="no-such-backend",
                               modalities=(TEXT,)))
    try:
        with pytest.raises(ClipzooError, match=r"cannot add \[clip - test - text-card\] .* no image modality"):
            ens.add("[clip - test - text-card]")
    finally:
        clipzoo.REGISTRY.unregister("[clip - test - text-card]")


def test_add_by_query_loads_one_and_lists_candidates(shapes):
    ens = clipzoo.Ensemble(modalities=(IMAGE, TEXT))
    with pytest.raises(AmbiguousModelError) as err:
        ens.add("[clip - openai - *]")
    msg = str(err.value)
    n = len(clipzoo.REGISTRY.find(architecture="clip", publisher="openai"))
    assert n > 1 and f"matches {n} models" in msg
    assert "[clip - openai - RN50/openai]" in msg and "full alias" in msg
    with pytest.raises(AmbiguousModelError, match="publisher='openai'"):
        ens.add(architecture="clip", publisher="openai")
    with pytest.raises(AmbiguousModelError):
        ens.add({"publisher": "openai"})
    with pytest.raises(ClipzooError, match="no model matches"):
        ens.add(publisher="no-such-publisher")
    assert len(ens) == 0
    # a query that resolves to exactly one card loads it (the only clipzoo-published model)
    assert [c.alias for c in clipzoo.REGISTRY.find(publisher="clipzoo")] == ["[clip - clipzoo - tiny-shapes]"]
    model = ens.add("[clip - clipzoo]", weight=2.0)
    assert model.card.alias == "[clip - clipzoo - tiny-shapes]"
    ens.add(publisher="clipzoo")
    assert ens.aliases == ["[clip - clipzoo - tiny-shapes]", "[clip - clipzoo - tiny-shapes] #2"]
    assert ens.weights == {"[clip - clipzoo - tiny-shapes]": 2 / 3, "[clip - clipzoo - tiny-shapes] #2": 1 / 3}


def test_bad_weights_are_refused(shapes):
    with pytest.raises(ClipzooError, match="positive"):
        clipzoo.Ensemble([shapes], weights=[0])
    with pytest.raises(ClipzooError, match="one weight per model"):
        clipzoo.Ensemble([shapes], weights=[1, 2])


# ----------------------------------------------------------------------------- the openai drop-in (§5)
def test_compat_clip_load_refuses_an_ensemble(shapes):
    from clipzoo.compat import clip

    with pytest.raises(ClipzooError, match="clip.load cannot load an Ensemble"):
        clip.load(clipzoo.Ensemble([shapes]), device="cpu")
    with pytest.raises(ClipzooError, match="clip.load cannot load a list of models"):
        clip.load(["clipzoo/tiny-shapes", "clipzoo/tiny-shapes"], device="cpu")


def test_wrapped_single_model_keeps_input_resolution(tiny48):
    from clipzoo.compat import clip
    from clipzoo.compat._models import ClipModel

    model, preprocess = clip.load("clipzoo/tiny-shapes", device="cpu")
    assert model.visual.input_resolution == 64
    model, preprocess = clip.load(str(tiny48.card.source.path), device="cpu")
    assert model.visual.input_resolution == 48
    assert ClipModel(tiny48).visual.input_resolution == 48  # the generic wrapper too
