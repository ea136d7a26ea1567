"""Compositional models (timm / torchvision image towers, HF text towers, projection heads), LiT locking,
peft adapters (LoRA, IA3) on composite and open_clip models, and saved folders that load back."""
from __future__ import annotations

import pytest
import torch

import clipzoo
from clipzoo.models.heads import DINOHead, build_head
from clipzoo.train.config import ConfigError, TrainConfig, from_mapping
from clipzoo.train.data import MemoryData, render_shapes
from clipzoo.train.engine import comparator_of, train
from clipzoo.train.model import build_model

pytest.importorskip("timm")
pytest.importorskip("transformers")

TINY_OPEN_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
                  "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module")
def shapes():
    return render_shapes(16, seed=0, image_size=32, workers=1)


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny DistilBERT (written by the project's offline writer) and a tiny BERT with a local WordPiece vocab."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from clipzoo.testing.tiny_hf import _wordpiece_vocab, write_distilbert

    root = tmp_path_factory.mktemp("hf")
    distil = write_distilbert(root / "distilbert", context=32)
    tok = BertTokenizer(vocab=_wordpiece_vocab(), model_max_length=32)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id))
    bert.save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    return {"distilbert": str(distil), "bert": str(root / "bert")}


def _towers(hf, image=None, text="bert", pooling="cls", **extra):
    return {"image": image or {"source": "timm", "name": "test_resnet", "image_size": 32},
            "text": {"source": "hf", "name": hf[text], "pooling": pooling, "context_length": 24},
            "image_head": {"kind": "mlp", "layers": 2}, "text_head": {"kind": "linear"}, "embed_dim": 16, **extra}


def _cfg(tmp_path, **kw):
    base = dict(batch_size=16, lr=3e-3, warmup=0, steps=6, output=str(tmp_path / "run"), progress=False,
                tensorboard=False, log_every=1, workers=0, schedule="constant")
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, shapes, model=None):
    model = model or build_model(cfg)
    images, captions, _ = shapes
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      image_size=model.preprocess_cfg["size"][0], seed=cfg.seed)
    losses = {}
    result = train(cfg, data=data, model=model, on_step=lambda s, r: losses.__setitem__(s, r["loss"]))
    return result, losses, model


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _pil(n=2):
    from torchvision.transforms.functional import to_pil_image

    g = torch.Generator().manual_seed(3)
    return [to_pil_image(torch.rand(3, 40, 40, generator=g)) for _ in range(n)]


TEXTS = ["a red circle", "a blue square on a white background"]


# ------------------------------------------------------------------ heads
def test_head_kinds_map_to_the_embedding_width():
    x = torch.randn(5, 24)
    assert build_head({"kind": "identity"}, 24, 24)(x).shape == (5, 24)
    assert build_head({"kind": "linear"}, 24, 16)(x).shape == (5, 16)
    mlp = build_head({"kind": "mlp", "layers": 3, "hidden": 40, "norm": "layer"}, 24, 16)
    assert mlp(x).shape == (5, 16) and sum(isinstance(m, torch.nn.Linear) for m in mlp) == 3
    dino = build_head({"kind": "dino", "layers": 3, "hidden": 32, "bottleneck": 8}, 24, 64)
    assert isinstance(dino, DINOHead) and dino(x).shape == (5, 64)
    # the prototype layer is weight-normalised with g fixed at 1: every prototype row has unit norm
    assert torch.allclose(dino.last.weight.norm(dim=1), torch.ones(64), atol=1e-6)
    assert not dino.last.parametrizations.weight.original0.requires_grad
    with pytest.raises(ConfigError, match="identity head keeps the tower's width 24, but embed_dim is 16"):
        build_head("identity", 24, 16, "image_head")
    with pytest.raises(ConfigError, match="unknown head kind 'conv'"):
        build_head("conv", 24, 16)


def test_towers_config_errors_name_the_key(hf_folders):
    with pytest.raises(ConfigError, match=r"towers.image: unknown key 'nme'; did you mean 'name'\?"):
        from_mapping({"towers": {"image": {"source": "timm", "nme": "x"}, "text": {"source": "hf", "name": "y"}}})
    with pytest.raises(ConfigError, match="towers.text.source must be one of hf, sentence_transformers, open_clip"):
        from_mapping({"towers": {"image": {"source": "timm", "name": "x"}, "text": {"source": "bpe", "name": "y"}}})
    with pytest.raises(ConfigError, match="either towers .* or model / model_config"):
        from_mapping({"towers": _towers(hf_folders), "model": "RN50"})


# ------------------------------------------------------------------ towers train and load back
@pytest.mark.parametrize("image,text,pooling", [
    ({"source": "timm", "name": "test_resnet", "image_size": 32}, "bert", "cls"),
    ({"source": "torchvision", "name": "resnet18", "image_size": 32}, "distilbert", "mean"),
])
def test_composite_towers_train_and_the_folder_loads_back(tmp_path, shapes, hf_folders, image, text, pooling):
    cfg = _cfg(tmp_path, towers=_towers(hf_folders, image, text, pooling), steps=5)
    result, losses, model = _run(cfg, shapes)
    assert model.kind == "composite" and model.module.text.pooling == pooling
    assert losses[5] < losses[1]
    loaded = clipzoo.load(str(result.model_dir))
    assert loaded.card.backend == "composite" and loaded.embed_dim == 16 and loaded.image_size == 32
    ours = comparator_of(model)
    model.module.eval()
    assert torch.allclose(loaded.encode_image(_pil()), ours.encode_image(_pil()), atol=1e-5)
    assert torch.allclose(loaded.encode_text(TEXTS), ours.encode_text(TEXTS), atol=1e-5)
    assert abs(loaded.logit_scale - ours.logit_scale) < 1e-5
    assert (result.model_dir / "text" / "config.json").exists()  # the folder describes itself


# ------------------------------------------------------------------ LiT
def test_locked_towers_stay_bit_identical_and_unlocked_layers_train(tmp_path, shapes, hf_folders):
    cfg = _cfg(tmp_path, towers=_towers(hf_folders), lock_image=True, lock_text=True, lock_text_unlocked_layers=1,
               steps=3)
    model = build_model(cfg)
    before = _snapshot(model.module)
    _run(cfg, shapes, model)
    after = model.module.state_dict()
    image = [k for k in before if k.startswith("image.")]
    assert image and all(torch.equal(before[k], after[k]) for k in image)  # weights and BatchNorm statistics
    text = [k for k in before if k.startswith("text.")]
    changed = {k for k in text if not torch.equal(before[k], after[k])}
    assert changed and all(".layer.1." in k or "pooler" in k for k in changed), sorted(changed)[:5]
    assert not any(".layer.0." in k or "embeddings" in k for k in changed)
    assert any(k.startswith(("image_head.", "text_head.")) and not torch.equal(before[k], after[k]) for k in before)


def test_timm_tower_unlocks_only_its_last_group(tmp_path, shapes, hf_folders):
    cfg = _cfg(tmp_path, towers=_towers(hf_folders), lock_image=True, lock_image_unlocked_layers=1, lock_text=True,
               steps=2)
    model = build_model(cfg)
    before = _snapshot(model.module)
    _run(cfg, shapes, model)
    after = model.module.state_dict()
    changed = {k for k in before if k.startswith("image.") and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("image.model.layer4.") for k in changed), sorted(changed)[:5]


# ------------------------------------------------------------------ adapters
def test_lora_trains_only_adapters_and_the_merged_folder_matches(tmp_path, shapes, hf_folders):
    cfg = _cfg(tmp_path, towers=_towers(hf_folders, text="distilbert", pooling="mean"),
               adapters={"image": {"method": "lora", "r": 4, "lora_alpha": 8},
                         "text": {"method": "lora", "r": 4, "target_modules": ["q_lin", "v_lin", "lin1"]}}, steps=3)
    model = build_model(cfg)
    assert model.adapters["image"] and model.adapters["text"]
    before = _snapshot(model.module)
    result, losses, _ = _run(cfg, shapes, model)
    after = model.module.state_dict()
    adapter = {k for k in after if "lora_" in k}
    base = [k for k in after if k.startswith(("image.", "text.")) and k not in adapter]
    assert base and all(torch.equal(before[k], after[k]) for k in base)  # tower weights bit-identical
    assert any(not torch.equal(before[k], after[k]) for k in adapter if "lora_B" in k)  # adapters trained
    assert all(not p.requires_grad for n, p in model.module.named_parameters()
               if n.startswith(("image.", "text.")) and "lora_" not in n)
    # saved with the adapters merged: no peft keys, same outputs as the adapted model
    from safetensors import safe_open

    with safe_open(str(result.model_dir / "model.safetensors"), "pt") as f:
        assert not any("lora_" in k or "base_layer" in k for k in f.keys())  # noqa: SIM118 - safe_open has no __iter__
    loaded = clipzoo.load(str(result.model_dir))
    ours = comparator_of(model)
    model.module.eval()
    assert torch.allclose(loaded.encode_image(_pil()), ours.encode_image(_pil()), atol=1e-5)
    assert torch.allclose(loaded.encode_text(TEXTS), ours.encode_text(TEXTS), atol=1e-5)


def test_ia3_and_lora_on_an_open_clip_model(tmp_path, shapes):
    cfg = _cfg(tmp_path, model_config=TINY_OPEN_CLIP,
               adapters={"image": {"method": "lora", "r": 2, "target_modules": ["conv1", "conv2", "conv3"]},
                         "text": {"method": "ia3"}}, steps=2)
    model = build_model(cfg)
    assert any("ia3_l" in n for n in model.adapters["text"]) and any("lora_A" in n for n in model.adapters["image"])
    before = _snapshot(model.module)
    result, losses, _ = _run(cfg, shapes, model)
    after = model.module.state_dict()
    adapter = {k for k in after if "lora_" in k or "ia3_" in k}
    base = [k for k in after if k not in adapter and k not in ("logit_scale", "attn_mask")]
    assert all(torch.equal(before[k], after[k]) for k in base)
    assert any(not torch.equal(before[k], after[k]) for k in adapter if "ia3_" in k)
    loaded = clipzoo.load(str(result.model_dir))  # an open_clip folder: adapters merged, loads without peft
    assert loaded.card.backend == "open_clip"
    ours = comparator_of(model)
    model.module.eval()
    assert torch.allclose(loaded.encode_image(_pil()), ours.encode_image(_pil()), atol=1e-5)
    assert torch.allclose(loaded.encode_text(TEXTS), ours.encode_text(TEXTS), atol=1e-5)


def test_sentence_transformers_text_tower(tmp_path):
    pytest.importorskip("sentence_transformers")
    from clipzoo.testing.tiny_hf import write_st_text
    from clipzoo.train.model import save_trained

    folder = write_st_text(tmp_path / "st", out_dim=16, context=32, legacy=False)
    cfg = TrainConfig(towers={"image": {"source": "timm", "name": "test_vit", "image_size": 32},
                              "text": {"source": "sentence_transformers", "name": str(folder)},
                              "image_head": "linear", "text_head": "identity", "embed_dim": 16})
    model = build_model(cfg)
    model.module.eval()
    tokens = model.tokenizer(TEXTS)
    assert model.module.encode_text(tokens).shape == (2, 16)
    out = save_trained(model, tmp_path / "saved")
    loaded = clipzoo.load(str(out))
    assert torch.allclose(loaded.encode_text(TEXTS), comparator_of(model).encode_text(TEXTS), atol=1e-5)
    assert torch.allclose(loaded.encode_image(_pil()), comparator_of(model).encode_image(_pil()), atol=1e-5)
