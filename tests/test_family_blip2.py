"""Issue 20 §2: BLIP-2 retrieval (``Blip2ForImageTextRetrieval``) against transformers itself.

A tiny random model written by ``save_pretrained`` with BLIP-2's processor (:mod:`clipzoo.testing.tiny_blip2`):
our preprocessing equals the processor's ``pixel_values`` on five odd-sized images; our per-query features, text
features and ITC scores equal the model's ``use_image_text_matching_head=False`` outputs, ``rank`` / ``itm_logits``
its ``use_image_text_matching_head=True`` outputs, all to 1e-5; one vector per image is the mean of the normalised
query vectors.
"""
from __future__ import annotations

from pathlib import Path

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
    return tiny_blip2.reference(folder, odd_images(), TEXTS)


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


# ------------------------------------------------------------------ BLIP-2's ITC wherever a score is made
@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """The five odd-sized images as PNG files (lossless: the same pixels as ``odd_images``)."""
    folder = tmp_path_factory.mktemp("blip2_images")
    paths = [folder / f"odd{i}.png" for i in range(len(ODD_SIZES))]
    for image, path in zip(odd_images(), paths):
        image.save(path)
    return [str(p) for p in paths]


def itc_against(m, images, text_features) -> torch.Tensor:
    """An independent ITC: the max over the image's normalised query vectors of the cosine with each text."""
    queries = F.normalize(m.query_features(images), dim=-1)
    return (queries @ F.normalize(text_features, dim=-1).T).max(dim=1).values


def test_issue20_blip2_score_dispatch_is_itc(m, reference, image_files, tmp_path):
    """``score`` — and ``compare``, ``forward``, ``predict``, zero-shot eval, ``classify_images``, ensembles
    through it — is the ITC."""
    from clipzoo.ensemble import Ensemble
    from clipzoo.eval.zeroshot import zeroshot_predict
    from clipzoo.index import classify_images

    images, itc = odd_images(), reference["itc"].logits_per_image
    text = m.encode_text(TEXTS)
    assert (m.score(images, text) - itc).abs().max() <= TOL
    assert (m.compare(image=images, text=TEXTS) - itc).abs().max() <= TOL
    mean_cos = m.encode_image(images) @ text.T  # the one-vector cosine differs: the dispatch is not a no-op
    assert (mean_cos - itc).abs().max() > 1e-3
    solo = Ensemble([m])
    assert (solo.compare(image=images, text=TEXTS).similarity - itc).abs().max() <= TOL
    labels = ["cat", "dog", "bird"]
    weights = m.classifier(labels, ["a photo of a {}."])
    assert (solo.predict(images, labels, ["a photo of a {}."]) - itc_against(m, images, weights).softmax(-1)
            ).abs().max() <= TOL
    logits, _ = zeroshot_predict(m, images, labels, ["a photo of a {}."], labels=[0, 1, 2, 0, 1], batch_size=2)
    assert (logits - itc_against(m, images, weights)).abs().max() <= TOL
    top = classify_images(m, image_files, labels, template="a photo of a {}.", k=3, cache_dir=tmp_path)
    want = itc_against(m, images, weights).softmax(-1)
    assert max(abs(p - float(want[i, labels.index(label)])) for i, row in enumerate(top) for label, p in row) <= TOL


def test_issue20_blip2_compare_cli_returns_itc(folder, image_files, reference):
    import json

    from typer.testing import CliRunner

    from clipzoo.cli import app

    args = ["compare", str(folder), *sum((["--image", p] for p in image_files), []),
            *sum((["--text", t] for t in TEXTS), []), "--json"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(result.stdout)
    assert data["images"] == image_files and data["texts"] == TEXTS and data["probability"] == "softmax"
    itc = reference["itc"].logits_per_image
    assert (torch.tensor(data["logits"]) - itc).abs().max() <= TOL
    assert (torch.tensor(data["probabilities"]) - itc.softmax(-1)).abs().max() <= TOL


def test_issue20_blip2_rank_endpoint_returns_itc(m, image_files, reference, tmp_path):
    """``POST /rank`` (and ``/classify``) of a service on BLIP-2: the ITC logits of transformers."""
    pytest.importorskip("fastapi")
    import base64
    import shutil

    from fastapi.testclient import TestClient

    from clipzoo.index import build_index
    from clipzoo.serve import create_app

    images = tmp_path / "images"
    images.mkdir()
    for p in image_files[:2]:
        shutil.copy(p, images)
    build_index(images, tmp_path / "index", model=m, workers=0)
    labels = ["cat", "dog", "bird"]
    itc = reference["itc"].logits_per_image
    with TestClient(create_app(tmp_path / "index", model=m, labels=labels, template="a photo of a {}.")) as client:
        for i, path in enumerate(image_files[:2]):
            raw = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            r = client.post("/rank", json={"image": raw, "texts": TEXTS})
            assert r.status_code == 200, r.text
            got = {row["index"]: row for row in r.json()["ranking"]}
            assert max(abs(got[j]["logit"] - float(itc[i, j])) for j in range(len(TEXTS))) <= TOL
            want = itc[i].softmax(-1)
            assert max(abs(got[j]["probability"] - float(want[j])) for j in range(len(TEXTS))) <= TOL
            c = client.post("/classify", json={"image": raw, "k": 3})
            assert c.status_code == 200, c.text
            probs = itc_against(m, odd_images()[i:i + 1], m.classifier(labels, ["a photo of a {}."]))[0].softmax(-1)
            assert {x["label"]: x["probability"] for x in c.json()["labels"]} == pytest.approx(
                dict(zip(labels, probs.tolist())), abs=TOL)


def test_issue20_plain_clip_scores_unchanged(image_files):
    """A one-vector model: ``score`` and everything through it is scale × cosine of the two vectors, as before."""
    from clipzoo.cli.compare import compare_probabilities
    from clipzoo.ensemble import Ensemble

    clip = clipzoo.load("clipzoo/tiny-shapes")
    texts = ["a red circle", "a blue square"]
    img, txt = clip.encode_image(image_files), clip.encode_text(texts)
    plain = clip.logit_scale * (img @ txt.T)
    assert torch.equal(clip.score(image_files, txt), clip.similarity(img, txt))
    assert (clip.score(image_files, txt) - plain).abs().max() <= 1e-4
    assert torch.equal(clip.compare(image=image_files, text=texts), img @ txt.T)
    probs, logits = compare_probabilities(clip, image_files, texts)
    assert torch.equal(logits, clip.similarity(img, txt)) and torch.equal(probs, logits.softmax(-1))
    assert torch.equal(Ensemble([clip]).compare(image=image_files, text=texts).similarity, img @ txt.T)
