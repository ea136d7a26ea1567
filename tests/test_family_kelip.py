"""issue 20 §1 — KELIP (navervision/KELIP): the publisher's hub folder (config.json, KelipModel weights — OpenAI
CLIP's layout under ``model.`` — and its own tokenizer files), written tiny here; features equal openai's own CLIP
module (the code KELIP's model.py copies) on the same weights, tokens equal KELIP's ``Tokenizer.encode``
re-derived here, and KELIP's demo zero-shot snippet runs through our API."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import clipzoo
from clipzoo.cards import Source
from clipzoo.cli import app
from clipzoo.errors import BadTextError
from clipzoo.registry import REGISTRY

clip = pytest.importorskip("clip")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

WORDS = ["a", "dog", "cat", "tiger", "rabbit", "photo", "of", "the", "불꽃놀이", "야경", "롯데타워", "석촌호수",
         "오징어", "순대", "spring", "summer", "autumn", "winter", "##s"]
SPECIALS = ["[PAD]", "[UNK]", "[SOS]"]
CFG = dict(embed_dim=32, image_resolution=64, vision_layers=2, vision_width=64, vision_patch_size=32,
           context_length=77, transformer_width=64, transformer_heads=1, transformer_layers=2)


def write_tokenizer(folder) -> None:
    """A tiny WordPiece tokenizer saved as a transformers tokenizer folder, [EOS] the highest id."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS + ["[EOS]"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[SOS]", eos_token="[EOS]",
                                                pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(str(folder))


def write_kelip(folder, seed: int = 0) -> torch.nn.Module:
    """KelipModel.save_pretrained's folder: config.json + pytorch_model.bin (``model.``-prefixed OpenAI CLIP)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    torch.manual_seed(seed)
    vocab = len(SPECIALS) + len(WORDS) + 1
    ref = clip.model.CLIP(CFG["embed_dim"], CFG["image_resolution"], CFG["vision_layers"], CFG["vision_width"],
                          CFG["vision_patch_size"], CFG["context_length"], vocab, CFG["transformer_width"],
                          CFG["transformer_heads"], CFG["transformer_layers"]).eval()
    with torch.no_grad():
        ref.logit_scale.fill_(math.log(100.0))
    torch.save({f"model.{k}": v for k, v in ref.state_dict().items()}, folder / "pytorch_model.bin")
    config = {"architectures": ["KelipModel"], **CFG, "vocab_size": vocab, "torch_dtype": "float32",
              "transformers_version": "4.17.0"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return ref


def kelip_encode(folder, texts, context_length=77) -> torch.Tensor:
    """KELIP's Tokenizer.encode (model_loader.py), re-derived."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    pad = tok.convert_tokens_to_ids("[PAD]")
    sot, eot = tok.convert_tokens_to_ids(tok.bos_token), tok.convert_tokens_to_ids(tok.eos_token)
    rows = [[sot] + tok.encode(t.lower(), max_length=10000, truncation=True)[:context_length - 2] + [eot]
            for t in texts]
    out = torch.zeros(len(rows), context_length, dtype=torch.long) + pad
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r)
    return out


def kelip_preprocess(size: int):
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
                    lambda im: im.convert("RGB"), ToTensor(),
                    Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])


def _images():
    g = torch.Generator().manual_seed(5)
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for h, w in [(70, 90), (128, 64), (64, 64)]]


def _load(folder):
    card = REGISTRY.resolve("[kelip - navervision - ViT-B/32]")
    return clipzoo.load(card.replace(source=Source(path=str(folder))))


def test_kelip_folder_matches_openai_clip_module(tmp_path):
    ref = write_kelip(tmp_path / "kelip")
    m = _load(tmp_path / "kelip")
    assert (m.embed_dim, m.image_size, m.context_length) == (32, 64, 77)
    texts = ["A Dog", "불꽃놀이 야경", "a photo of the 석촌호수", "tigers"]
    tokens = kelip_encode(tmp_path / "kelip", texts)
    assert torch.equal(m.tokenize(texts), tokens)
    assert tokens[0, :4].tolist() == [2, 3, 4, len(SPECIALS) + len(WORDS)] and tokens[0, 4:].eq(0).all()
    images = _images()
    pixels = torch.stack([kelip_preprocess(64)(im) for im in images])
    with torch.no_grad():
        want_img, want_txt = ref.encode_image(pixels), ref.encode_text(tokens)
    got_img, got_txt = m.encode_image(images, normalize=False), m.encode_text(texts, normalize=False)
    assert torch.allclose(got_img, want_img, atol=1e-5, rtol=0), (got_img - want_img).abs().max()
    assert torch.allclose(got_txt, want_txt, atol=1e-5, rtol=0), (got_txt - want_txt).abs().max()
    # the README's `logits_per_image, logits_per_text = model(image, text)`
    logits, logits_t = m(images, texts)
    want = 100.0 * torch.nn.functional.normalize(want_img, dim=-1) @ torch.nn.functional.normalize(want_txt, dim=-1).T
    assert torch.allclose(logits, want, atol=1e-4) and torch.equal(logits_t, logits.T)


def test_kelip_demo_zero_shot_snippet_through_our_api(tmp_path):
    """demo/demo_zeroshot.py's classify(): comma-separated labels, 100 * cosine, softmax, top-k."""
    ref = write_kelip(tmp_path / "kelip", seed=1)
    m = _load(tmp_path / "kelip")
    image = _images()[0]
    for user_text in ["a dog,a cat,a tiger,a rabbit", "불꽃놀이,야경,롯데타워,석촌호수"]:
        user_texts = user_text.split(",")
        with torch.no_grad():
            img = ref.encode_image(kelip_preprocess(64)(image).unsqueeze(0))
            txt = ref.encode_text(kelip_encode(tmp_path / "kelip", user_texts))
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        want = (100.0 * img @ txt.T).softmax(dim=-1)
        got = m.predict(image, user_texts, templates=["{}"])
        assert torch.allclose(got, want, atol=1e-5), (got, want)
        values, indices = got[0].topk(len(user_texts))
        assert [user_texts[i] for i in indices] == [user_texts[i] for i in want[0].topk(len(user_texts))[1]]


def test_kelip_long_text_and_card(tmp_path):
    write_kelip(tmp_path / "kelip")
    m = _load(tmp_path / "kelip")
    long_text = " ".join(["dog"] * 80)
    with pytest.raises(BadTextError, match="82 tokens, longer than the model's context length 77"):
        m.encode_text(long_text)
    # truncate=True is KELIP's own cut: the first 75 tokens, then end-of-text
    assert torch.equal(m.tokenize(long_text, truncate=True), kelip_encode(tmp_path / "kelip", [long_text]))
    card = REGISTRY.resolve("[kelip - navervision - ViT-B-32]")  # also known as
    assert card.source.hf_repo == "navervision/KELIP" and card.config["revision"] == "vit-b-32"
    assert card.alias == "[kelip - navervision - ViT-B/32]"


def test_kelip_info_shows_modalities_dims_and_size(tmp_path):
    write_kelip(tmp_path / "kelip")
    REGISTRY.register(REGISTRY.resolve("[kelip - navervision - ViT-B/32]").replace(
        publisher="test", source=Source(path=str(tmp_path / "kelip"))))
    try:
        out = CliRunner().invoke(app, ["info", "[kelip - test - ViT-B/32]", "--json"])
    finally:
        REGISTRY.unregister("[kelip - test - ViT-B/32]")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["card"]["modalities"] == ["image", "text"] and data["card"]["embed_dim"] == 512
    ref = clip.model.CLIP(32, 64, 2, 64, 32, 77, len(SPECIALS) + len(WORDS) + 1, 64, 1, 2)
    n_image = sum(p.numel() for n, p in ref.named_parameters() if n.startswith("visual."))
    assert data["summary"]["parameters"]["image"] == n_image
    assert data["summary"]["parameters"]["total"] == sum(p.numel() for p in ref.parameters())
