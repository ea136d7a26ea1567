"""issue 20 §1 — FAIR SLIP (facebookresearch/SLIP): SLIP, CLIP and SimCLR checkpoints in the publisher's own
``.pt`` format ({'state_dict': module.-prefixed, 'args': argparse.Namespace, 'epoch', 'optimizer', …}), read with
weights_only plus Namespace only; features equal an independent re-derivation (timm's ViT, as SLIP builds it,
and a functional OpenAI text transformer written here)."""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import clipzoo
from clipzoo.cards import Source
from clipzoo.cli import app
from clipzoo.errors import ClipzooError, UnsafePickleError
from clipzoo.registry import REGISTRY

timm = pytest.importorskip("timm")
clip = pytest.importorskip("clip")  # openai's tokenizer: SLIP's is the same BPE

TEXT_WIDTH, TEXT_LAYERS, VOCAB, CONTEXT = 64, 2, 49408, 77
VISION_WIDTH, EMBED, SSL_MLP, SSL_EMB = 24, 16, 32, 8


def _vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # SLIP's ViT-S/16 has 12 heads (MoCo v3's); tiny width and depth, 32 px
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, embed_dim=VISION_WIDTH,
                             depth=2, num_heads=12, img_size=32).eval()


def _text_params(g: torch.Generator) -> dict:
    w = TEXT_WIDTH
    p = {"token_embedding.weight": torch.randn(VOCAB, w, generator=g) * 0.02,
         "positional_embedding": torch.randn(CONTEXT, w, generator=g) * 0.01,
         "ln_final.weight": 1 + 0.1 * torch.randn(w, generator=g), "ln_final.bias": 0.1 * torch.randn(w, generator=g),
         "text_projection": torch.randn(w, EMBED, generator=g) * w ** -0.5}
    for i in range(TEXT_LAYERS):
        b = f"transformer.resblocks.{i}."
        p.update({b + "attn.in_proj_weight": torch.randn(3 * w, w, generator=g) * w ** -0.5,
                  b + "attn.in_proj_bias": 0.02 * torch.randn(3 * w, generator=g),
                  b + "attn.out_proj.weight": torch.randn(w, w, generator=g) * w ** -0.5,
                  b + "attn.out_proj.bias": 0.02 * torch.randn(w, generator=g),
                  b + "ln_1.weight": 1 + 0.1 * torch.randn(w, generator=g),
                  b + "ln_1.bias": 0.1 * torch.randn(w, generator=g),
                  b + "ln_2.weight": 1 + 0.1 * torch.randn(w, generator=g),
                  b + "ln_2.bias": 0.1 * torch.randn(w, generator=g),
                  b + "mlp.c_fc.weight": torch.randn(4 * w, w, generator=g) * w ** -0.5,
                  b + "mlp.c_fc.bias": 0.02 * torch.randn(4 * w, generator=g),
                  b + "mlp.c_proj.weight": torch.randn(w, 4 * w, generator=g) * (4 * w) ** -0.5,
                  b + "mlp.c_proj.bias": 0.02 * torch.randn(w, generator=g)})
    return p


def _mlp_params(g: torch.Generator) -> dict:
    p = {}
    for name, (n_in, n_out) in {"layer1": (VISION_WIDTH, SSL_MLP), "layer2": (SSL_MLP, SSL_MLP),
                                "layer3": (SSL_MLP, SSL_EMB)}.items():
        p[f"image_mlp.{name}.weight"] = torch.randn(n_out, n_in, generator=g)
        p[f"image_mlp.{name}.bias"] = torch.randn(n_out, generator=g)
    for bn in ("bn1", "bn2"):
        p.update({f"image_mlp.{bn}.weight": torch.ones(SSL_MLP), f"image_mlp.{bn}.bias": torch.zeros(SSL_MLP),
                  f"image_mlp.{bn}.running_mean": torch.zeros(SSL_MLP),
                  f"image_mlp.{bn}.running_var": torch.ones(SSL_MLP),
                  f"image_mlp.{bn}.num_batches_tracked": torch.tensor(7)})
    return p


def write_slip(path, kind: str, seed: int = 0) -> dict:
    """A tiny checkpoint exactly as SLIP's main.py saves one; returns the unprefixed state dict."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"visual.{k}": v for k, v in _vit(seed).state_dict().items()}
    if kind != "SIMCLR":
        sd.update(_text_params(g))
        sd["image_projection"] = torch.randn(VISION_WIDTH, EMBED, generator=g) * VISION_WIDTH ** -0.5
        sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    if kind != "CLIP":
        sd.update(_mlp_params(g))
    args = argparse.Namespace(model=f"{kind}_VITS16", ssl_mlp_dim=SSL_MLP, ssl_emb_dim=SSL_EMB, lr=3e-3, wd=0.1,
                              output_dir="/checkpoint/slip", betas=(0.9, 0.98), disable_amp=False, resume="")
    torch.save({"epoch": 25, "state_dict": {f"module.{k}": v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0, 1]}]},
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
                "best_acc1": 38.3, "args": args}, path)
    return sd


def ref_text(sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    """OpenAI's text tower written out with functional ops (causal mask, QuickGELU, pooled at the max id)."""
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    n, L, w = x.shape
    causal = torch.full((L, L), float("-inf")).triu(1)
    for i in range(TEXT_LAYERS):
        p = {k.split(f"resblocks.{i}.", 1)[1]: v for k, v in sd.items() if f"resblocks.{i}." in k}
        h = F.layer_norm(x, (w,), p["ln_1.weight"], p["ln_1.bias"])
        q, k, v = F.linear(h, p["attn.in_proj_weight"], p["attn.in_proj_bias"]).chunk(3, dim=-1)
        att = (q @ k.transpose(1, 2) / math.sqrt(w) + causal).softmax(-1) @ v  # one head at width 64
        x = x + F.linear(att, p["attn.out_proj.weight"], p["attn.out_proj.bias"])
        h = F.linear(F.layer_norm(x, (w,), p["ln_2.weight"], p["ln_2.bias"]), p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    x = F.layer_norm(x, (w,), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(n), tokens.argmax(-1)] @ sd["text_projection"]


def ref_pixels(images) -> torch.Tensor:
    """SLIP's eval_zeroshot.py transform at 32 px."""
    from torchvision import transforms as T

    t = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor(),
                   T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    return torch.stack([t(im.convert("RGB")) for im in images])


def _images():
    g = torch.Generator().manual_seed(3)
    sizes = [(41, 57), (64, 33), (50, 50)]
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for h, w in sizes]


def _card(alias: str, path) -> clipzoo.Comparator:
    card = REGISTRY.resolve(alias)
    return clipzoo.load(card.replace(source=Source(path=str(path))))


TEXTS = ["a photo of a dog", "a diagram", "SLIP meets language–image pre-training!"]


def test_slip_checkpoint_matches_rederivation(tmp_path):
    sd = write_slip(tmp_path / "slip_small_25ep.pt", "SLIP")
    m = _card("[slip - facebookresearch - slip_small_25ep]", tmp_path / "slip_small_25ep.pt")
    assert (m.embed_dim, m.image_size, m.context_length) == (EMBED, 32, CONTEXT)
    images = _images()
    want_img = _vit(0)(ref_pixels(images)) @ sd["image_projection"]
    got = m.encode_image(images, normalize=False)
    assert torch.allclose(got, want_img, atol=1e-5, rtol=0), (got - want_img).abs().max()
    tokens = clip.tokenize(TEXTS)
    assert torch.equal(m.tokenize(TEXTS), tokens)
    want_txt = ref_text(sd, tokens)
    got = m.encode_text(TEXTS, normalize=False)
    assert torch.allclose(got, want_txt, atol=1e-5, rtol=0), (got - want_txt).abs().max()
    assert m.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    logits = m.similarity(m.encode_image(images), m.encode_text(TEXTS))
    want = (1 / 0.07) * F.normalize(want_img, dim=-1) @ F.normalize(want_txt, dim=-1).T
    assert torch.allclose(logits, want, atol=1e-4)


def test_slip_clip_checkpoint_and_truncation(tmp_path):
    sd = write_slip(tmp_path / "clip.pt", "CLIP", seed=1)
    m = _card("[clip - facebookresearch - clip_small_25ep]", tmp_path / "clip.pt")
    assert not hasattr(m.model, "image_mlp")
    long_text = " ".join(["word"] * 100)
    with pytest.raises(ClipzooError, match="102 tokens, longer than the model's context length 77"):
        m.encode_text(long_text)
    tokens = m.tokenize(long_text, truncate=True)
    # SLIP's tokenizer keeps the first 77 tokens (no end-of-text is forced in)
    assert tokens[0, 0].item() == 49406 and tokens[0, -1].item() != 49407
    got = m.encode_text(long_text, truncate=True, normalize=False)
    assert torch.allclose(got, ref_text(sd, tokens), atol=1e-5, rtol=0)


def test_slip_simclr_is_image_only(tmp_path):
    write_slip(tmp_path / "simclr.pt", "SIMCLR", seed=2)
    card = REGISTRY.resolve("[simclr - facebookresearch - simclr_small_25ep]")
    assert card.modalities == ("image",) and card.embed_dim == 384
    m = _card(card.alias, tmp_path / "simclr.pt")
    assert m.modalities == ("image",) and m.embed_dim == VISION_WIDTH
    images = _images()
    want = _vit(2)(ref_pixels(images))
    assert torch.allclose(m.encode_image(images, normalize=False), want, atol=1e-5, rtol=0)
    with pytest.raises(ClipzooError, match="SimCLR model: it is image-only"):
        m.encode_text(["a dog"])
    with pytest.raises(ClipzooError, match="image-only"):
        m.tokenize(["a dog"])


class _Hostile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_slip_hostile_pickle_refused(tmp_path):
    write_slip(tmp_path / "ok.pt", "SLIP")
    bad = torch.load(tmp_path / "ok.pt", weights_only=False)
    marker = tmp_path / "pwned"
    bad["args"] = _Hostile(marker)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(UnsafePickleError) as info:
        _card("[slip - facebookresearch - slip_small_25ep]", tmp_path / "bad.pt")
    msg = str(info.value)
    assert "\n" not in msg and "asks for the global io.open" in msg and "argparse.Namespace" in msg
    assert not marker.exists()


def test_slip_catalog_cards():
    cards = [c for c in REGISTRY if c.backend == "slip"]
    assert len(cards) == 19
    by_id = {c.id: c for c in cards}
    card = by_id["slip_base_cc12m_35ep"]
    assert card.alias == "[slip - facebookresearch - slip_base_cc12m_35ep]"
    assert card.source.url == "https://dl.fbaipublicfiles.com/slip/slip_base_cc12m_35ep.pt"
    assert card.config["model"] == "SLIP_VITB16"
    assert {c.architecture for c in cards} == {"slip", "clip", "simclr"}
    assert by_id["simclr_large_25ep"].modalities == ("image",) and by_id["simclr_large_25ep"].embed_dim == 1024


def test_slip_info_shows_modalities_dims_and_size():
    out = CliRunner().invoke(app, ["info", "[slip - facebookresearch - slip_base_100ep]", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["card"]["modalities"] == ["image", "text"] and data["card"]["embed_dim"] == 512
    params = data["summary"]["parameters"]
    # timm's ViT-B/16 (85.8 M) + the 768x512 projection; OpenAI's 63.4 M text tower; SimCLR head + logit scale
    assert params["image"] == 85_798_656 + 768 * 512 and params["text"] == 63_428_096
    assert params["other"] == 768 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 256 + 256 + 4 * 4096 + 1
    out = CliRunner().invoke(app, ["info", "[simclr - facebookresearch - simclr_small_25ep]"])
    assert out.exit_code == 0 and "modalities" in out.output and "image" in out.output
