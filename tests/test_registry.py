"""Cards, the built-in catalogue, queries and spec resolution."""
from __future__ import annotations

import open_clip
import pytest

import clipzoo
from clipzoo.cards import parse_alias
from clipzoo.errors import AmbiguousModelError, UnknownModelError
from clipzoo.registry import Registry

OPENAI_NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


def test_every_open_clip_pair_is_a_card():
    pairs = {(c.config["model_name"], c.config["pretrained"]) for c in clipzoo.list_models(backend="open_clip")
             if c.source.open_clip}
    assert pairs == set(open_clip.list_pretrained())


def test_openai_models_under_their_own_names():
    ids = [c.id for c in clipzoo.list_models(publisher="openai", backend="open_clip") if c.config.get("openai")]
    assert ids == OPENAI_NAMES
    card = clipzoo.REGISTRY.resolve("openai/ViT-B-32")
    assert card.alias == "[clip - openai - ViT-B/32]"
    assert card.source.sha256 == "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    assert clipzoo.REGISTRY.resolve("ViT-L/14@336px") is clipzoo.REGISTRY.resolve("openai/ViT-L-14-336")
    assert (card.embed_dim, card.image_size, card.context_length) == (512, 224, 77)


def test_curated_hf_models():
    hf = {c.source.hf_repo for c in clipzoo.list_models(backend="transformers")}
    for repo in ["openai/clip-vit-base-patch32", "google/siglip-base-patch16-224", "google/siglip2-base-patch16-224",
                 "OFA-Sys/chinese-clip-vit-base-patch16", "BAAI/AltCLIP", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"]:
        assert repo in hf
    sbert = clipzoo.REGISTRY.resolve("sentence-transformers/clip-ViT-B-32-multilingual-v1")
    assert sbert.backend == "sentence_transformers" and sbert.publisher == "sbert"


def test_find_any_subset_case_insensitive():
    a = clipzoo.list_models(architecture="SIGLIP", publisher="Google")
    assert a and all(c.architecture == "siglip" and c.publisher == "google" for c in a)
    assert len(clipzoo.list_models()) == len(clipzoo.REGISTRY)
    b = clipzoo.list_models(id="ViT-B-32/*")
    assert {c.config["pretrained"] for c in b} == set(open_clip.list_pretrained_tags_by_model("ViT-B-32"))
    assert {c.architecture for c in clipzoo.list_models(modality="audio")} == {"clap"}  # CLAP: audio + text
    with pytest.raises(TypeError, match="unknown filter"):
        clipzoo.list_models(colour="red")


@pytest.mark.parametrize("spec,alias", [
    ("[clip - openai - ViT-B/32]", "[clip - openai - ViT-B/32]"),
    ("[CLIP - OpenAI - vit-b/32]", "[clip - openai - ViT-B/32]"),
    ("openai/ViT-B-32", "[clip - openai - ViT-B/32]"),
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", "[clip - laion - ViT-B-32/laion2b_s34b_b79k]"),
    ("open_clip:ViT-B-16-SigLIP/webli", "[siglip - google - ViT-B-16-SigLIP/webli]"),
    ("open_clip:ViT-B-32", "[clip - untrained - ViT-B-32]"),
    ("hf-hub:openai/clip-vit-base-patch32", "[clip - openai - clip-vit-base-patch32]"),
    ("openai/clip-vit-base-patch32", "[clip - openai - clip-vit-base-patch32]"),
    ("laion/ViT-B-32/laion2b_s34b_b79k", "[clip - laion - ViT-B-32/laion2b_s34b_b79k]"),
])
def test_resolve_spec_forms(spec, alias):
    assert clipzoo.REGISTRY.resolve(spec).alias == alias


def test_resolve_hub_and_local(tmp_path):
    card = clipzoo.REGISTRY.resolve("hf-hub:someone/my-clip")
    assert (card.backend, card.source.hf_repo) == ("auto", "someone/my-clip")
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    card = clipzoo.REGISTRY.resolve(str(f))
    assert card.source.path == str(f) and card.publisher == "local"


def test_unknown_spec_lists_closest_aliases():
    with pytest.raises(UnknownModelError) as err:
        clipzoo.REGISTRY.resolve("openai/ViT-B-33")
    msg = str(err.value)
    assert msg.startswith("unknown model 'openai/ViT-B-33' (closest known: ")
    assert "[clip - openai - ViT-B/32]" in msg and "clipzoo models" in msg
    with pytest.raises(UnknownModelError, match="available tags: openai, laion400m_e31"):
        clipzoo.REGISTRY.resolve("open_clip:ViT-B-32/nope")
    with pytest.raises(UnknownModelError, match="closest: ViT-B-32"):
        clipzoo.REGISTRY.resolve("open_clip:ViT-B-3")


def test_ambiguous_id_lists_candidates():
    reg = Registry(builtin=False)
    reg.register(architecture="clip", publisher="a", id="same", hf_repo="a/same")
    reg.register(architecture="clip", publisher="b", id="same", hf_repo="b/same")
    with pytest.raises(AmbiguousModelError, match=r"matches 2 models: \[clip - a - same\]; \[clip - b - same\]"):
        reg.resolve("same")
    assert reg.resolve("b/same").publisher == "b"


def test_register_shows_in_queries_and_resolves(tmp_path):
    f = tmp_path / "ckpt.safetensors"
    f.write_bytes(b"0")
    card = clipzoo.register(architecture="clip", publisher="me", id="run7", path=str(f), model_name="ViT-B-32")
    try:
        assert card.alias == "[clip - me - run7]"
        assert clipzoo.list_models(publisher="me") == [card]
        assert clipzoo.REGISTRY.resolve("[clip - me - run7]") is card
        assert clipzoo.REGISTRY.resolve("me/run7") is card
        assert card.config == {"model_name": "ViT-B-32"}
    finally:
        clipzoo.REGISTRY.unregister(card.alias)
    with pytest.raises(FileNotFoundError, match="no such file"):
        clipzoo.register(publisher="me", id="x", path=str(tmp_path / "missing.pt"))


def test_parse_alias():
    assert parse_alias("[clip - openai - ViT-L/14@336px]") == ("clip", "openai", "ViT-L/14@336px")
    assert parse_alias("[siglip - google - ViT-B-16-SigLIP/webli]") == ("siglip", "google", "ViT-B-16-SigLIP/webli")
    assert parse_alias("ViT-B-32") is None


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, clipzoo; clipzoo.REGISTRY; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("spec", ["/no/such/model_dir", "./missing.safetensors", "weights/RN50.pt"])
def test_missing_local_path_says_so(spec):
    with pytest.raises(UnknownModelError, match=f"model path '{spec}' does not exist \\(no such file or folder\\)"):
        clipzoo.REGISTRY.resolve(spec)


def test_models_listing_reads_cached_catalogue_without_importing_torch(tmp_path):
    """`clipzoo models` start-up: the first listing reads open_clip and caches its cards; later listings
    read the cache, import neither open_clip nor torch, and give the same cards."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "CLIPZOO_CACHE": str(tmp_path)}
    code = ("import sys, json, clipzoo; cards = [c.to_dict() for c in clipzoo.list_models()]; "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'open_clip': 'open_clip' in sys.modules, "
            "'cards': cards}))")
    first = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    assert first["open_clip"] is True
    assert len(list((tmp_path / "catalog").glob("open_clip-*.json"))) == 1
    second = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                       check=True).stdout)
    assert (second["torch"], second["open_clip"]) == (False, False)
    assert second["cards"] == first["cards"]
    pairs = {tuple(c["source"]["open_clip"]) for c in second["cards"] if "open_clip" in c["source"]}
    assert pairs == set(open_clip.list_pretrained())
    # a corrupt cache file is rebuilt, not trusted
    cache = next((tmp_path / "catalog").glob("open_clip-*.json"))
    cache.write_text("{not json")
    third = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    assert third["cards"] == first["cards"] and json.loads(cache.read_text())
