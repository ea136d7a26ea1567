"""The sentence-transformers backend against ``SentenceTransformer.encode`` on tiny random-weight folders:
a multilingual-style text tower (DistilBERT + mean pooling + Dense) paired with a CLIP image model, and a
CLIP SentenceTransformer alone. Features and logits within 1e-5."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")

import clipzoo  # noqa: E402
from clipzoo.errors import BadTextError, ModelNotCachedError, UnsupportedError  # noqa: E402
from clipzoo.testing import tiny_hf  # noqa: E402

TOL = 1e-5
TEXTS = ["a photo of a cat", "une photo d'un chat", "一只狗的照片", "Ein Hund?", "x"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{(kind, legacy): folder}: kinds "text" and "clip", in the hub's old layout and in today's."""
    root = tmp_path_factory.mktemp("tiny_st")
    out = {}
    for legacy in (True, False):
        tag = "legacy" if legacy else "current"
        out["text", legacy] = tiny_hf.write_st_text(root / f"text-{tag}", legacy=legacy)
        out["clip", legacy] = tiny_hf.write_st_clip(root / f"clip-{tag}", legacy=legacy)
    return out


def sample_images():
    from PIL import Image

    rs = np.random.RandomState(0)
    return [Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(48, 48), (40, 64), (90, 50)]]


def st_model(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


def cosine_logits(scale, image_features, text_features):
    a = torch.nn.functional.normalize(image_features, dim=-1)
    b = torch.nn.functional.normalize(text_features, dim=-1)
    return scale * a @ b.T


@pytest.mark.parametrize("legacy", [True, False], ids=["hub-layout", "current-layout"])
def test_clip_sentence_transformer_parity(legacy, folders):
    folder = folders["clip", legacy]
    m = clipzoo.load(folder)
    ref = st_model(folder)
    assert m.card.backend == "sentence_transformers" and m.modalities == ("image", "text")
    ref_img = ref.encode(sample_images(), convert_to_tensor=True)
    ref_txt = ref.encode(TEXTS, convert_to_tensor=True)
    img, txt = m.encode_image(sample_images(), normalize=False), m.encode_text(TEXTS, normalize=False)
    assert (img - ref_img).abs().max() <= TOL
    assert (txt - ref_txt).abs().max() <= TOL
    scale = ref[0].model.logit_scale.exp().item()
    assert m.logit_scale == pytest.approx(scale)
    assert (m.similarity(img, txt) - cosine_logits(scale, ref_img, ref_txt)).abs().max() <= TOL


def test_clip_sentence_transformer_matches_the_transformers_backend(folders):
    """The same CLIP weights through sentence-transformers and through transformers agree."""
    st = clipzoo.load(folders["clip", True])
    hf = clipzoo.load(folders["clip", True] / "0_CLIPModel")
    assert hf.card.backend == "transformers"
    assert (st.encode_image(sample_images()) - hf.encode_image(sample_images())).abs().max() <= TOL
    assert (st.encode_text(TEXTS) - hf.encode_text(TEXTS)).abs().max() <= TOL


@pytest.mark.parametrize("legacy", [True, False], ids=["hub-layout", "current-layout"])
def test_multilingual_text_tower_paired_with_clip(legacy, folders):
    text_folder, clip_folder = folders["text", legacy], folders["clip", legacy]
    m = clipzoo.load(text_folder, image_model=clip_folder)
    text_ref, image_ref = st_model(text_folder), st_model(clip_folder)
    assert m.modalities == ("image", "text") and m.context_length == 128 and m.embed_dim == tiny_hf.EMBED

    ref_txt = text_ref.encode(TEXTS, convert_to_tensor=True)
    ref_img = image_ref.encode(sample_images(), convert_to_tensor=True)
    txt, img = m.encode_text(TEXTS, normalize=False), m.encode_image(sample_images(), normalize=False)
    assert (txt - ref_txt).abs().max() <= TOL
    assert (img - ref_img).abs().max() <= TOL
    scale = image_ref[0].model.logit_scale.exp().item()
    assert m.logit_scale == pytest.approx(scale)  # the paired CLIP model's scale
    assert (m.similarity(img, txt) - cosine_logits(scale, ref_img, ref_txt)).abs().max() <= TOL

    probs = m.predict(sample_images(), ["cat", "dog"], templates=["a photo of a {}", "une photo d'un {}"])
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)


def test_image_model_may_be_any_comparator_or_an_hf_folder(folders):
    clip_st = clipzoo.load(folders["clip", True])
    by_comparator = clipzoo.load(folders["text", True], image_model=clip_st)
    assert by_comparator.image_tower is clip_st
    by_hf_folder = clipzoo.load(folders["text", True], image_model=folders["clip", True] / "0_CLIPModel")
    assert by_hf_folder.image_tower.card.backend == "transformers"
    for m in (by_comparator, by_hf_folder):
        assert (m.encode_image(sample_images()) - clip_st.encode_image(sample_images())).abs().max() <= TOL
    assert by_comparator.preprocess(sample_images()[1]).shape == (3, tiny_hf.IMAGE, tiny_hf.IMAGE)


def test_text_tower_alone_is_text_only(folders):
    m = clipzoo.load(folders["text", True])
    assert m.modalities == ("text",)
    assert m.encode_text("a cat").shape == (1, tiny_hf.EMBED)
    with pytest.raises(UnsupportedError, match="image"):
        m.encode_image(sample_images())


def test_embedding_sizes_must_match(folders, tmp_path):
    wide = tiny_hf.write_st_text(tmp_path / "wide", out_dim=24)
    with pytest.raises(UnsupportedError, match="24"):
        clipzoo.load(wide, image_model=folders["clip", True])


def test_too_long_text(folders):
    m = clipzoo.load(folders["text", True])
    long_text = " ".join(["a photo of a cat"] * 40)
    with pytest.raises(BadTextError, match="context length 128"):
        m.encode_text(long_text)
    assert m.tokenize([long_text, "a cat"], truncate=True).shape == (2, 128)
    ref = st_model(folders["text", True]).encode([long_text], convert_to_tensor=True)  # truncates silently
    assert (m.encode_text(long_text, truncate=True, normalize=False) - ref).abs().max() <= TOL


# ------------------------------------------------------------------------------------ hub cache
MULTILINGUAL = "[clip - sbert - clip-ViT-B-32-multilingual-v1]"


def test_catalog_multilingual_model_loads_offline_from_cache(offline, folders):
    """The catalogued card pairs the text tower with sentence-transformers/clip-ViT-B-32, both from the cache."""
    cache = offline / "hub"
    tiny_hf.cache_as_hub(folders["text", True], "sentence-transformers/clip-ViT-B-32-multilingual-v1", cache)
    tiny_hf.cache_as_hub(folders["clip", True], "sentence-transformers/clip-ViT-B-32", cache)
    m = clipzoo.load(MULTILINGUAL, cache_dir=cache)
    assert m.image_tower.card.source.hf_repo == "sentence-transformers/clip-ViT-B-32"
    local = clipzoo.load(folders["text", True], image_model=folders["clip", True])
    assert (m.encode_text(TEXTS) - local.encode_text(TEXTS)).abs().max() <= TOL
    assert (m.encode_image(sample_images()) - local.encode_image(sample_images())).abs().max() <= TOL


def test_not_cached_names_the_repo(offline, folders):
    cache = offline / "hub"
    with pytest.raises(ModelNotCachedError, match="sentence-transformers/clip-ViT-B-32-multilingual-v1"):
        clipzoo.load(MULTILINGUAL, cache_dir=cache)
    # the text tower is cached, its image model is not: the error names the image model's repo
    tiny_hf.cache_as_hub(folders["text", True], "sentence-transformers/clip-ViT-B-32-multilingual-v1", cache)
    with pytest.raises(ModelNotCachedError, match="'sentence-transformers/clip-ViT-B-32'"):
        clipzoo.load(MULTILINGUAL, cache_dir=cache)


def test_uncatalogued_hub_id_detects_sentence_transformers_offline(offline, folders):
    """An hf-hub: id not in the catalogue whose cached root has modules.json (no config.json) loads as
    a sentence-transformers model, with the hub unreachable."""
    cache = offline / "hub"
    snapshot = tiny_hf.cache_as_hub(folders["clip", True], "someone/st-clip", cache)
    assert (snapshot / "modules.json").exists() and not (snapshot / "config.json").exists()
    m = clipzoo.load("hf-hub:someone/st-clip", cache_dir=cache)
    assert m.card.backend == "sentence_transformers"
    local = clipzoo.load(folders["clip", True])
    assert (m.encode_text(TEXTS) - local.encode_text(TEXTS)).abs().max() <= TOL
