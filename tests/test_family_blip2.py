"""Issue 20 §2: BLIP-2 retrieval (``Blip2ForImageTextRetrieval``) against transformers itself.

A tiny random model written by ``save_pretrained`` with BLIP-2's processor (:mod:`clipzoo.testing.tiny_blip2`):
our preprocessing equals the processor's ``pixel_values`` on five odd-sized images; our per-query features, text
features and ITC scores equal the model's ``use_image_text_matching_head=False`` outputs, ``rank`` / ``itm_logits``
its ``use_image_text_matching_head=True`` outputs, all to 1e-5; one vector per image is the mean of the normalised
query vectors.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import clipzoo  # noqa: E402
from clipzoo.backends.blip2 import Blip2Comparator  # noqa: E402
from clipzoo.registry import REGISTRY  # noqa: E402
from clipzoo.testing import tiny_blip2, tiny_hf  # noqa: E402

TOL = 1e-5
TEXTS = ["a photo of a cat", "A Red Square, on white!", "two birds flying over the sea", "x"]
ODD_SIZES = [(37, 53), (61, 29), (100, 77), (33, 33), (45, 91)]  # (height, width)
HUB = {"[blip-2 - Salesforce - blip2-itm-vit-g]": "Salesforce/blip2-itm-vit-g",
       "[blip-2 - Salesforce - blip2-itm-vit-g-coco]": "Salesforce/blip2-itm-vit-g-coco"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_blip2.write_blip2(tmp_path_factory.mktemp("tiny_blip2") / "blip2")


@pytest.fixture(scope="module")
def m(folder):
    return clipzoo.load(folder)


@pytest.fixture(scope="module")
def reference(folder):
    """transformers' own outputs on the folder: ITC for every image against every text, ITM for every pair."""
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    model = Blip2ForImageTextRetrieval.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    images = odd_images()
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    tok = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    n, t = len(images), len(TEXTS)
    with torch.no_grad():
        itc = model(pixel_values=pixel_values, **tok, use_image_text_matching_head=False)
        itm = model(pixel_values=pixel_values.repeat_interleave(t, dim=0), input_ids=tok["input_ids"].repeat(n, 1),
                    attention_mask=tok["attention_mask"].repeat(n, 1), use_image_text_matching_head=True)
    return {"pixels": pixel_values, "itc": itc, "itm": itm.logits_per_image.reshape(n, t, 2)}


def odd_images():
    from PIL import Image

    rs = np.random.RandomState(20)
    return [Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ODD_SIZES]


def test_issue20_s2_blip2_preprocessing_matches_its_processor(m, reference):
    assert type(m) is Blip2Comparator and m.card.backend == "hf_family"
    assert type(m.model).__name__ == "Blip2ForImageTextRetrieval"
    ours = torch.stack([m.preprocess(image) for image in odd_images()])
    assert ours.shape == reference["pixels"].shape == (5, 3, 32, 32)
    assert (ours - reference["pixels"]).abs().max() <= TOL


def test_issue20_s2_blip2_itc_matches_transformers(m, reference):
    """Per-query features, text features and the ITC score (max over queries): use_image_text_matching_head=False."""
    images, itc = odd_images(), reference["itc"]
    queries = m.query_features(images)
    assert queries.shape == itc.image_embeds.shape == (5, tiny_blip2.QUERIES, m.embed_dim)
    assert (queries - itc.image_embeds).abs().max() <= TOL
    text = m.encode_text(TEXTS)
    assert (text - itc.text_embeds).abs().max() <= TOL
    assert (m.itc(images, TEXTS) - itc.logits_per_image).abs().max() <= TOL
    logits_per_image, logits_per_text = m(images, TEXTS)
    assert (logits_per_image - itc.logits_per_image).abs().max() <= TOL
    assert torch.equal(logits_per_text, logits_per_image.T)
    assert m.logit_scale == 1.0 and m.logit_bias is None


def test_issue20_s2_blip2_one_vector_per_image_is_mean_of_normalised_queries(m, reference):
    raw = m.encode_image(odd_images(), normalize=False)
    expected = reference["itc"].image_embeds.mean(dim=1)  # transformers returns the queries L2-normalised
    assert raw.shape == (5, m.embed_dim)
    assert (raw - expected).abs().max() <= TOL
    assert (m.encode_image(odd_images()) - F.normalize(expected, dim=-1)).abs().max() <= TOL
    # single-vector similarity is the plain cosine of that vector; (N, Q, D) features give the ITC max
    txt = m.encode_text(TEXTS)
    cos = F.normalize(expected, dim=-1) @ txt.T
    assert (m.similarity(m.encode_image(odd_images()), txt) - cos).abs().max() <= TOL
    assert (m.similarity(m.query_features(odd_images()), txt) - reference["itc"].logits_per_image).abs().max() <= TOL


def test_issue20_s2_blip2_rank_is_its_itm_head(m, reference):
    logits = m.itm_logits(odd_images(), TEXTS)
    assert logits.shape == (5, len(TEXTS), 2)
    assert (logits - reference["itm"]).abs().max() <= TOL
    probs = m.rank(odd_images(), TEXTS)
    assert (probs - reference["itm"].softmax(-1)[..., 1]).abs().max() <= TOL
    assert probs.shape == (5, len(TEXTS)) and bool(((probs > 0) & (probs < 1)).all())


def test_issue20_s2_blip2_predict_uses_itc(m, reference):
    probs = m.predict(odd_images()[:2], ["cat", "dog", "bird"], templates=["{}"])
    txt = m.encode_text(["cat", "dog", "bird"])
    itc = (m.query_features(odd_images()[:2]) @ txt.T).max(dim=1).values
    assert (probs - itc.softmax(dim=-1)).abs().max() <= TOL
    assert torch.allclose(probs.sum(dim=-1), torch.ones(2))


@pytest.mark.parametrize("alias", sorted(HUB))
def test_issue20_s2_blip2_hub_cards_load_offline(alias, offline, folder, m):
    repo = HUB[alias]
    card = REGISTRY.resolve(alias)
    assert card.backend == "hf_family" and card.source.hf_repo == repo and card.embed_dim == 256
    assert card.config["hf_class"] == "Blip2ForImageTextRetrieval"
    cache = offline / "hub"
    tiny_hf.cache_as_hub(folder, repo, cache)
    for spec in (alias, f"hf-hub:{repo}"):  # the card, and a bare hub id routed by config.json model_type
        loaded = clipzoo.load(spec, cache_dir=cache)
        assert type(loaded) is Blip2Comparator and loaded.card.source.hf_repo == repo
        assert (loaded.encode_image(odd_images()[:2]) - m.encode_image(odd_images()[:2])).abs().max() <= TOL
        assert (loaded.itc(odd_images()[:2], TEXTS) - m.itc(odd_images()[:2], TEXTS)).abs().max() <= TOL


def test_issue20_s2_blip2_info_size_from_cached_config(offline, folder, m):
    """`clipzoo info`: the parameter count per tower, built on the meta device from the cached config.json."""
    from clipzoo.summary import summarize

    cache = offline / "hub"
    tiny_hf.cache_as_hub(folder, "Salesforce/blip2-itm-vit-g", cache)
    summary = summarize("[blip-2 - Salesforce - blip2-itm-vit-g]", cache_dir=cache)
    params = dict(m.model.named_parameters())
    assert summary.total == sum(p.numel() for p in params.values())
    assert summary.parameters["image"] == sum(p.numel() for n, p in params.items()
                                              if n.startswith(("vision_model.", "query_tokens", "vision_projection.")))
    assert summary.parameters["text"] == sum(p.numel() for n, p in params.items()
                                             if n.startswith(("embeddings.", "text_projection.")))
    assert summary.parameters["other"] == sum(p.numel() for n, p in params.items()
                                              if n.startswith(("qformer.", "itm_head.")))
