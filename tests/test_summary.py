"""clipzoo.summary: parameter counts built on the meta device equal the real models' ``numel``."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from clipzoo.cards import ModelCard, Source
from clipzoo.errors import ModelNotCachedError, UnsupportedError
from clipzoo.summary import format_bytes, format_count, open_clip_meta_model, summarize, summarize_module, tower_of


def numel(module, prefix: str | None = None) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if prefix is None or n.startswith(prefix))


def test_vit_b_32_meta_equals_real_build():
    import open_clip

    s = summarize("openai/ViT-B-32")
    assert s.total == 151_277_313  # ViT-B/32's known size: ~151.3M
    meta = open_clip_meta_model(open_clip.get_model_config("ViT-B-32"))
    assert all(p.device.type == "meta" for p in meta.parameters())
    real = open_clip.create_model("ViT-B-32", pretrained=None)  # built for real on CPU, random weights
    assert s.total == numel(real)
    assert s.parameters["image"] == numel(real.visual) == 87_849_216
    assert s.parameters["other"] == 1  # logit_scale
    assert s.parameters["text"] == numel(real) - numel(real.visual) - 1
    assert s.memory("fp32") == 4 * s.total and s.memory("fp16") == 2 * s.total
    assert s.memory("fp16", "image") == 2 * numel(real.visual)
    d = s.to_dict()
    assert d["parameters"]["total"] == s.total and d["memory_bytes"]["fp32"]["total"] == 4 * s.total


def test_same_model_by_every_catalogue_spec():
    totals = {summarize(spec).total for spec in
              ("[clip - openai - ViT-B/32]", "open_clip:ViT-B-32", "open_clip:ViT-B-32/laion2b_s34b_b79k")}
    assert totals == {151_277_313}


@pytest.mark.parametrize("name,towers", [("RN50", ("visual",)), ("coca_ViT-B-32", ("visual", "text_decoder"))])
def test_other_architectures_meta_equals_real(name, towers):
    import open_clip

    s = summarize(f"open_clip:{name}")
    real = open_clip.create_model(name, pretrained=None)
    assert s.total == numel(real)
    assert s.parameters["image"] == numel(real.visual)
    if "text_decoder" in towers:
        assert s.parameters["decoder"] == numel(real.text_decoder)


def test_timm_tower_builds_offline_on_meta():
    s = summarize("open_clip:ViT-B-16-SigLIP")  # timm image tower, custom text tower, logit bias
    assert s.parameters["other"] == 2 and s.parameters["image"] > 0 and s.parameters["text"] > 0


def test_tiny_files_in_every_format(tiny_files):
    from clipzoo.testing.tiny import tiny_model

    real = tiny_model()
    expected = {"image": numel(real, "visual."), "text": numel(real) - numel(real, "visual.") - 1, "other": 1}
    for fmt, path in tiny_files.items():
        s = summarize(path)
        assert s.parameters == expected, fmt
    # a bare state dict named with model_name is built from that config instead
    s = summarize(tiny_files["open_clip_pt"], model_name="ViT-B-32")
    assert s.total == 151_277_313 and "ViT-B-32" in s.built_from


def _tiny_hf_clip():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                         vocab_size=1000, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    return CLIPModel(cfg)


def test_hf_folder_and_cached_hub_repo(tmp_path):
    model = _tiny_hf_clip()
    folder = tmp_path / "hf-clip"
    model.save_pretrained(folder)
    s = summarize(folder)
    assert s.total == numel(model)
    assert s.parameters["image"] == numel(model, "vision_model.") + numel(model, "visual_projection.")
    assert s.parameters["text"] == numel(model, "text_model.") + numel(model, "text_projection.")

    # the same config in a Hugging Face cache layout: found offline, nothing downloaded
    cache = tmp_path / "hub"
    snap = cache / "models--someorg--tiny-clip" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    shutil.copy(folder / "config.json", snap / "config.json")
    (cache / "models--someorg--tiny-clip" / "refs").mkdir()
    (cache / "models--someorg--tiny-clip" / "refs" / "main").write_text("0123abcd")
    assert summarize("hf-hub:someorg/tiny-clip", cache_dir=cache).total == numel(model)
    card = ModelCard("clip", "someorg", "tiny-clip", "transformers", Source(hf_repo="someorg/tiny-clip"),
                     config={"hf_class": "CLIPModel"})
    s = summarize(card, cache_dir=cache)
    assert s.total == numel(model) and "CLIPModel" in s.built_from


def test_open_clip_hub_repo_in_cache(tmp_path, tiny_files):
    cache = tmp_path / "hub"
    snap = cache / "models--someorg--tiny-oc" / "snapshots" / "feed"
    snap.mkdir(parents=True)
    shutil.copy(tiny_files["open_clip_hub"] / "open_clip_config.json", snap / "open_clip_config.json")
    (cache / "models--someorg--tiny-oc" / "refs").mkdir()
    (cache / "models--someorg--tiny-oc" / "refs" / "main").write_text("feed")
    from clipzoo.testing.tiny import tiny_model

    assert summarize("hf-hub:someorg/tiny-oc", cache_dir=cache).total == numel(tiny_model())


def test_uncached_hub_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotCachedError, match="openai/clip-vit-base-patch32.*not in the local Hugging Face cache"):
        summarize("openai/clip-vit-base-patch32", cache_dir=tmp_path)
    with pytest.raises(ModelNotCachedError, match="nobody/nothing"):
        summarize("hf-hub:nobody/nothing", cache_dir=tmp_path)


def test_sentence_transformers_card_is_unsupported_not_a_crash():
    with pytest.raises(UnsupportedError, match="sentence-transformers"):
        summarize("sbert/clip-ViT-B-32-multilingual-v1")


def test_helpers():
    assert tower_of("visual.conv1.weight") == "image" and tower_of("vision_model.x") == "image"
    assert tower_of("token_embedding.weight") == "text" and tower_of("text.transformer.x") == "text"
    assert tower_of("text_decoder.x") == "decoder" and tower_of("logit_scale") == "other"
    assert format_count(151_277_313) == "151.28 M" and format_count(12) == "12"
    assert format_bytes(605_109_252) == "577.1 MiB" and format_bytes(4) == "4 B"
    m = torch.nn.Linear(3, 2)
    assert summarize_module(m).parameters == {"image": 0, "text": 0, "other": 8}
    assert json.dumps(summarize_module(m).to_dict())


def test_the_embedded_model_a_jax_file_and_bad_configs(tmp_path, tiny_files, monkeypatch):
    """`clipzoo info clipzoo/tiny-shapes` failed on a fresh cache (never unpacked); a .pkl that `convert --to jax`
    wrote was read as a torch file; a config that loading refuses in one line was a traceback here."""
    from safetensors.torch import save_file

    import clipzoo
    from clipzoo.convert import convert
    from clipzoo.errors import CheckpointError

    monkeypatch.setenv("CLIPZOO_CACHE", str(tmp_path / "fresh-cache"))
    embedded = summarize("clipzoo/tiny-shapes", cache_dir=tmp_path / "fresh-cache")
    loaded = clipzoo.load("clipzoo/tiny-shapes", cache_dir=tmp_path / "fresh-cache")
    assert embedded.total == sum(p.numel() for p in loaded.model.parameters())
    pytest.importorskip("flax")
    source = summarize(str(tiny_files["open_clip_safetensors"]))
    convert(tiny_files["open_clip_safetensors"], tmp_path / "p.pkl", "jax")
    assert summarize(str(tmp_path / "p.pkl")).total == source.total
    for name, raw, said in [("text", "not json", "is not JSON"), ("list", "[1]", "holds a JSON list")]:
        save_file({"a": torch.zeros(2)}, str(tmp_path / f"{name}.safetensors"),
                  metadata={"format": "pt", "open_clip_config": raw})
        with pytest.raises(CheckpointError, match=said):
            summarize(str(tmp_path / f"{name}.safetensors"))
