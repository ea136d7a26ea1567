"""MindSpore engine §5: fp32 CPU parity with clipzoo's torch model, max abs diff <= 1e-5 for every family.

Tiny random models of each family — OpenAI (QuickGELU; a TorchScript archive and a plain state dict) and
open_clip (GELU; safetensors with their config), ResNet and ViT, with random batch-norm statistics — load in
torch and with ``engine="mindspore"``; image features, text features and probabilities agree to 1e-5 (the
measured differences are ~1e-6). A full-size ViT-B/32 and RN50 with random weights check the same at scale.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mindspore")

import clipzoo  # noqa: E402
from clipzoo.convert.form import OpenClipForm  # noqa: E402
from clipzoo.convert.parity import difference  # noqa: E402
from clipzoo.convert.targets import write_safetensors  # noqa: E402
from clipzoo.models.mindspore_clip import build_model, load_params  # noqa: E402
from clipzoo.models.mindspore_config import get_config  # noqa: E402
from clipzoo.models.mindspore_names import torch_to_mindspore  # noqa: E402
from clipzoo.testing.tiny import OPENAI_PREPROCESS, tiny_model, write_openai_jit  # noqa: E402

TOL = 1e-5
TEXTS = ["a photo of a cat", "a red circle on a white background", "Un café, s'il vous plaît!"]


def random_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Batch norms with non-trivial running statistics (so that moving_mean / moving_variance matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model


def images(n: int = 3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 56, 3), dtype=np.uint8)) for i in range(n)]


def rows(a, b) -> dict[str, dict[str, float]]:
    """MindSpore-CLIP's difference rows: image features, text features, probabilities (``a`` MindSpore)."""
    pa, pb = a.pixels(images()), b.pixels(images())
    assert torch.equal(pa, pb)  # the same preprocessing
    ta, tb = a.tokenize(TEXTS), b.tokenize(TEXTS)
    assert torch.equal(ta, tb)  # the same tokenizer
    with torch.no_grad():
        ia, ib = a.encode_pixels(pa), b.encode_pixels(pb)
        xa, xb = a.encode_tokens(ta), b.encode_tokens(tb)
        probs = [m.probabilities(m.similarity(torch.nn.functional.normalize(i, dim=-1),
                                              torch.nn.functional.normalize(x, dim=-1)))
                 for m, i, x in ((a, ia, xa), (b, ib, xb))]
    return {"image features": difference(ia, ib), "text features": difference(xa, xb),
            "probabilities": difference(*probs)}


def open_clip_file(tmp_path, name: str, seed: int = 1):
    """(path, state dict) of a tiny open_clip model as .safetensors with its config (random batch-norm stats)."""
    cfg = get_config(name)
    model = random_stats(tiny_model(seed, cfg))
    size = cfg["vision_cfg"]["image_size"]
    form = OpenClipForm(model.state_dict(), cfg, {"size": size, **OPENAI_PREPROCESS}, name)
    return write_safetensors(form, tmp_path / f"{name}.safetensors"), model.state_dict()


def _openai_state_dict(tmp_path, name: str):
    model = random_stats(tiny_model(2, get_config(name)))
    path = tmp_path / f"{name}-openai.pt"
    torch.save({k: v for k, v in model.state_dict().items() if k != "attn_mask"}, path)
    return path


FAMILIES = {
    "openai-vit-torchscript": lambda tmp: write_openai_jit(tmp / "tiny-jit.pt"),
    "openai-rn-state-dict": lambda tmp: _openai_state_dict(tmp, "tiny-RN-quickgelu"),
    "open_clip-vit-gelu": lambda tmp: open_clip_file(tmp, "tiny-ViT")[0],
    "open_clip-rn-gelu": lambda tmp: open_clip_file(tmp, "tiny-RN")[0],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_engine_parity_every_family(family, tmp_path):
    path = FAMILIES[family](tmp_path)
    torch_model = clipzoo.load(str(path))
    ms_model = clipzoo.load(str(path), engine="mindspore")
    assert ms_model.card.backend == "mindspore" and ms_model.runtime == "mindspore-pynative"
    assert ms_model.logit_scale == pytest.approx(torch_model.logit_scale, rel=1e-6)
    report = rows(ms_model, torch_model)
    for row, d in report.items():
        assert d["max_abs"] <= TOL, (family, row, d)
    assert report["image features"]["max_abs"] > 0 or report["text features"]["max_abs"] > 0  # two real engines


@pytest.mark.slow  # ~20-60 s each on a CPU core: MindSpore's CPU convolutions are slow in PyNative mode
@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_full_size_random_weights_parity(name):
    """A full-size ViT-B/32 and RN50 (open_clip's random init, random batch-norm statistics) at 224 px."""
    import open_clip

    torch.manual_seed(0)
    model = random_stats(open_clip.create_model(name).eval())
    net = load_params(build_model(name), torch_to_mindspore(model.state_dict()))
    import mindspore as ms

    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref_i = model.encode_image(pixels)
    got_i = torch.from_numpy(net.encode_image(ms.Tensor(pixels.numpy())).asnumpy())
    assert difference(got_i, ref_i)["max_abs"] <= TOL
    if name == "ViT-B-32":  # RN50's text tower is ViT-B-32's (width 512, 12 layers, 8 heads): checked once
        tokens = open_clip.tokenize(TEXTS[:2])
        with torch.no_grad():
            ref_t = model.encode_text(tokens)
        got_t = torch.from_numpy(net.encode_text(ms.Tensor(tokens.numpy().astype(np.int32))).asnumpy())
        assert difference(got_t, ref_t)["max_abs"] <= TOL
