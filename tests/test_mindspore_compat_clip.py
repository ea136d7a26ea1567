"""MindSpore engine §4, ``clip``: MindSpore-CLIP's ``clip`` API from ``clipzoo.compat.mindspore``.

MindSpore-CLIP's README example (mindspore-lab/mindcv ``examples/clip/README.md``, "Example Code") runs as it is
written, with only its import swapped, on a local ``./ViT-B-32.ckpt`` — a tiny random-weight OpenAI-layout model
written by clipzoo's converter — in PyNative mode (its default ``mode=1``) and in Graph mode (``mode=0``); its
features and probabilities equal clipzoo's torch model's on the same weights, and both modes agree.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ms = pytest.importorskip("mindspore")

import open_clip as reference_open_clip  # noqa: E402

import clipzoo  # noqa: E402
from clipzoo.compat.mindspore import clip  # noqa: E402
from clipzoo.compat.mindspore import common as ms_common  # noqa: E402
from clipzoo.convert.form import OpenClipForm  # noqa: E402
from clipzoo.convert.mindspore import write_mindspore  # noqa: E402
from clipzoo.errors import ClipzooError, MissingExtraError  # noqa: E402
from clipzoo.models.mindspore_config import get_config  # noqa: E402
from clipzoo.testing.tiny import state_dict  # noqa: E402
from test_mindspore_names import ckpt_transform_name  # noqa: E402
from test_mindspore_parity import open_clip_file  # noqa: E402

TOL = 1e-5
TEXTS = ["a diagram", "a dog", "a cat"]
OPENAI_NAMES = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]

# examples/clip/README.md, "Example Code", as it is written there
README_SNIPPET = '''\
import clip
from PIL import Image
from mindspore import Tensor,nn

model, preprocess = clip.load("./ViT-B-32.ckpt", device="Ascend")

image = Tensor(preprocess(Image.open("CLIP.png")))
text = clip.tokenize(["a diagram", "a dog", "a cat"])

image_features = model.encode_image(image)
text_features = model.encode_text(text)

logits_per_image, logits_per_text = model(image, text)
probs = nn.Softmax(axis=-1)(logits_per_image).numpy()

print("Label probs:", probs)  # prints: [[0.9927937  0.00421067 0.00299571]]
'''


@pytest.fixture(autouse=True)
def pynative_after():
    """``clip.load`` sets MindSpore's global mode, as MindSpore-CLIP's does: back to PyNative after each test."""
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with ./ViT-B-32.ckpt (tiny OpenAI-layout ViT, QuickGELU, converted by clipzoo) and ./CLIP.png, and
    the torch reference: clipzoo's torch model of the same weights."""
    tmp = tmp_path_factory.mktemp("msclip")
    path, sd = open_clip_file(tmp, "tiny-ViT-quickgelu", seed=4)
    write_mindspore(OpenClipForm(sd, get_config("tiny-ViT-quickgelu"), {}, "tiny"), tmp / "ViT-B-32.ckpt")
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(tmp / "CLIP.png")
    ref = clipzoo.load(str(path))
    with torch.no_grad():
        image = ref.encode_pixels(ref.pixels([Image.open(tmp / "CLIP.png")])).numpy()
        text = ref.encode_tokens(ref.tokenize(TEXTS)).numpy()
    unit = [x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (image, text)]
    logits = float(sd["logit_scale"].exp()) * unit[0] @ unit[1].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return tmp, {"image": image, "text": text, "logits": logits, "probs": probs / probs.sum(-1, keepdims=True)}


def run_snippet(code: str, workdir, monkeypatch) -> tuple[dict, str]:
    tmp, _ = workdir
    monkeypatch.chdir(tmp)
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.warns(UserWarning, match=r"device='Ascend'.* runs on the CPU"):
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own text
    return namespace, out.getvalue()


def test_readme_snippet_pynative_and_graph_mode(workdir, monkeypatch):
    code = README_SNIPPET.replace("import clip\n", "from clipzoo.compat.mindspore import clip\n", 1)
    assert code != README_SNIPPET
    pynative, printed = run_snippet(code, workdir, monkeypatch)
    assert ms.get_context("mode") == ms.PYNATIVE_MODE  # load's default mode=1
    graph_code = code.replace('device="Ascend")', 'device="Ascend", mode=0)')
    assert graph_code != code
    graph, _ = run_snippet(graph_code, workdir, monkeypatch)
    assert ms.get_context("mode") == ms.GRAPH_MODE
    _, expected = workdir
    for ns in (pynative, graph):
        assert ns["image"].shape == (1, 3, 32, 32) and ns["text"].dtype == ms.int32
        assert np.abs(ns["image_features"].asnumpy() - expected["image"]).max() <= TOL
        assert np.abs(ns["text_features"].asnumpy() - expected["text"]).max() <= TOL
        assert np.abs(ns["logits_per_image"].asnumpy() - expected["logits"]).max() <= TOL
        assert np.array_equal(ns["logits_per_text"].asnumpy(), ns["logits_per_image"].asnumpy().T)
        assert np.abs(ns["probs"] - expected["probs"]).max() <= TOL
    assert np.abs(graph["logits_per_image"].asnumpy() - pynative["logits_per_image"].asnumpy()).max() <= 1e-6
    assert printed.startswith("Label probs: [[") and str(pynative["probs"][0][0])[:6] in printed


def test_preprocess_equals_openai_preprocessing(workdir):
    """MindSpore-CLIP's mindspore.dataset pipeline gives the pixels of OpenAI's torch preprocessing."""
    tmp, _ = workdir
    _, preprocess = clip.load(str(tmp / "ViT-B-32.ckpt"), device="CPU")
    ours = preprocess(Image.open(tmp / "CLIP.png"))
    assert isinstance(ours, tuple) and ours[0].shape == (3, 32, 32) and ours[0].dtype == np.float32
    torch_pre = reference_open_clip.image_transform(32, is_train=False)  # OpenAI's mean/std, bicubic, centre crop
    assert np.abs(ours[0] - torch_pre(Image.open(tmp / "CLIP.png")).numpy()).max() <= 1e-5


def test_tokenize_equals_openai_ids_and_errors():
    texts = ["a diagram", "Un café, s'il vous plaît!", "a photo of a cat"]
    ids = clip.tokenize(texts)
    assert isinstance(ids, ms.Tensor) and ids.dtype == ms.int32 and ids.shape == (3, 77)
    assert np.array_equal(ids.asnumpy(), reference_open_clip.tokenize(texts).numpy())
    assert clip.tokenize("a dog", context_length=12).shape == (1, 12)
    long = "a very long caption " * 30
    with pytest.raises(RuntimeError, match=r"^Input a very long caption .* is too long for context length 77$") as err:
        clip.tokenize(["short", long])
    assert isinstance(err.value, ClipzooError)
    truncated = clip.tokenize(long, truncate=True).asnumpy()
    assert np.array_equal(truncated, reference_open_clip.tokenize([long]).numpy())
    assert truncated[0, -1] == 49407  # end-of-text last, as openai truncates


def test_ckpt_transform_output_loads(tmp_path):
    """A .ckpt as MindSpore-CLIP's ckpt_transform.py writes OpenAI's weights (fp16, its renaming, its extra
    input_resolution / context_length / vocab_size entries) loads in clip.load and matches the torch model."""
    sd = {k: v for k, v in state_dict(4, fp16=True).items() if k != "attn_mask"}
    openai = {**sd, "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}
    torch.save(openai, tmp_path / "tiny.pt")
    ms.save_checkpoint([{"name": ckpt_transform_name(k), "data": ms.Tensor(v.numpy())} for k, v in openai.items()],
                       str(tmp_path / "tiny.ckpt"))
    model, _ = clip.load(str(tmp_path / "tiny.ckpt"), device="CPU")
    ref = clipzoo.load(str(tmp_path / "tiny.pt"))
    with torch.no_grad():
        expected = ref.encode_tokens(ref.tokenize(TEXTS)).numpy()
    assert np.abs(model.encode_text(clip.tokenize(TEXTS)).asnumpy() - expected).max() <= TOL


def test_available_models_and_unknown_name(workdir):
    assert clip.available_models() == OPENAI_NAMES
    with pytest.raises(ValueError) as err:
        clip.load("ViT-B/99", device="CPU")
    assert str(err.value) == f"ViT-B/99 not found; available models = {OPENAI_NAMES}"
    assert isinstance(err.value, ClipzooError)
    with pytest.raises(ClipzooError, match=r"^mode=2: use 0 \(mindspore.GRAPH_MODE\) or 1"):
        clip.load(str(workdir[0] / "ViT-B-32.ckpt"), device="CPU", mode=2)


def test_model_name_loads_mindspore_clips_download(workdir, monkeypatch, tmp_path):
    """A name from available_models() is MindSpore-CLIP's own .ckpt URL, fetched into download_root."""
    asked = []

    def fake_ckpt_path(card, cache_dir):
        asked.append((card.source.url, cache_dir))
        return str(workdir[0] / "ViT-B-32.ckpt")

    monkeypatch.setattr(ms_common, "ckpt_path", fake_ckpt_path)
    model, _ = clip.load("ViT-B/32", device="CPU", download_root=str(tmp_path))
    assert asked == [("https://download.mindspore.cn/toolkits/mindcv/mindspore-clip/clip/ViT_B_32-34c32b89.ckpt",
                      str(tmp_path))]
    assert model.visual.input_resolution == 32 and isinstance(model, ms.nn.Cell)


def test_missing_mindspore_names_the_extra(monkeypatch):
    for name in ("mindspore", "mindspore.nn", "mindspore.ops"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("clipzoo.compat.mindspore")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingExtraError, match=r"^the MindSpore-CLIP drop-ins needs mindspore, which is not "
                                                r"installed; pip install 'clipzoo\[mindspore\]'$"):
        importlib.import_module("clipzoo.compat.mindspore")
