"""issue 20 §1 — CLIP-fa (SajjadAyoubi/clip-farsi): a CLIPVisionModel and a RoBERTa text model from two
save_pretrained folders (tiny and random here), one card, one Comparator; features equal transformers' own
``pooler_output`` of each tower, computed the publisher's README way, to ≤ 1e-5."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import clipzoo
from clipzoo.cards import Source
from clipzoo.cli import app
from clipzoo.errors import BadTextError, CheckpointError
from clipzoo.registry import REGISTRY

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["یک گربه روی مبل", "سگ در پارک بازی می‌کند", "موز زرد", "اسب سفید در برف", "غروب دریا", "چند مرد"]


def write_clip_fa(root, seed: int = 0):
    """vision/ (CLIPVisionModel + CLIP image processor) and text/ (RobertaModel + byte-level BPE tokenizer)."""
    torch.manual_seed(seed)
    vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
        patch_size=6)).eval()
    vision.save_pretrained(root / "vision")
    transformers.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(
        root / "vision")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    (root / "bpe").mkdir(parents=True)
    bpe.save_model(str(root / "bpe"))
    tok = transformers.AutoTokenizer.from_pretrained(str(root / "bpe"), tokenizer_type="roberta", model_max_length=40)
    assert len(tok("موز زرد")["input_ids"]) > 4  # a real vocabulary, not an empty tokenizer
    tok.save_pretrained(root / "text")
    text = transformers.RobertaModel(transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=42, pad_token_id=1, bos_token_id=0, eos_token_id=2)).eval()
    text.save_pretrained(root / "text")
    return vision, text, tok, transformers.CLIPImageProcessor.from_pretrained(root / "vision")


def _images():
    g = torch.Generator().manual_seed(9)
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for h, w in [(45, 61), (90, 30), (33, 33), (64, 48), (31, 77)]]


def _load(root):
    card = REGISTRY.resolve("[clip-fa - SajjadAyoubi - clip-fa]")
    return clipzoo.load(card.replace(source=Source(path=str(root))))


def test_clip_fa_matches_transformers_pooler_outputs(tmp_path):
    vision, text, tok, processor = write_clip_fa(tmp_path)
    m = _load(tmp_path)
    assert (m.embed_dim, m.image_size, m.context_length) == (32, 30, 40)
    images = _images()
    with torch.no_grad():
        want_img = vision(**processor(images, return_tensors="pt")).pooler_output
        # the README embeds one text at a time: no padding at all
        want_txt = torch.cat([text(**tok(t, return_tensors="pt")).pooler_output for t in CORPUS])
    got_img, got_txt = m.encode_image(images, normalize=False), m.encode_text(CORPUS, normalize=False)
    assert torch.allclose(got_img, want_img, atol=1e-5, rtol=0), (got_img - want_img).abs().max()
    assert torch.allclose(got_txt, want_txt, atol=1e-5, rtol=0), (got_txt - want_txt).abs().max()
    assert m.logit_scale == pytest.approx(1 / 0.07)
    # the demo's zero-shot: cosine of image and class texts
    probs = m.predict(images[:1], CORPUS[:3], templates=["{}"])
    cos = torch.nn.functional.cosine_similarity(want_img[:1], want_txt[:3])
    assert torch.allclose(probs[0], (cos / 0.07).softmax(-1), atol=1e-5)


def test_clip_fa_errors(tmp_path):
    write_clip_fa(tmp_path)
    m = _load(tmp_path)
    with pytest.raises(BadTextError, match="longer than the model's context length 40"):
        m.encode_text(" ".join(["موز"] * 60))
    (tmp_path / "only").mkdir()
    with pytest.raises(CheckpointError, match="needs vision/ .*and text/"):
        _load(tmp_path / "only")


def test_clip_fa_card_and_info(tmp_path):
    card = REGISTRY.resolve("[clip-fa - SajjadAyoubi - clipfa]")
    assert card.source.hf_repo == "SajjadAyoubi/clip-fa-vision"
    assert card.config["text_repo"] == "SajjadAyoubi/clip-fa-text"
    vision, text, _, _ = write_clip_fa(tmp_path)
    REGISTRY.register(card.replace(publisher="test", source=Source(path=str(tmp_path))))
    try:
        out = CliRunner().invoke(app, ["info", "[clip-fa - test - clip-fa]", "--json"])
    finally:
        REGISTRY.unregister("[clip-fa - test - clip-fa]")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["card"]["modalities"] == ["image", "text"] and data["card"]["embed_dim"] == 768
    params = data["summary"]["parameters"]
    assert params["image"] == sum(p.numel() for p in vision.parameters())
    assert params["text"] == sum(p.numel() for p in text.parameters())
