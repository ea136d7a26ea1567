"""issue 20 §1 — CLOOB (crowsonkb/cloob-training): a tiny checkpoint in the publisher's format — a pickle of
``{'params': (image_params, text_params), 'epoch'}`` with Haiku module / parameter names and numpy arrays, plus
its JSON config — loaded into PyTorch; features equal a functional re-derivation of CLOOB's Haiku model written
here on the Haiku parameters themselves (Haiku's layouts, JAX's tanh GELU, the query-side padding mask, pooling
at position 0) to ≤ 1e-5; ``gelu="exact"`` equals the repository's PyTorch port."""
from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import clipzoo
from clipzoo.cards import Source
from clipzoo.cli import app
from clipzoo.errors import ClipzooError, UnsafePickleError
from clipzoo.registry import REGISTRY

clip = pytest.importorskip("clip")  # CLOOB tokenizes with clip.tokenize

IMG, PATCH, WIDTH, HEADS, LAYERS, D_EMBED, TEXT_WIDTH, VOCAB, CTX = 32, 8, 32, 4, 2, 16, 24, 49408, 77
CONFIG = {"url": "", "d_embed": D_EMBED, "inv_tau": 30.0, "scale_hopfield": 15.0,
          "image_encoder": {"type": "ViT", "image_size": IMG, "input_channels": 3, "patch_size": PATCH,
                            "n_layers": LAYERS, "d_model": WIDTH, "n_heads": HEADS,
                            "normalize": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                          "std": [0.26862954, 0.26130258, 0.27577711]}},
          "text_encoder": {"type": "transformer", "tokenizer": "clip", "text_size": CTX, "vocab_size": VOCAB,
                           "n_layers": LAYERS, "d_model": TEXT_WIDTH, "n_heads": 2}}


def _layers(rng, base: str, width: int) -> dict:
    p = {}
    for i in range(LAYERS):
        b = f"{base}/layer_{i}"
        for ln in ("self_attention/layer_norm", "feed_forward/layer_norm"):
            p[f"{b}/{ln}"] = {"scale": 1 + 0.1 * rng.standard_normal(width, dtype=np.float32),
                              "offset": 0.1 * rng.standard_normal(width, dtype=np.float32)}
        for name in ("query", "key", "value", "linear"):
            p[f"{b}/self_attention/multi_head_attention/{name}"] = {
                "w": rng.standard_normal((width, width), dtype=np.float32) / math.sqrt(width),
                "b": 0.1 * rng.standard_normal(width, dtype=np.float32)}
        w0 = rng.standard_normal((width, 4 * width), dtype=np.float32) / math.sqrt(width)
        w1 = rng.standard_normal((4 * width, width), dtype=np.float32) / math.sqrt(4 * width)
        p[f"{b}/feed_forward/linear_0"] = {"w": w0, "b": 0.1 * rng.standard_normal(4 * width, dtype=np.float32)}
        p[f"{b}/feed_forward/linear_1"] = {"w": w1, "b": 0.1 * rng.standard_normal(width, dtype=np.float32)}
    return p


def haiku_params(seed: int = 0) -> tuple[dict, dict]:
    """(image, text) parameters named as Haiku names cloob_training's ViTImageEncoder / TextEncoder modules."""
    rng = np.random.default_rng(seed)
    n_patches = (IMG // PATCH) ** 2
    image = {"vi_t_image_encoder": {"class_embed": rng.standard_normal(WIDTH, dtype=np.float32) / math.sqrt(WIDTH)},
             "vi_t_image_encoder/embed": {"w": rng.standard_normal((PATCH, PATCH, 3, WIDTH), dtype=np.float32) / 8},
             "vi_t_image_encoder/pos_embed": {"w": rng.standard_normal((n_patches + 1, WIDTH), dtype=np.float32) / 5},
             "vi_t_image_encoder/proj": {"w": rng.standard_normal((WIDTH, D_EMBED), dtype=np.float32) / 5,
                                         "b": 0.1 * rng.standard_normal(D_EMBED, dtype=np.float32)},
             **_layers(rng, "vi_t_image_encoder", WIDTH)}
    text = {"text_encoder/embed": {"embeddings": rng.standard_normal((VOCAB, TEXT_WIDTH), dtype=np.float32) / 5},
            "text_encoder/pos_embed": {"w": rng.standard_normal((CTX, TEXT_WIDTH), dtype=np.float32) / 5},
            "text_encoder/proj": {"w": rng.standard_normal((TEXT_WIDTH, D_EMBED), dtype=np.float32) / 5,
                                  "b": 0.1 * rng.standard_normal(D_EMBED, dtype=np.float32)},
            **_layers(rng, "text_encoder", TEXT_WIDTH)}
    return image, text


def write_cloob(path, seed: int = 0, protocol: int = 4) -> tuple[dict, dict]:
    image, text = haiku_params(seed)
    with open(path, "wb") as f:
        pickle.dump({"params": (image, text), "epoch": 16}, f, protocol=protocol)
    path.with_suffix(".json").write_text(json.dumps(CONFIG), encoding="utf-8")
    return image, text


# ------------------------------------------------------------ Haiku's model, re-derived on its own parameters
def _t(a):
    return torch.from_numpy(np.asarray(a))


def _ln(x, p):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], _t(p["scale"]), _t(p["offset"]), eps=1e-5)


def _lin(x, p):
    return x @ _t(p["w"]) + _t(p["b"])


def _gelu(x, exact):
    if exact:
        return torch.nn.functional.gelu(x)
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _tower(params, base, x, heads, mask, exact):
    for i in range(LAYERS):
        b = f"{base}/layer_{i}"
        h = _ln(x, params[f"{b}/self_attention/layer_norm"])
        n, s, d = h.shape
        q, k, v = (_lin(h, params[f"{b}/self_attention/multi_head_attention/{m}"]).view(n, s, heads, d // heads)
                   for m in ("query", "key", "value"))
        logits = torch.einsum("nthd,nThd->nhtT", q, k) / math.sqrt(d // heads)
        if mask is not None:  # hk.MultiHeadAttention's jnp.where(mask, logits, -1e30), mask[:, None, :, None]
            logits = torch.where(mask[:, None, :, None], logits, torch.tensor(-1e30))
        att = torch.einsum("nhtT,nThd->nthd", logits.softmax(-1), v).reshape(n, s, d)
        x = x + _lin(att, params[f"{b}/self_attention/multi_head_attention/linear"])
        h = _ln(x, params[f"{b}/feed_forward/layer_norm"])
        x = x + _lin(_gelu(_lin(h, params[f"{b}/feed_forward/linear_0"]), exact), params[f"{b}/feed_forward/linear_1"])
    out = _lin(x[:, 0], params[f"{base}/proj"])
    return out / out.norm(dim=-1, keepdim=True)


def ref_image(params, pixels, exact=False):
    w = _t(params["vi_t_image_encoder/embed"]["w"])  # HWIO, NCHW data: Conv2D with stride = kernel
    x = torch.nn.functional.conv2d(pixels, w.permute(3, 2, 0, 1), stride=PATCH)
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)
    cls = _t(params["vi_t_image_encoder"]["class_embed"]).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + _t(params["vi_t_image_encoder/pos_embed"]["w"])
    return _tower(params, "vi_t_image_encoder", x, HEADS, None, exact)


def ref_text(params, tokens, exact=False):
    eot = tokens == VOCAB - 1
    mask = torch.cumsum(eot, dim=-1) == 0 | eot  # CLOOB's expression, operator precedence and all
    x = _t(params["text_encoder/embed"]["embeddings"])[tokens] + _t(params["text_encoder/pos_embed"]["w"])
    return _tower(params, "text_encoder", x, 2, mask, exact)


def _pixels(images):
    from torchvision import transforms as T

    norm = CONFIG["image_encoder"]["normalize"]
    t = T.Compose([T.Resize(IMG, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(IMG),
                   lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(norm["mean"], norm["std"])])
    return torch.stack([t(im) for im in images])


def _images():
    g = torch.Generator().manual_seed(11)
    return [Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
            for h, w in [(40, 52), (64, 32), (32, 32)]]


TEXTS = ["a photo of a cat", "an oil painting of the sea at night", "x"]
ALIAS = "[cloob - crowsonkb - cloob_laion_400m_vit_b_16_16_epochs]"


def _load(path, **kw):
    card = REGISTRY.resolve(ALIAS)
    config = {k: v for k, v in card.config.items() if k != "cloob_config"}  # the tiny file's own JSON beside it
    return clipzoo.load(card.replace(source=Source(path=str(path)), config=config), **kw)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cloob_haiku_pickle_matches_haiku_model(tmp_path, protocol):
    image, text = write_cloob(tmp_path / "tiny.pkl", protocol=protocol)
    m = _load(tmp_path / "tiny.pkl")
    assert (m.embed_dim, m.image_size, m.context_length, m.logit_scale) == (D_EMBED, IMG, CTX, 30.0)
    images = _images()
    want_img = ref_image(image, _pixels(images))
    got = m.encode_image(images, normalize=False)
    assert torch.allclose(got, want_img, atol=1e-5, rtol=0), (got - want_img).abs().max()
    tokens = clip.tokenize(TEXTS)
    assert torch.equal(m.tokenize(TEXTS), tokens)
    want_txt = ref_text(text, tokens)
    got = m.encode_text(TEXTS, normalize=False)
    assert torch.allclose(got, want_txt, atol=1e-5, rtol=0), (got - want_txt).abs().max()
    # padding reaches the features (keys are never masked): a padded position's token changes them
    padded = tokens.clone()
    padded[2, 10] = 1000
    assert not torch.allclose(m.encode_text(padded, normalize=False)[2], got[2], atol=1e-4)
    logits = m.similarity(m.encode_image(images), m.encode_text(TEXTS))
    assert torch.allclose(logits, 30.0 * want_img @ want_txt.T, atol=1e-4)


def test_cloob_exact_gelu_is_the_pytorch_port(tmp_path):
    image, text = write_cloob(tmp_path / "tiny.pkl", seed=1)
    m = _load(tmp_path / "tiny.pkl", gelu="exact")
    images = _images()
    assert torch.allclose(m.encode_image(images, normalize=False), ref_image(image, _pixels(images), exact=True),
                          atol=1e-5, rtol=0)
    tokens = clip.tokenize(TEXTS)
    assert torch.allclose(m.encode_text(TEXTS, normalize=False), ref_text(text, tokens, exact=True), atol=1e-5, rtol=0)
    jax_gelu = _load(tmp_path / "tiny.pkl").encode_text(TEXTS, normalize=False)
    assert (jax_gelu - ref_text(text, tokens, exact=True)).abs().max() > 1e-6  # the two GELUs do differ
    with pytest.raises(ClipzooError, match="gelu='fast'"):
        _load(tmp_path / "tiny.pkl", gelu="fast")


class _Hostile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cloob_hostile_pickle_refused(tmp_path):
    image, text = haiku_params()
    marker = tmp_path / "pwned"
    with open(tmp_path / "bad.pkl", "wb") as f:
        pickle.dump({"params": (image, text), "epoch": _Hostile(marker)}, f)
    (tmp_path / "bad.json").write_text(json.dumps(CONFIG), encoding="utf-8")
    with pytest.raises(UnsafePickleError) as info:
        _load(tmp_path / "bad.pkl")
    msg = str(info.value)
    assert "\n" not in msg and "asks for the global io.open" in msg and "only numpy arrays" in msg
    assert not marker.exists()
    (tmp_path / "nojson.pkl").write_bytes((tmp_path / "bad.pkl").read_bytes())
    with pytest.raises(ClipzooError, match="needs its CLOOB JSON config"):
        _load(tmp_path / "nojson.pkl")


def test_cloob_cards_and_info():
    cards = [c for c in REGISTRY if c.backend == "cloob"]
    assert sorted(c.id for c in cards) == ["cloob_laion_400m_vit_b_16_16_epochs", "cloob_laion_400m_vit_b_16_32_epochs"]
    card = REGISTRY.resolve("[cloob - crowsonkb - cloob_laion_400m_vit_b_16_32_epochs]")
    assert card.source.sha256 == "646f61628eb4bc03a01ce5c23b727a348105f0405b6037a329da062739a06441"
    assert card.source.url.endswith(f"-{card.source.sha256}.pkl")
    out = CliRunner().invoke(app, ["info", card.alias, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["card"]["modalities"] == ["image", "text"] and data["card"]["embed_dim"] == 512
    p = data["summary"]["parameters"]
    block = lambda w: 4 * (w * w + w) + 2 * 2 * w + (w * 4 * w + 4 * w) + (4 * w * w + w)  # noqa: E731
    assert p["image"] == 768 * 3 * 256 + 768 + 197 * 768 + 12 * block(768) + 768 * 512 + 512
    assert p["text"] == 49408 * 512 + 77 * 512 + 12 * block(512) + 512 * 512 + 512
