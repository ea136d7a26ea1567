"""MindSpore engine §4, ``open_clip``: MindSpore-CLIP's ``open_clip`` API from ``clipzoo.compat.mindspore``.

MindSpore-CLIP's ``open_clip`` has no README; its usage example is ``examples/open_clip/test.py`` (create the model
and transforms, tokenize, encode, save the features and probabilities that its ``difference.py`` compares). That
script runs as it is written, with only its import swapped, on a local ``.ckpt`` — a tiny random-weight open_clip
ViT (GELU) written by clipzoo's converter — with ``--mode=1`` (PyNative) and ``--mode=0`` (Graph); the files it
saves equal clipzoo's torch model's features and probabilities on the same weights, and both modes agree.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ms = pytest.importorskip("mindspore")

import open_clip as reference_open_clip  # noqa: E402

import clipzoo  # noqa: E402
from clipzoo.compat.mindspore import common as ms_common  # noqa: E402
from clipzoo.compat.mindspore import open_clip  # noqa: E402
from clipzoo.convert.form import OpenClipForm  # noqa: E402
from clipzoo.convert.mindspore import write_mindspore  # noqa: E402
from clipzoo.errors import ClipzooError, UnsupportedError  # noqa: E402
from clipzoo.models.mindspore_config import get_config  # noqa: E402
from test_mindspore_parity import open_clip_file  # noqa: E402

TOL = 1e-5
TEXTS = ["a diagram", "a dog", "a cat"]
ORIGINAL_IMPORT = "from src.open_clip import create_model_and_transforms, get_tokenizer\n"

# examples/open_clip/test.py, as it is written there
TEST_PY = '''\
"""
Generate a folder containing all the main variables' value.

Example:
python test.py --mode=0 --device_target="Ascend" --model_name="RN50" --pretrained="openai" --quickgelu=True

P.S. This generated folder can be used by difference.py to calculate the difference statistics.

"""

import argparse
import os
import sys

import numpy as np
from PIL import Image
from src.open_clip import create_model_and_transforms, get_tokenizer

import mindspore as ms
from mindspore import Tensor, ops


def parse_args(args):
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--mode",
        type=int,
        default=0,
        help="Mode of set_context, GRAPH_MODE(0) or PYNATIVE_MODE(1)",
    )
    parser.add_argument(
        "--device_target",
        type=str,
        default="Ascend",
        help="Ascend, CPU or GPU",
    )
    parser.add_argument(
        "--model_name",
        type=str,
        default=None,
        help="",
    )
    parser.add_argument(
        "--pretrained",
        type=str,
        default=None,
        help="A keyword (refer to ./src/open_clip/pretrained.py) or path of ckpt file",
    )
    parser.add_argument(
        "--quickgelu",
        type=bool,
        default=False,
        help="",
    )
    args = parser.parse_args(args)
    return args


def main(args):
    args = parse_args(args)
    ms.set_context(device_target=args.device_target, mode=args.mode)
    if args.mode == ms.GRAPH_MODE:
        ms.set_context(jit_config={"jit_level": "O2"})
    model, preprocess_train, preprocess_val = create_model_and_transforms(
        args.model_name,
        args.pretrained,
        force_quick_gelu=args.quickgelu,
        force_custom_text=False,
        force_patch_dropout=None,
        force_image_size=None,
        image_mean=None,
        image_std=None,
        aug_cfg={},
    )
    tokenizer = get_tokenizer(args.model_name)

    image = Tensor(preprocess_val(Image.open("CLIP.png")))
    text = tokenizer(["a diagram", "a dog", "a cat"])

    image_features = model.encode_image(image)
    text_features = model.encode_text(text)

    root = "./" + args.model_name + args.pretrained
    if not os.path.exists(root):
        root = "./" + args.model_name + args.pretrained
        os.mkdir(root)

    # save as np files.
    np.save(os.path.join(root, "image_features.npy"), image_features.asnumpy())
    np.save(os.path.join(root, "text_features.npy"), text_features.asnumpy())

    image_features /= image_features.norm(dim=-1, keepdim=True)
    text_features /= text_features.norm(dim=-1, keepdim=True)

    text_probs = ops.softmax(100.0 * image_features @ text_features.T, axis=-1)

    np.save(os.path.join(root, "text_probs.npy"), text_probs.asnumpy())


if __name__ == "__main__":
    main(sys.argv[1:])
    print("Done!")
'''
OUR_IMPORT = "from clipzoo.compat.mindspore.open_clip import create_model_and_transforms, get_tokenizer\n"
# the model_configs folder of MindSpore-CLIP's open_clip, in its list_models() order
SHIPPED = ["RN50", "RN50-quickgelu", "RN50x4", "RN50x16", "RN50x64", "RN101", "RN101-quickgelu", "ViT-B-16",
           "ViT-B-32", "ViT-B-32-quickgelu", "ViT-bigG-14", "ViT-H-14", "ViT-L-14", "ViT-L-14-336"]
# its pretrained.py pairs that have a download URL
RELEASED = {("RN50", "openai"), ("RN50", "yfcc15m"), ("RN50-quickgelu", "openai"), ("RN50-quickgelu", "yfcc15m"),
            ("RN101", "openai"), ("RN101-quickgelu", "openai"), ("RN50x4", "openai"), ("RN50x16", "openai"),
            ("RN50x64", "openai"), ("ViT-B-32", "openai"), ("ViT-B-32", "laion2b_s34b_b79k"),
            ("ViT-B-32-quickgelu", "openai"), ("ViT-B-16", "openai"), ("ViT-L-14", "openai"),
            ("ViT-L-14-336", "openai"), ("ViT-H-14", "laion2b_s32b_b79k"), ("ViT-bigG-14", "laion2b_s39b_b160k")}


@pytest.fixture(autouse=True)
def pynative_after():
    """test.py sets MindSpore's global mode and Graph-mode jit_config: back to PyNative and the default after each
    test."""
    jit_config = dict(ms.get_context("jit_config"))
    yield
    ms.set_context(mode=ms.PYNATIVE_MODE, jit_config=jit_config)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with ./tiny.ckpt (tiny open_clip ViT, GELU, converted by clipzoo) and ./CLIP.png, and the torch
    reference: clipzoo's torch model of the same weights (features, normalised features, probabilities)."""
    tmp = tmp_path_factory.mktemp("msopenclip")
    path, sd = open_clip_file(tmp, "tiny-ViT", seed=6)
    write_mindspore(OpenClipForm(sd, get_config("tiny-ViT"), {}, "tiny"), tmp / "tiny.ckpt")
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (52, 44, 3), dtype=np.uint8)).save(tmp / "CLIP.png")
    ref = clipzoo.load(str(path))
    with torch.no_grad():
        image = ref.encode_pixels(ref.pixels([Image.open(tmp / "CLIP.png")])).numpy()
        text = ref.encode_tokens(ref.tokenize(TEXTS)).numpy()
    unit = [x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (image, text)]
    logits = 100.0 * unit[0] @ unit[1].T  # test.py's probabilities: softmax(100 * cosine)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return tmp, {"image": image, "text": text, "unit_image": unit[0], "unit_text": unit[1],
                 "scale": float(sd["logit_scale"].exp()), "probs": probs / probs.sum(-1, keepdims=True)}


def test_mindspore_clip_test_py_pynative_and_graph_mode(workdir, monkeypatch):
    tmp, expected = workdir
    code = TEST_PY.replace(ORIGINAL_IMPORT, OUR_IMPORT)
    assert code != TEST_PY
    namespace: dict = {"__name__": "test_py"}
    exec(compile(code, "test.py", "exec"), namespace)  # noqa: S102 - MindSpore-CLIP's own script
    monkeypatch.chdir(tmp)
    saved = {}
    for mode in (1, 0):
        namespace["main"]([f"--mode={mode}", "--device_target=CPU", "--model_name=tiny-ViT", "--pretrained=tiny.ckpt"])
        assert ms.get_context("mode") == mode
        saved[mode] = {name: np.load(tmp / "tiny-ViTtiny.ckpt" / f"{name}.npy")
                       for name in ("image_features", "text_features", "text_probs")}
    for files in saved.values():
        assert np.abs(files["image_features"] - expected["image"]).max() <= TOL
        assert np.abs(files["text_features"] - expected["text"]).max() <= TOL
        assert np.abs(files["text_probs"] - expected["probs"]).max() <= TOL
    assert all(np.abs(saved[0][k] - saved[1][k]).max() <= 1e-6 for k in saved[0])


def test_model_call_graph_mode_equals_pynative_and_torch(workdir):
    tmp, expected = workdir
    model, _, preprocess_val = open_clip.create_model_and_transforms("tiny-ViT", pretrained=str(tmp / "tiny.ckpt"))
    image = ms.Tensor(preprocess_val(Image.open(tmp / "CLIP.png")))
    text = open_clip.get_tokenizer("tiny-ViT")(TEXTS)
    pynative = [x.asnumpy() for x in model(image, text)]
    none_image = model(None, text)
    assert none_image[0] is None and np.abs(none_image[1].asnumpy() - pynative[1]).max() == 0
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = [x.asnumpy() for x in model(image, text)]
    for out in (pynative, graph):
        image_features, text_features, logit_scale = out
        assert np.abs(image_features - expected["unit_image"]).max() <= TOL
        assert np.abs(text_features - expected["unit_text"]).max() <= TOL
        assert abs(float(logit_scale) - expected["scale"]) <= TOL * expected["scale"]
    assert all(np.abs(g - p).max() <= 1e-6 for g, p in zip(graph, pynative))
    normalized = model.encode_image(image, normalize=True).asnumpy()
    assert np.abs(normalized - pynative[0]).max() <= 1e-6


def test_jit_compiles_the_encoders(workdir):
    tmp, expected = workdir
    model = open_clip.create_model("tiny-ViT", str(tmp / "tiny.ckpt"), jit=True)
    text = open_clip.tokenize(TEXTS)
    assert np.abs(model.encode_text(text).asnumpy() - expected["text"]).max() <= TOL
    quick = open_clip.create_model("tiny-ViT", str(tmp / "tiny.ckpt"), force_quick_gelu=True)
    assert quick.config["quick_gelu"] is True and model.config.get("quick_gelu", False) is False
    assert np.abs(quick.encode_text(text).asnumpy() - expected["text"]).max() > 1e-3  # another activation


def test_tokenizer_and_decode_are_open_clips():
    long = "a very long caption " * 30
    ids = open_clip.get_tokenizer("ViT-B-32")(TEXTS + [long])
    assert isinstance(ids, ms.Tensor) and ids.dtype == ms.int64 and ids.shape == (4, 77)
    assert np.array_equal(ids.asnumpy(), reference_open_clip.tokenize(TEXTS + [long]).numpy())
    assert open_clip.tokenize("a dog", context_length=10).shape == (1, 10)
    assert open_clip.decode(ids[0]) == "<start_of_text>a diagram <end_of_text>" + "!" * (77 - 4)
    with pytest.raises(RuntimeError, match=r"^Model config for ViT-Z-99 not found\.$"):
        open_clip.get_tokenizer("ViT-Z-99")


def test_listings_and_add_model_config(tmp_path, monkeypatch):
    assert open_clip.list_models() == SHIPPED
    assert set(open_clip.list_pretrained()) == RELEASED and len(open_clip.list_pretrained()) == len(RELEASED)
    assert set(open_clip.list_pretrained(as_str=True)) == {f"{m}:{t}" for m, t in RELEASED}
    assert open_clip.list_pretrained_tags_by_model("ViT-B-32") == ["openai", "laion2b_s34b_b79k"]
    assert open_clip.list_openai_models() == [m for m in open_clip.list_pretrained_models_by_tag("openai")]
    assert "ViT-H-14" not in open_clip.list_openai_models()
    monkeypatch.setattr(open_clip, "ADDED", {})
    cfg = {**get_config("tiny-RN"), "text_cfg": {**get_config("tiny-RN")["text_cfg"], "context_length": 20}}
    (tmp_path / "my-tiny-RN.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    assert "my-tiny-RN" in open_clip.list_models()
    assert open_clip.get_tokenizer("my-tiny-RN")("a cat").shape == (1, 20)
    model, train, val = open_clip.create_model_and_transforms("my-tiny-RN", force_image_size=96,
                                                              aug_cfg={"scale": (0.5, 1.0)})
    image = Image.open(open_clip_png(tmp_path))
    assert val(image)[0].shape == (3, 96, 96) and train(image)[0].shape == (3, 96, 96)
    features = model.encode_image(ms.Tensor(val(image)), normalize=True).asnumpy()
    assert features.shape == (1, 64) and abs(float(np.linalg.norm(features)) - 1) <= 1e-5


def open_clip_png(folder) -> str:
    path = folder / "img.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_errors_are_mindspore_clips():
    with pytest.raises(RuntimeError) as err:
        open_clip.create_model_and_transforms("ViT-Z-99")
    assert str(err.value) == "Model config for ViT-Z-99 not found." and isinstance(err.value, ClipzooError)
    with pytest.raises(RuntimeError) as err:
        open_clip.create_model("tiny-ViT", "laion9")
    assert str(err.value) == "Pretrained weights (laion9) not found for model tiny-ViT.Available pretrained tags ([]."
    with pytest.raises(RuntimeError) as err:
        open_clip.create_model("ViT-H-14", "openai")
    assert str(err.value) == f"Model ViT-H-14 not found; available models = {open_clip.list_openai_models()}"
    with pytest.raises(AssertionError, match="^pretrained image towers currently only supported for timm models$"):
        open_clip.create_model("tiny-ViT", pretrained_image=True)
    with pytest.raises(UnsupportedError, match=r"^precision 'amp_bf16': clipzoo's MindSpore drop-in runs 'fp32' or "):
        open_clip.create_model("tiny-ViT", precision="amp_bf16")


@pytest.mark.parametrize(("model", "tag", "url"), [
    ("ViT-B-32", "laion2b-s34b-b79k", "open_clip/ViT_B_32_laion2b-e00a558d.ckpt"),
    ("RN50-quickgelu", "openai", "clip/RN50-5d39bdab.ckpt"),
])
def test_pretrained_tag_is_mindspore_clips_download(monkeypatch, tmp_path, model, tag, url):
    class Fetched(Exception):
        pass

    def fake_ckpt_path(card, cache_dir):
        raise Fetched(card.source.url, cache_dir)

    monkeypatch.setattr(ms_common, "ckpt_path", fake_ckpt_path)
    with pytest.raises(Fetched) as got:
        open_clip.create_model(model, tag, cache_dir=str(tmp_path))
    assert got.value.args == ("https://download.mindspore.cn/toolkits/mindcv/mindspore-clip/" + url, str(tmp_path))


def test_precision_fp16_is_mindspore_clips_convert_weights_to_lp(workdir):
    tmp, expected = workdir
    ckpt = str(tmp / "tiny.ckpt")
    model = open_clip.create_model("tiny-ViT", ckpt, precision="fp16")
    image = ms.Tensor(open_clip.image_transform(32, False)(Image.open(tmp / "CLIP.png"))[0][None])
    text = open_clip.tokenize(TEXTS)
    image_features, text_features, logit_scale = model(image, text)
    # the original's LayerNorms take float32 inputs and its projections are cast to the input's dtype: fp32 out
    assert (image_features.dtype, text_features.dtype, logit_scale.dtype) == (ms.float32,) * 3
    dense = model.visual.transformer.resblocks[0].mlp.c_fc
    assert dense.weight.dtype == ms.float32  # parameters stay fp32, as with the original's Cell.to_float
    for got, want in ((image_features, expected["unit_image"]), (text_features, expected["unit_text"])):
        cosine = (got.asnumpy() * want).sum(-1)
        assert cosine.min() >= 0.999
        assert np.abs(got.asnumpy() - want).max() > 1e-6  # it did compute in float16
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = model(image, text)
    assert [x.dtype for x in graph] == [ms.float32] * 3
    for got, want in ((graph[0], expected["unit_image"]), (graph[1], expected["unit_text"])):
        assert (got.asnumpy() * want).sum(-1).min() >= 0.999  # float16 rounding differs from PyNative's (~1e-4)


def test_force_image_size_resizes_position_embedding_as_resize_pos_embed(workdir):
    tmp, _ = workdir
    ckpt = str(tmp / "tiny.ckpt")
    old = np.asarray(ms_common.read_params(ckpt)["visual.positional_embedding"], np.float32)
    assert old.shape == (17, 128)  # a 4x4 grid (32 px, patch 8)
    for size, grid in ((56, 7), (24, 3)):  # larger and smaller
        model, _, preprocess_val = open_clip.create_model_and_transforms("tiny-ViT", ckpt, force_image_size=size)
        state = {"visual.positional_embedding": torch.tensor(old)}
        visual = type("Visual", (), {"grid_size": (grid, grid)})
        reference_open_clip.model.resize_pos_embed(state, type("Model", (), {"visual": visual}))
        want = state["visual.positional_embedding"].numpy()
        got = model.visual.positional_embedding.asnumpy()
        assert got.shape == want.shape == (grid * grid + 1, 128)
        assert np.abs(got - want).max() <= 1e-5
        assert np.abs(got[0] - old[0]).max() == 0  # the class token's row is kept
        image = ms.Tensor(preprocess_val(Image.open(tmp / "CLIP.png")))
        assert image.shape == (1, 3, size, size) and model.encode_image(image).shape == (1, model.embed_dim)


def test_force_custom_text_is_custom_text_clips_layout(workdir):
    tmp, expected = workdir
    model = open_clip.create_model("tiny-ViT", str(tmp / "tiny.ckpt"), force_custom_text=True)
    names = {p.name for p in model.get_parameters()}
    assert {"text.token_embedding.embedding_table", "text.positional_embedding", "text.text_projection",
            "text.ln_final.gamma", "logit_scale"} <= names
    assert not any(n.startswith(("transformer.", "ln_final.", "token_embedding.")) for n in names)
    keys = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")
    cfg = {k: v for k, v in get_config("tiny-ViT").items() if k in keys}
    ref = reference_open_clip.model.CustomTextCLIP(**cfg).eval()
    sd = load_file(str(tmp / "tiny-ViT.safetensors"))
    ref.load_state_dict(reference_open_clip.model.convert_to_custom_text_state_dict(sd))
    image = open_clip.image_transform(32, False)(Image.open(tmp / "CLIP.png"))[0][None]
    ids = open_clip.tokenize(TEXTS)
    with torch.no_grad():
        want = [x.numpy() for x in ref(torch.tensor(image), torch.tensor(ids.asnumpy()))[:2]]
    got = [x.asnumpy() for x in model(ms.Tensor(image), ids)[:2]]
    assert all(np.abs(g - w).max() <= 1e-5 for g, w in zip(got, want))
    assert np.abs(got[1] - expected["unit_text"]).max() <= 1e-5  # the same text tower as CLIP's layout
    assert abs(float(model.logit_scale.exp().asnumpy()) - expected["scale"]) <= 1e-5 * expected["scale"]
