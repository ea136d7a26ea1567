"""Issue 18 §4: ``clipzoo.compat.open_clip_jax``, a drop-in for open_clip_jax (BobMcDear/open-clip-jax).

References: open_clip_jax's source (its README snippets, ``PRETRAINED`` table, error messages, TF image ops
re-derived here in numpy), open_clip's tokenizer, and clipzoo's torch model converted from the same weights.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
import open_clip  # noqa: E402
from flax import linen as flax_nn  # noqa: E402
from flax.core import FrozenDict  # noqa: E402

from clipzoo.compat import open_clip_jax as ocj  # noqa: E402
from clipzoo.compat.open_clip_jax.clip import image_transforms as T  # noqa: E402
from clipzoo.convert.jax import jax_to_open_clip, open_clip_config, open_clip_to_jax, write_params  # noqa: E402
from clipzoo.errors import CheckpointError, ClipzooError, ModelNotCachedError  # noqa: E402
from clipzoo.models.jax_config import flatten  # noqa: E402
from clipzoo.testing.tiny import tiny_model  # noqa: E402

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
TEXTS = ["A diagram", "A dog", "A cat"]
# open_clip_jax/clip/factory.py PRETRAINED (its one-tag entries are bare strings there; tuples here, as its README)
ORIGINAL_PRETRAINED = {
    "convnext-base": ("laion400m-s13b-b51k",),
    "convnext-base-w": ("laion-aesthetic-s13b-b82k", "laion-aesthetic-s13b-b82k-320",
                        "laion-aesthetic-s13b-b82k-augreg-320", "laion2b-s13b-b82k", "laion2b-s13b-b82k-augreg"),
    "convnext-large-d": ("laion2b-s26b-b102k-augreg", "laion2b-s29b-b131k-ft-320", "laion2b-s29b-b131k-ft-soup-320"),
    "vit-base-patch32": ("laion400m-e31", "laion400m-e32", "laion2b-e16", "laion2b-s34b-b79k",
                         "datacomp-m-s128m-b4k", "datacomp-xl-s13b-b90k"),
    "vit-base-patch16": ("laion400m-e31", "laion400m-e32", "laion2b-s34b-b88k", "dfn2b", "datacomp-xl-s13b-b90k"),
    "vit-large-patch14": ("laion400m-e31", "laion400m-e32", "laion2b-s32b-b82k"),
    "vit-huge-patch14": ("laion2b-s32b-b79k",),
}
# its model_configs/*.json, as its list_models() orders them (sorted file names)
ORIGINAL_MODELS = ("convnext-base-w", "convnext-base", "convnext-large-d", "vit-base-patch16", "vit-base-patch32",
                   "vit-eps-patch32", "vit-huge-patch14", "vit-huge-patch16", "vit-large-patch14",
                   "vit-large-patch16", "vit-small-patch16", "vit-small-patch32")
# open_clip_jax's README, its two usage snippets, verbatim
README_SNIPPET_1 = """
import jax
from PIL import Image
from open_clip_jax import CLIPInference


clip = CLIPInference(
    'vit-base-patch32',
    softmax_temp=100.,
    pretrained='laion2b-s34b-b79k',
    )
image = Image.open('CLIP.png').convert('RGB')
text = ['A diagram', 'A dog', 'A cat']

# image and text can be single data points or lists.
probs, _ = clip(image, text)
print(probs)
"""
README_SNIPPET_2 = """
from typing import Dict

import jax
from PIL import Image
from jax import Array
from open_clip_jax import create_image_transforms, create_model_with_params, tokenize


model, vars = create_model_with_params(
    'vit-base-patch32',
    pretrained='laion2b-s34b-b79k',
    )
image_transforms = create_image_transforms(
    train=False,
    input_format='image',
    do_batch_transforms=False,
    )

image = image_transforms(Image.open('CLIP.png').convert('RGB'))._numpy()
image = np.expand_dims(image, axis=0)
text = tokenize(['A diagram', 'A dog', 'A cat'])._numpy()

def calculate_similarity(vars: Dict, image: Array, text: Array) -> Array:
    # CLIP returns L2-normalized image and text features.
    image_proj, text_proj = model.apply(vars, image, text)
    return nn.softmax(100 * image_proj @ text_proj.T)

probs = jax.jit(calculate_similarity)(vars, image, text)
print(probs)
"""


def picture(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 64 * 4], -1)
    noise = rng.integers(-40, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def torch_probs(model, pixels_nhwc, tokens, temp=100.0):
    with torch.no_grad():
        fi = model.encode_image(torch.from_numpy(np.asarray(pixels_nhwc)).permute(0, 3, 1, 2), normalize=True)
        ft = model.encode_text(torch.from_numpy(np.asarray(tokens)).long(), normalize=True)
    return fi, ft, (temp * fi @ ft.T).softmax(-1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny vit-eps-patch32 at 224 px: its .pkl, and the torch model converted back from that file."""
    source = tiny_model(0, open_clip_config("vit-eps-patch32", 224, 77))
    path = tmp_path_factory.mktemp("ocj") / "vit-eps-patch32.pkl"
    write_params(path, open_clip_to_jax(source.state_dict(), "vit-eps-patch32"))
    with open(path, "rb") as fh:
        params = pickle.load(fh)
    back = open_clip.CLIP(**open_clip_config("vit-eps-patch32", 224, 77)).eval()
    back.load_state_dict(jax_to_open_clip(params, "vit-eps-patch32"))
    return path, back


@pytest.fixture(scope="module")
def b32_hub(tmp_path_factory):
    """A random full-size vit-base-patch32 placed in a Hugging Face cache as open_clip_jax's hub file for
    'laion2b-s34b-b79k' (released layout: no temperature), and the torch model it came from."""
    model = tiny_model(1, open_clip_config("vit-base-patch32", 224, 77))
    params = open_clip_to_jax(model.state_dict(), "vit-base-patch32")
    params["params"].pop("temp")
    cache = tmp_path_factory.mktemp("hf_cache")
    repo = cache / "models--BobMcDear--open-clip-jax-vit-base-patch32-laion2b-s34b-b79k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    write_params(snapshot / "vit-base-patch32-laion2b-s34b-b79k.pkl", params)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return cache, model


@pytest.fixture
def hub_cache(b32_hub, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(b32_hub[0]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return b32_hub


def run_snippet(snippet: str, folder, image: Image.Image) -> tuple[dict, str]:
    """Run a README snippet with only its import swapped, in a folder holding its CLIP.png."""
    code = snippet.replace("from open_clip_jax import", "from clipzoo.compat.open_clip_jax import")
    assert code.count("clipzoo.compat.open_clip_jax") == 1
    image.save(folder / "CLIP.png")
    # snippet 2 uses np and nn without importing them (as in open_clip_jax's README); they are given here
    namespace = {"np": np, "nn": flax_nn, "__name__": "__readme__"}
    out, cwd = io.StringIO(), os.getcwd()
    try:
        os.chdir(folder)
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace, out.getvalue()


def test_readme_snippets_run_unchanged(hub_cache, tmp_path):
    """Both usage snippets of open_clip_jax's README, import swapped, 'laion2b-s34b-b79k' served from the hub
    cache; probabilities equal the torch model's on the same weights (fp32, CPU)."""
    _, model = hub_cache
    image = picture(180, 240, seed=3)
    ns1, printed1 = run_snippet(README_SNIPPET_1, tmp_path, image)
    ns2, printed2 = run_snippet(README_SNIPPET_2, tmp_path, image)
    probs1, probs2 = np.asarray(ns1["probs"]), np.asarray(ns2["probs"])
    assert probs1.shape == probs2.shape == (1, 3) and printed1.strip() and printed2.strip()
    _, _, ref = torch_probs(model, ns2["image"], ns2["text"])
    assert np.abs(probs1 - ref.numpy()).max() <= 1e-5 and np.abs(probs2 - ref.numpy()).max() <= 1e-5
    assert ns2["image"].shape == (1, 224, 224, 3) and ns2["text"].dtype == np.int32


def test_pretrained_tag_downloads_the_hub_file(tmp_path, monkeypatch):
    """A tag names open_clip_jax's hub file (BobMcDear/open-clip-jax-{model}-{tag}/{model}-{tag}.pkl)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotCachedError, match=r"'vit-base-patch16-dfn2b.pkl' of hub repo "
                                                  r"'BobMcDear/open-clip-jax-vit-base-patch16-dfn2b'"):
        ocj.create_model_with_params("vit-base-patch16", pretrained="dfn2b")
    with pytest.raises(ModelNotCachedError, match=r"'BobMcDear/open-clip-jax-vit-huge-patch14-laion2b-s32b-b79k'"):
        ocj.CLIPInference("vit-huge-patch14")  # pretrained=True: the last tag


def test_create_model_with_params_matches_torch(tiny):
    """model.apply(vars, NHWC, int32 tokens) -> L2-normalised projections == the converted torch model's; with
    temp_init the image side is times exp(temp) (a file without 'temp', as released, gets temp_init's value)."""
    path, back = tiny
    model, variables = ocj.create_model_with_params("vit-eps-patch32", pretrained=str(path))
    with open(path, "rb") as fh:
        params = pickle.load(fh)["params"]
    ours, theirs = flatten(variables["params"]), flatten(params)  # the file's parameters, as they are
    assert set(ours) == set(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    transforms = ocj.create_image_transforms(train=False, input_format="image", do_batch_transforms=False)
    images = np.stack([transforms(picture(*s, seed=i))._numpy() for i, s in enumerate([(224, 224), (90, 300)])])
    tokens = ocj.tokenize(TEXTS)._numpy()
    params.pop("temp")
    released = path.parent / "released.pkl"
    released.write_bytes(pickle.dumps({"params": FrozenDict(jax.tree_util.tree_map(jax.numpy.asarray, params))}))
    model_t, vars_t = ocj.create_model_with_params("vit-eps-patch32", temp_init=math.log(10), pretrained=released)
    image_proj, text_proj = jax.jit(model_t.apply)(vars_t, images, tokens)
    fi, ft, _ = torch_probs(back, images, tokens)
    assert np.abs(np.asarray(image_proj) - 10 * fi.numpy()).max() <= 1e-4
    assert np.abs(np.asarray(text_proj) - ft.numpy()).max() <= 1e-5
    assert np.allclose(np.linalg.norm(np.asarray(text_proj), axis=-1), 1, atol=1e-6)


def test_random_init_sizes_and_warning():
    with pytest.warns(UserWarning, match=r"^You are performing inference with randomly-initialized weights\.$"), \
            pytest.raises(ValueError, match=r"^Model vit-nano-patch32 not recognized"):
        ocj.CLIPInference("vit-nano-patch32", pretrained=False)  # warns first, as the original does
    model, variables = ocj.create_model_with_params("vit-eps-patch32", image_size=64, context_len=16,
                                                    pretrained=False, grad_checkpoint=True)
    assert model.grad_checkpoint is True  # passed on: the blocks are rematerialised (nn.remat)
    params = variables["params"]
    assert params["image_model"]["PosEmbed_0"]["pos_embed"].shape == (5, 64)
    assert params["text_model"]["PosEmbed_0"]["pos_embed"].shape == (16, 64)
    assert float(np.abs(params["Dense_0"]["kernel"]).sum()) > 0


def test_clip_inference_matches_torch(tiny):
    """CLIPInference(...)(images, texts) -> (probs_per_image, probs_per_text) as the torch model gives them."""
    path, back = tiny
    images = [picture(224, 224, 1), picture(300, 200, 2)]
    clip = ocj.CLIPInference("vit-eps-patch32", softmax_temp=100., pretrained=path)
    per_image, per_text = clip(images, TEXTS)
    pixels = np.stack([np.asarray(clip.image_transforms(im)) for im in images])
    fi, ft, ref = torch_probs(back, pixels, ocj.tokenize(TEXTS))
    assert per_image.shape == (2, 3) and per_text.shape == (3, 2)
    assert np.abs(np.asarray(per_image) - ref.numpy()).max() <= 1e-5
    assert np.abs(np.asarray(per_text) - (100 * ft @ fi.T).softmax(-1).numpy()).max() <= 1e-5
    # softmax_temp=None: the raw cosines; a single image and a single text
    cosine, per_text = ocj.CLIPInference("vit-eps-patch32", softmax_temp=None, pretrained=str(path))(images[1], "A dog")
    assert cosine.shape == per_text.shape == (1, 1)
    assert abs(float(cosine[0, 0]) - float(fi[1] @ ft[1])) <= 1e-5
    assert "JaxCLIP" in repr(clip)


# ------------------------------------------------------------------ image transforms vs TF's ops, re-derived
def keys_cubic(x: float) -> float:
    x = abs(x)
    if x >= 2.0:
        return 0.0
    if x >= 1.0:
        return ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return ((1.5 * x - 2.5) * x) * x + 1.0


def tf_spans(in_size: int, out_size: int) -> list[tuple[int, list[float]]]:
    """TensorFlow's ComputeSpansCore (scale_and_translate_op.cc): keyscubic, antialias, no translation."""
    inv_scale = 1.0 / (out_size / in_size)
    kernel_scale = max(inv_scale, 1.0)
    spans = []
    for x in range(out_size):
        sample = (x + 0.5) * inv_scale
        start = min(max(math.ceil(sample - 2.0 * kernel_scale - 0.5), 0), in_size - 1)
        end = min(max(math.floor(sample + 2.0 * kernel_scale - 0.5), 0), in_size - 1) + 1
        weights = [keys_cubic((s + 0.5 - sample) / kernel_scale) for s in range(start, end)]
        total = sum(weights)
        spans.append((start, [w / total for w in weights] if abs(total) >= 1000 * 1.1754944e-38 else weights))
    return spans


def tf_resize(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    out = np.zeros((new_h, image.shape[1], 3))
    for y, (start, weights) in enumerate(tf_spans(image.shape[0], new_h)):
        out[y] = np.tensordot(np.array(weights), image[start:start + len(weights)], axes=1)
    final = np.zeros((new_h, new_w, 3))
    for x, (start, weights) in enumerate(tf_spans(image.shape[1], new_w)):
        final[:, x] = np.tensordot(out[:, start:start + len(weights)], np.array(weights), axes=([1], [0]))
    return final


def tf_eval_transform(image: np.ndarray, size: int = 224) -> np.ndarray:
    """open_clip_jax's eval chain, from its source: resize_smallest_edge (its `image_w, image_h = shape(image)`
    reads (height, width)), center_crop_with_padding, normalize (x - 255 mean) / (255 std)."""
    h, w = image.shape[:2]
    new = (int(size * w / h), size) if h <= w else (size, int(size * h / w))
    x = tf_resize(image.astype(np.float64), *new)
    ph, pw = max(size, x.shape[0]), max(size, x.shape[1])
    padded = np.zeros((ph, pw, 3))
    top, left = max(0, (size - x.shape[0]) // 2), max(0, (size - x.shape[1]) // 2)
    padded[top:top + x.shape[0], left:left + x.shape[1]] = x
    top, left = (ph - size) // 2, (pw - size) // 2
    return (padded[top:top + size, left:left + size] - 255 * MEAN) / (255 * STD)


@pytest.mark.parametrize("hw", [(224, 224), (300, 600), (517, 389), (100, 150), (250, 231)])
def test_eval_transform_matches_tf_ops(hw):
    """create_image_transforms(train=False) == open_clip_jax's TF eval transform to <= 1/255 per pixel
    (shrinking, enlarging, landscape, portrait); the resize also equals jax.image.resize (a port of TF's)."""
    image = picture(*hw, seed=hw[0])
    transform = ocj.create_image_transforms(train=False, input_format="image", do_batch_transforms=False)
    ours = transform(image)
    assert isinstance(ours._numpy(), np.ndarray) and ours.shape == (224, 224, 3) and ours.dtype == np.float32
    ref = tf_eval_transform(np.asarray(image))
    assert (np.abs(ours - ref) * STD).max() <= 1 / 255  # in [0, 1] pixel units
    assert np.abs(ours - ref).max() <= 1e-4  # measured: <= 1.2e-6 (float32 here, float64 there)
    size = (int(224 * hw[1] / hw[0]), 224) if hw[0] <= hw[1] else (224, int(224 * hw[0] / hw[1]))
    resized = T.resize_smallest_edge(image)
    assert resized.shape[:2] == size
    via_jax = jax.image.resize(np.asarray(image, np.float32), size + (3,), "bicubic", antialias=True)
    assert np.abs(np.asarray(via_jax) - resized).max() <= 1e-2  # 0..255 scale; measured <= 0.006


REFERENCE = Path(__file__).parent / "data" / "open_clip_jax_reference.npz"  # its TF outputs (make_…py there)


def test_eval_transform_matches_open_clip_jax_tensorflow():
    """The eval transform == open_clip_jax's own, run in TensorFlow 2.21 (stored outputs): <= 1/255 per pixel."""
    ref = np.load(REFERENCE)
    size, n = int(ref["size"]), sum(1 for k in ref.files if k.startswith("image_"))
    transform = ocj.create_image_transforms(train=False, input_format="image", do_batch_transforms=False, size=size)
    for i in range(n):
        ours = transform(ref[f"image_{i}"])
        assert ours.shape == ref[f"eval_{i}"].shape == (size, size, 3)
        assert (np.abs(ours - ref[f"eval_{i}"]) * STD).max() <= 1 / 255
        assert np.abs(ours - ref[f"eval_{i}"]).max() <= 1e-3  # measured: <= 1e-5 (normalised units)


def test_tokenize_matches_open_clip_jax_tensorflow():
    """tokenize == open_clip_jax's TensorFlow tokenizer (stored outputs) on awkward texts: non-ASCII capitals,
    special spaces, \\v, combining marks, CJK, '<|endoftext|>', its '६' marker, cuts at 77 tokens."""
    ref = np.load(REFERENCE)
    assert np.array_equal(ocj.tokenize(list(ref["texts"])), ref["tokens"])


def test_transform_formats_and_errors(tmp_path):
    image = picture(120, 160, seed=7)
    image.save(tmp_path / "x.png")
    one = ocj.create_image_transforms(False, "image", False)(image)
    item, batch = ocj.create_image_transforms(False, "path", True)
    assert np.array_equal(batch(np.stack([item(str(tmp_path / "x.png"))] * 2))[1], one)
    from_bytes = ocj.create_image_transforms(False, "bytes", False)((tmp_path / "x.png").read_bytes())
    assert np.array_equal(from_bytes, one)
    bf16 = ocj.create_image_transforms(False, "image", False, dtype=jax.numpy.bfloat16)(image)
    assert bf16.dtype == jax.numpy.bfloat16 and np.abs(bf16.astype(np.float32) - one).max() <= 0.02
    crops = ocj.create_image_transforms(True, "path", False, size=64, seed=0)
    out = crops(str(tmp_path / "x.png"))
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    with pytest.raises(ValueError, match=r"^Input format jpeg not recognized\. Available options are "
                                         r"\[path, bytes, image\]\.$"):
        ocj.create_image_transforms(False, "jpeg")
    with pytest.raises(ValueError, match=r"^Input format images not supported for training\.$"):
        ocj.create_image_transforms(True, "image")


# ------------------------------------------------------------------ tokenizer
def test_tokenize_matches_open_clip():
    texts = ["A diagram", "a  photo of a CAT!!", "it's 2024, don't   worry", "", "  hello\tworld\n", "emoji 😀 ok"]
    ours = ocj.tokenize(texts)
    assert ours.dtype == np.int32 and ours.shape == (6, 77)
    assert np.array_equal(ours._numpy(), open_clip.tokenize(texts).numpy())
    assert np.array_equal(ocj.tokenize("A dog"), open_clip.tokenize(["A dog"]).numpy())
    # open_clip_jax's own behaviour where it differs: a cut text keeps no end token ...
    long = " ".join(["word"] * 100)
    cut, ref = ocj.tokenize(long)[0], open_clip.tokenize(long)[0].numpy()
    assert np.array_equal(cut[:76], ref[:76]) and cut[76] == ref[75] and ref[76] == 49407
    # ... no HTML unescaping (open_clip's basic_clean has it), and tf.strings.lower lowers ASCII only
    tok = open_clip.tokenizer._tokenizer
    assert np.array_equal(ocj.tokenize("fish &amp; chips"), open_clip.tokenize("fish & amp ; chips").numpy())
    assert not np.array_equal(ocj.tokenize("fish &amp; chips"), open_clip.tokenize("fish &amp; chips").numpy())
    tokens = list(ocj.tokenize("ÄRGER")[0])
    assert tok.decode(tokens[1:tokens.index(49407)]).strip() == "Ärger"
    assert [t.shape for t in ocj.tokenize(["a b", "c"], context_len=None)] == [(4,), (3,)]


# ------------------------------------------------------------------ listings and errors
def test_listings_are_open_clip_jax_s():
    """list_models: the shared config table in open_clip_jax's order; list_pretrained(_by_model): its table."""
    from clipzoo.models.jax_config import MODEL_CONFIGS

    assert ocj.list_models() == tuple(sorted(MODEL_CONFIGS, key=lambda m: m + ".json"))
    assert ocj.list_models() == tuple(m for m in ORIGINAL_MODELS if m in MODEL_CONFIGS)
    assert set(ocj.list_models()) >= {m for m in ORIGINAL_MODELS if m.startswith("vit")}
    models = [m for m in ORIGINAL_PRETRAINED if m in MODEL_CONFIGS]
    assert ocj.list_pretrained() == tuple((m, t) for m in models for t in ORIGINAL_PRETRAINED[m])
    for m in models:
        assert ocj.list_pretrained_by_model(m) == ORIGINAL_PRETRAINED[m]
    assert ocj.list_pretrained_by_model("vit-huge-patch14") == ("laion2b-s32b-b79k",)


def test_catalogue_cards_agree_with_the_table():
    """The registry's jax cards name the same (model, tag) pairs and the same hub files as the drop-in."""
    from clipzoo.compat.open_clip_jax.clip.factory import hub_location
    from clipzoo.registry import REGISTRY

    cards = [c for c in REGISTRY.find(backend="jax") if c.config.get("pretrained")]
    pairs = {(c.config["model"], c.config["pretrained"]) for c in cards}
    assert pairs and pairs <= set(ocj.list_pretrained())
    assert {p for p in ocj.list_pretrained() if p[0] in {m for m, _ in pairs}} == pairs  # whole models carded
    for c in cards:
        assert (c.source.hf_repo, c.source.hf_file) == hub_location(c.config["model"], c.config["pretrained"])
    assert hub_location("vit-base-patch32", "laion2b-s34b-b79k") == (
        "BobMcDear/open-clip-jax-vit-base-patch32-laion2b-s34b-b79k", "vit-base-patch32-laion2b-s34b-b79k.pkl")


def test_error_messages_are_open_clip_jax_s(tiny, tmp_path):
    models = ocj.list_models()
    with pytest.raises(ValueError, match="^" + re.escape(
            f"Model vit-tiny not recognized. Available models are {models}") + "$"):
        ocj.list_pretrained_by_model("vit-tiny")
    with pytest.raises(ValueError, match=r"^vit-small-patch16 does not have pre-trained parameters\.$"):
        ocj.create_model_with_params("vit-small-patch16")
    with pytest.raises(ValueError, match=r"^vit-large-patch14 has no pre-trained parameters of name openai\. "
                                         r"Available options are \('laion400m-e31', 'laion400m-e32', "
                                         r"'laion2b-s32b-b82k'\)\.$"):
        ocj.CLIPInference("vit-large-patch14", pretrained="openai")
    with pytest.raises(ClipzooError, match=r"pretrained='missing.pkl' is not a file"):
        ocj.create_model_with_params("vit-eps-patch32", pretrained="missing.pkl")
    with pytest.raises(CheckpointError, match=r"do not fit config 'vit-small-patch32'"):
        ocj.create_model_with_params("vit-small-patch32", pretrained=tiny[0])


def test_submodules_and_import_cost():
    """The original's module paths work; `import clipzoo` stays jax-free (the drop-in is imported lazily)."""
    from clipzoo.compat.open_clip_jax.clip.factory import create_model_with_params
    from clipzoo.compat.open_clip_jax.clip.inference import CLIPInference, calculate_similarity  # noqa: F401
    from clipzoo.compat.open_clip_jax.clip.tokenizer import tokenize

    assert create_model_with_params is ocj.create_model_with_params and tokenize is ocj.tokenize
    assert ocj.CLIP is type(ocj.create_model("vit-eps-patch32"))
    code = "import sys, clipzoo; print(any(m == 'jax' or m.startswith('jax.') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_without_the_jax_extra_names_it(monkeypatch):
    from clipzoo.errors import MissingExtraError

    for name in ("jax", "jax.numpy", "flax", "flax.linen"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("clipzoo.compat.open_clip_jax")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingExtraError, match=r"^the open_clip_jax drop-in needs jax, which is not installed; "
                                                r"pip install 'clipzoo\[jax\]'$"):
        importlib.import_module("clipzoo.compat.open_clip_jax")


def test_the_drop_in_loads_no_torch(tiny):
    """open_clip_jax needs no PyTorch, nor does its drop-in: importing it and running CLIPInference on a local
    parameter file loads neither torch nor open_clip (parameter files are read by models/jax_params.py)."""
    path, _ = tiny
    code = ("import sys, numpy as np\nfrom PIL import Image\nimport clipzoo.compat.open_clip_jax as ocj\n"
            f"clip = ocj.CLIPInference('vit-eps-patch32', pretrained={str(path)!r})\n"
            "probs, _ = clip([Image.new('RGB', (70, 90), (200, 20, 20))], ['a red square', 'a blue circle'])\n"
            "assert abs(float(np.asarray(probs).sum()) - 1) < 1e-5\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
