"""The embedded default model ``clipzoo/tiny-shapes``: in the registry, loads with no download, and knows
its shapes — zero-shot on held-out generated images, measured here, not read from its metadata."""
from __future__ import annotations

import json

import pytest
import torch

import clipzoo
from clipzoo import packing as embedded
from clipzoo.train import recipes


def test_card_is_in_the_registry_under_every_spec_form():
    card = clipzoo.REGISTRY.resolve("clipzoo/tiny-shapes")
    assert card.alias == "[clip - clipzoo - tiny-shapes]"
    assert clipzoo.REGISTRY.resolve("[clip - clipzoo - tiny-shapes]") == card
    assert [c.id for c in clipzoo.list_models(publisher="clipzoo")] == ["tiny-shapes"]
    assert (card.embed_dim, card.image_size) == (64, 64)


def test_packed_files_are_small_and_complete():
    meta_path, weights = embedded.packed_files("tiny-shapes")
    assert weights.stat().st_size < 6_000_000
    meta = json.loads(meta_path.read_text())
    assert meta["vocab_size"] == 49408 and len(meta["token_ids"]) < 400
    assert meta["model_cfg"] == recipes.RECIPES["tiny-shapes"]["model_config"]


def test_loads_offline_and_classifies_held_out_shapes(tmp_path):
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.eval.runner import Evaluator

    m = clipzoo.load("clipzoo/tiny-shapes", cache_dir=tmp_path)
    assert (tmp_path / "embedded").is_dir()  # materialised into the given cache
    held = recipes.write_heldout("shapes-heldout:385", tmp_path / "held", m.image_size)
    metrics = Evaluator(m, workers=0).zeroshot(open_dataset(held)).metrics
    meta = json.loads(embedded.packed_files("tiny-shapes")[0].read_text())
    assert metrics["acc1"] >= 0.95, metrics
    assert meta["heldout_zeroshot"]["acc1"] >= 0.95


def test_materialised_weights_equal_the_packed_ones(tmp_path):
    from safetensors.torch import load_file

    folder = embedded.materialise("tiny-shapes", cache_dir=tmp_path)
    assert embedded.materialise("tiny-shapes", cache_dir=tmp_path) == folder  # cached: written once
    full = load_file(str(folder / "open_clip_model.safetensors"))
    packed = load_file(str(embedded.packed_files("tiny-shapes")[1]))
    ids = json.loads(embedded.packed_files("tiny-shapes")[0].read_text())["token_ids"]
    assert torch.equal(full["token_embedding.weight"][ids], packed["token_embedding.rows"].float())
    other = torch.ones(49408, dtype=torch.bool)
    other[ids] = False
    assert full["token_embedding.weight"][other].abs().max() == 0
    for k, v in packed.items():
        if k != "token_embedding.rows":
            assert torch.equal(full[k], v.float()), k


def test_a_half_written_cache_folder_is_rebuilt_and_threads_share_one(tmp_path):
    """A folder left without its weights (a process killed by an older clipzoo mid-write) is rebuilt, not
    returned; four threads materialising at once all get the complete folder and leave nothing else behind."""
    import threading

    from safetensors.torch import load_file

    folder = embedded.cache_folder("tiny-shapes", embedded.packed_meta("tiny-shapes"), tmp_path)
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text("{")
    assert embedded.materialise("tiny-shapes", cache_dir=tmp_path) == folder
    assert json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"] == 64
    second = tmp_path / "second"
    done: list = []
    threads = [threading.Thread(target=lambda: done.append(embedded.materialise("tiny-shapes", cache_dir=second)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(done) == 4 and len(set(done)) == 1 and list((second / "embedded").iterdir()) == [done[0]]
    assert load_file(str(done[0] / "open_clip_model.safetensors")).keys() == load_file(
        str(folder / "open_clip_model.safetensors")).keys()


def test_pack_keeps_the_model_on_texts_of_the_kept_tokens(tmp_path):
    """pack -> materialise gives the trained model's outputs (up to fp16) on texts made of kept tokens."""
    from clipzoo.train.config import TrainConfig
    from clipzoo.train.engine import comparator_of, train
    from clipzoo.train.model import build_model

    cfg = TrainConfig(model_config={"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1],
                                                                     "width": 8},
                                    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16,
                                                 "heads": 2, "layers": 1}},
                      batch_size=8, steps=1, lr=1e-3, output=str(tmp_path / "run"), progress=False,
                      tensorboard=False, data=["shapes-classes:16"])
    model = build_model(cfg)
    result = train(cfg, model=model)
    texts = ["a red circle.", "a blue star"]
    ids = torch.unique(model.tokenizer(texts)).tolist()
    embedded.pack(result.model_dir, "t", ids, out_dir=tmp_path)
    monkey_files = (tmp_path / "t.json", tmp_path / "t.safetensors")
    meta = json.loads(monkey_files[0].read_text())
    assert meta["token_ids"] == sorted(ids)
    ref = clipzoo.load(str(result.model_dir)).encode_text(texts)
    import clipzoo.packing as emb

    old = emb.packed_files
    emb.packed_files = lambda name: monkey_files
    try:
        folder = emb.materialise("t", cache_dir=tmp_path / "cache")
    finally:
        emb.packed_files = old
    got = clipzoo.load(str(folder)).encode_text(texts)
    assert torch.allclose(got, ref, atol=2e-3)
    assert comparator_of(model).embed_dim == 16


def test_shapes_classes_spec_and_captions():
    assert recipes.parse_shapes_spec("shapes-classes:100:3") == (100, 3, "shapes-classes")
    assert recipes.parse_shapes_spec("shapes:5") == (5, 0, "shapes")
    assert recipes.parse_shapes_spec("runs/data.csv") is None
    caps = recipes.class_captions({"color": "red", "shape": "circle", "size": "small", "position": "left"})
    assert caps[0] == "a red circle." and all("red circle" in c for c in caps)
    with pytest.raises(recipes.ConfigError, match="write shapes-classes:N"):
        recipes.parse_shapes_spec("shapes-classes:many")
