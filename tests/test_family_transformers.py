"""Issue 20 §2: transformers' other image–text families (backend ``hf_family``) against transformers itself.

Each family is a tiny random model written here by ``save_pretrained`` with its own processor
(:mod:`clipzoo.testing.tiny_hf_families`); clipzoo's features must equal the model's own
``get_image_features`` / ``get_text_features`` to 1e-5, its logits the model's ``logits_per_image``, and its
preprocessing the processor's ``pixel_values`` on five images of odd sizes. Remote-code families are
refused without ``trust_remote_code=True``, before anything is fetched.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import clipzoo  # noqa: E402
from clipzoo.backends.hf_families import BY_FAMILY_CLASS, FAMILY_SPECS  # noqa: E402
from clipzoo.backends.transformers_families import RemoteCodeRefusedError  # noqa: E402
from clipzoo.errors import ClipzooError, ModelNotCachedError, UnsupportedError  # noqa: E402
from clipzoo.registry import REGISTRY  # noqa: E402
from clipzoo.testing import tiny_hf, tiny_hf_families  # noqa: E402

TOL = 1e-5
FAMILIES = list(tiny_hf_families.WRITERS)
HF_CLASS = {"blip_model": BY_FAMILY_CLASS["BlipModel"]}
TEXTS = ["a photo of a cat", "A Red Square, on white!", "two birds flying over the sea", "x", "ein Foto?"]
ODD_SIZES = [(37, 53), (61, 29), (100, 77), (33, 33), (45, 91)]  # (height, width)
# family -> (card alias, the publisher's hub repo) used for the hub-cache load
HUB = {
    "align": ("[align - kakaobrain - align-base]", "kakaobrain/align-base"),
    "groupvit": ("[groupvit - nvidia - groupvit-gcc-yfcc]", "nvidia/groupvit-gcc-yfcc"),
    "owlvit": ("[owlvit - google - owlvit-base-patch32]", "google/owlvit-base-patch32"),
    "owlv2": ("[owlv2 - google - owlv2-base-patch16-ensemble]", "google/owlv2-base-patch16-ensemble"),
    "clipseg": ("[clipseg - CIDAS - clipseg-rd64-refined]", "CIDAS/clipseg-rd64-refined"),
    "metaclip_2": ("[metaclip-2 - facebook - metaclip-2-worldwide-huge-quickgelu]",
                   "facebook/metaclip-2-worldwide-huge-quickgelu"),
    "aimv2": ("[aimv2 - apple - aimv2-large-patch14-224-lit]", "apple/aimv2-large-patch14-224-lit"),
    "blip_model": ("[blip - Salesforce - blip-itm-base-coco]", "Salesforce/blip-itm-base-coco"),
    "flava": ("[flava - facebook - flava-full]", "facebook/flava-full"),
    "tipsv2": ("[tipsv2 - google - tipsv2-b14]", "google/tipsv2-b14"),
}
REMOTE = {
    "[jina-clip - jinaai - jina-clip-v1]": "jinaai/jina-clip-v1",
    "[jina-clip - jinaai - jina-clip-v2]": "jinaai/jina-clip-v2",
    "[nomic-embed-vision - nomic-ai - nomic-embed-vision-v1.5]": "nomic-ai/nomic-embed-vision-v1.5",
    "[llm2clip - microsoft - LLM2CLIP-Openai-L-14-336]": "microsoft/LLM2CLIP-Openai-L-14-336",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_families")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            writer = tiny_hf_families.write_blip if name == "blip" else tiny_hf_families.WRITERS[name]
            cache[name] = writer(root / name)
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


def odd_images():
    from PIL import Image

    rs = np.random.RandomState(20)
    return [Image.fromarray(rs.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ODD_SIZES]


def reference(folder, texts, images):
    """What transformers computes on the folder, used as its model card documents. FLAVA's
    ``get_*_features`` project every position; its contrastive features are the [CLS] (first) ones, and
    ``FlavaModel`` has no logits of its own: they are ``exp(logit_scale)`` x cosine, as FlavaForPreTraining's."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    text_inputs = dict(processor.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=pixel_values).pooler_output
        text_features = model.get_text_features(**text_inputs).pooler_output
        if type(model).__name__ == "FlavaModel":
            image_features, text_features = image_features[:, 0], text_features[:, 0]
            cosines = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
            logits = cosines * model.logit_scale.exp()
        else:
            logits = model(pixel_values=pixel_values, **text_inputs).logits_per_image
    return model, pixel_values, image_features, text_features, logits


@pytest.mark.parametrize("name", FAMILIES)
def test_issue20_s2_family_parity_with_transformers(name, folders, loaded):
    m = loaded(name)
    images = odd_images()
    model, pixel_values, ref_img, ref_txt, ref_logits = reference(folders(name), TEXTS, images)
    assert m.card.backend == "hf_family"
    assert type(m.model) is type(model) and type(model).__name__ == HF_CLASS.get(name, FAMILY_SPECS.get(name)).hf_class

    ours = torch.stack([m.preprocess(image) for image in images])  # our preprocessing, image by image
    assert ours.shape == pixel_values.shape
    assert (ours - pixel_values).abs().max() <= TOL

    img = m.encode_image(images, normalize=False)
    txt = m.encode_text(TEXTS, normalize=False)
    assert img.shape == ref_img.shape == (5, m.embed_dim) and txt.shape == ref_txt.shape
    assert (img - ref_img).abs().max() <= TOL
    assert (txt - ref_txt).abs().max() <= TOL
    assert (m.similarity(img, txt) - ref_logits).abs().max() <= TOL * 10  # logits ~ 1/0.07 x cosines
    assert (m.encode_text(m.tokenize(TEXTS), normalize=False) - txt).abs().max() <= TOL


def test_issue20_s2_blip_retrieval_features_and_rank_match_transformers(folders, loaded):
    """BLIP retrieval: cosines equal its use_itm_head=False scores, rank() its ITM head's P(match) per pair."""
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    m = loaded("blip")
    assert type(m.model) is BlipForImageTextRetrieval and m.embed_dim == tiny_hf_families.EMBED + 8
    model = BlipForImageTextRetrieval.from_pretrained(folders("blip")).eval()
    processor = AutoProcessor.from_pretrained(folders("blip"))
    images, texts = odd_images(), TEXTS[:3]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    assert (torch.stack([m.preprocess(image) for image in images]) - pixel_values).abs().max() <= TOL
    tok = processor.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        cosines = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pixel_values,
                        use_itm_head=False).itm_score
        states = model.vision_model(pixel_values=pixel_values).last_hidden_state
        ref_img = model.vision_proj(states[:, 0])
        pairs = {"input_ids": tok["input_ids"].repeat(5, 1), "attention_mask": tok["attention_mask"].repeat(5, 1),
                 "pixel_values": pixel_values.repeat_interleave(3, dim=0)}
        itm = model(**pairs, use_itm_head=True).itm_score.softmax(-1)[:, 1].reshape(5, 3)
    img, txt = m.encode_image(images), m.encode_text(texts)
    assert (m.encode_image(images, normalize=False) - ref_img).abs().max() <= TOL
    assert (img @ txt.T - cosines).abs().max() <= TOL and m.logit_scale == 1.0
    ranks = m.rank(images, texts)
    assert ranks.shape == (5, 3) and (ranks - itm).abs().max() <= TOL
    with pytest.raises(UnsupportedError, match="no image-text matching head"):
        loaded("clipseg").rank(images, texts)


def test_issue20_s2_family_logit_scales(loaded):
    """ALIGN divides by its temperature, AIMv2 clamps its log scale, the others exponentiate it."""
    align, aim, owl = loaded("align"), loaded("aimv2"), loaded("owlvit")
    assert align.logit_scale == pytest.approx(1.0 / align.model.temperature.item(), rel=1e-6)
    saved = aim.model.logit_scale.detach().clone()
    assert aim.logit_scale == pytest.approx(saved.exp().item(), rel=1e-6)
    with torch.no_grad():
        aim.model.logit_scale.fill_(9.0)  # beyond max_log_logit_scale = log(100)
    try:
        assert aim.logit_scale == pytest.approx(100.0, rel=1e-5)
    finally:
        with torch.no_grad():
            aim.model.logit_scale.copy_(saved)
    assert owl.logit_scale == pytest.approx(owl.model.logit_scale.exp().item(), rel=1e-6)
    assert align.logit_bias is None and align.probability == "softmax"


def test_issue20_s2_family_context_lengths(loaded):
    assert {name: loaded(name).context_length for name in ("align", "owlvit", "owlv2", "clipseg")} == {
        "align": 64, "owlvit": 16, "owlv2": 16, "clipseg": 77}


@pytest.mark.parametrize("name", FAMILIES)
def test_issue20_s2_family_hub_id_loads_offline(name, offline, folders, loaded):
    alias, repo = HUB[name]
    card = REGISTRY.resolve(alias)
    assert card.backend == "hf_family" and card.source.hf_repo == repo
    cache = offline / "hub"
    if name == "blip_model":  # the publisher's BLIP repos hold the retrieval model
        name = "blip"
    assert card.config["hf_class"] == FAMILY_SPECS[name].hf_class
    tiny_hf.cache_as_hub(folders(name), repo, cache)
    local = loaded(name)
    images = odd_images()[:2]
    for spec in (alias, f"hf-hub:{repo}"):  # the card, and a bare hub id routed by config.json model_type
        m = clipzoo.load(spec, cache_dir=cache)
        assert m.card.backend == "hf_family" and m.card.source.hf_repo == repo
        assert (m.encode_image(images) - local.encode_image(images)).abs().max() <= TOL
        assert (m.encode_text(TEXTS) - local.encode_text(TEXTS)).abs().max() <= TOL


def test_issue20_s2_family_info_size_from_cached_config(offline, folders, loaded):
    """`clipzoo info`: the parameter count of a hub card, built from its cached config.json on the meta device."""
    from clipzoo.summary import summarize

    cache = offline / "hub"
    tiny_hf.cache_as_hub(folders("owlv2"), "google/owlv2-base-patch16", cache)
    summary = summarize("[owlv2 - google - owlv2-base-patch16]", cache_dir=cache)
    model = loaded("owlv2").model
    assert summary.total == sum(p.numel() for p in model.parameters())
    assert summary.parameters["image"] == sum(p.numel() for n, p in model.named_parameters()
                                              if n.startswith(("vision_model.", "visual_projection.")))
    with pytest.raises(ModelNotCachedError, match="config.json of hub repo 'google/owlvit-base-patch16'"):
        summarize("[owlvit - google - owlvit-base-patch16]", cache_dir=cache)


def test_issue20_s2_family_hub_id_not_cached_names_the_repo(offline):
    with pytest.raises(ModelNotCachedError, match="google/owlv2-base-patch16"):
        clipzoo.load("[owlv2 - google - owlv2-base-patch16]", cache_dir=offline / "empty")


def test_issue20_s2_family_hf_class_override_and_refusal(folders):
    m = clipzoo.load(folders("clipseg"), hf_class="CLIPSegModel")
    assert m.card.backend == "hf_family" and type(m.model).__name__ == "CLIPSegModel"
    from clipzoo.backends.transformers_families import pick_spec

    with pytest.raises(UnsupportedError, match="'BertModel' is not one of the hf_family classes"):
        pick_spec({"model_type": "align"}, "BertModel", folders("align"))
    with pytest.raises(UnsupportedError, match="'bert' model"):
        pick_spec({"model_type": "bert"}, None, folders("align"))


@pytest.mark.parametrize("alias,repo", list(REMOTE.items()))
def test_issue20_s2_remote_code_family_refused_without_trust(alias, repo, offline, monkeypatch):
    import clipzoo.api
    import clipzoo.backends.transformers
    import clipzoo.backends.transformers_families

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted before the trust_remote_code check")

    monkeypatch.setattr(clipzoo.backends.transformers, "hub_snapshot", no_download)
    monkeypatch.setattr(clipzoo.backends.transformers_families, "hub_snapshot", no_download)
    monkeypatch.setattr(clipzoo.api, "hub_file", no_download)
    card = REGISTRY.resolve(alias)
    assert card.config.get("remote_code") is True and card.source.hf_repo == repo
    with pytest.raises(RemoteCodeRefusedError) as info:
        clipzoo.load(alias, cache_dir=offline / "empty")
    message = str(info.value)
    assert isinstance(info.value, ClipzooError) and "\n" not in message
    assert message == (f"{alias} runs Python code from its hub repo {repo!r} (its model class is not part of "
                       "transformers), which clipzoo does not execute unasked; read that code, then pass "
                       "trust_remote_code=True to load it")


def test_issue20_s2_remote_code_family_with_trust_goes_on_to_the_hub(offline):
    """With trust_remote_code=True the refusal is lifted: loading proceeds to the hub (here offline, empty)."""
    with pytest.raises(ModelNotCachedError, match="jinaai/jina-clip-v2"):
        clipzoo.load("[jina-clip - jinaai - jina-clip-v2]", cache_dir=offline / "empty", trust_remote_code=True)


REMOTE_MODULE = """from transformers import CLIPConfig, CLIPModel


class TinyRemoteConfig(CLIPConfig):
    model_type = "tiny_remote_clip"


class TinyRemoteModel(CLIPModel):
    config_class = TinyRemoteConfig
"""


def write_remote_code_model(folder):
    """A save_pretrained folder whose model class lives in the folder's own ``modeling_tiny_remote.py``
    (config.json ``auto_map``), as jina-clip's and nomic's hub repos are laid out."""
    import json

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, vocab = tiny_hf_families.clip_tokenizer(77, pad="<pad>")  # a pad id of its own (XLM-R's is 1)
    text = tiny_hf_families.clip_text(vocab, pad_token_id=len(vocab))
    text["vocab_size"] = len(vocab) + 1
    config = CLIPConfig(text_config=text,
                        vision_config=tiny_hf_families.tower(image_size=32, patch_size=8), projection_dim=16)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tiny_hf.save_model_and_processor(folder, tiny_hf_families.seeded(CLIPModel, config, 3),
                                     CLIPProcessor(image_processor=images, tokenizer=tokenizer))
    (folder / "modeling_tiny_remote.py").write_text(REMOTE_MODULE)
    data = json.loads((folder / "config.json").read_text())
    data.update(model_type="tiny_remote_clip", architectures=["TinyRemoteModel"],
                auto_map={"AutoConfig": "modeling_tiny_remote.TinyRemoteConfig",
                          "AutoModel": "modeling_tiny_remote.TinyRemoteModel"})
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def test_issue20_s2_remote_code_family_with_trust_runs_the_repos_code(offline, tmp_path):
    """trust_remote_code=True: the repo's own model class (from its .py file in the hub snapshot) runs, and
    clipzoo's features are that class's get_image_features / get_text_features."""
    from transformers import AutoModel, AutoProcessor

    folder = write_remote_code_model(tmp_path / "remote")
    cache = offline / "hub"
    snapshot = tiny_hf.cache_as_hub(folder, "jinaai/jina-clip-v1", cache)
    m = clipzoo.load("[jina-clip - jinaai - jina-clip-v1]", cache_dir=cache, trust_remote_code=True)
    assert type(m.model).__name__ == "TinyRemoteModel" and m.embed_dim == 16
    model = AutoModel.from_pretrained(snapshot, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(snapshot)
    images = odd_images()
    tok = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref_img = model.get_image_features(pixel_values=pixel_values).pooler_output
        ref_txt = model.get_text_features(**tok).pooler_output
    assert (m.encode_image(images, normalize=False) - ref_img).abs().max() <= TOL
    assert (m.encode_text(TEXTS, normalize=False) - ref_txt).abs().max() <= TOL
