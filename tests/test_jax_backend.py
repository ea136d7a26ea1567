"""The jax backend: ``clipzoo.load(PATH.pkl, model=...)`` on open_clip_jax's parameter files."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
from flax.core import FrozenDict  # noqa: E402

import clipzoo  # noqa: E402
from clipzoo.backends.jax import read_params  # noqa: E402
from clipzoo.convert.jax import open_clip_config, open_clip_to_jax, write_params  # noqa: E402
from clipzoo.errors import CheckpointError, ClipzooError, UnsafePickleError  # noqa: E402
from clipzoo.testing.tiny import tiny_model  # noqa: E402

SIZE = 64
LABELS = ["a red square", "a photo of a dog", "blue"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny open_clip ViT of open_clip_jax's vit-eps-patch32 shape, and its .pkl."""
    model = tiny_model(0, open_clip_config("vit-eps-patch32", SIZE, 77))
    path = tmp_path_factory.mktemp("jax") / "vit-eps.pkl"
    write_params(path, open_clip_to_jax(model.state_dict(), "vit-eps-patch32"))
    return model, path


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (SIZE + 16 * i, SIZE + 8, 3), dtype=np.uint8)) for i in range(3)]


def test_load_pkl_matches_open_clip(tiny):
    model, path = tiny
    jm = clipzoo.load(str(path), model="vit-eps-patch32")
    assert jm.card.backend == "jax" and jm.runtime == "jax"
    assert (jm.embed_dim, jm.image_size, jm.context_length) == (64, SIZE, 77)
    assert jm.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    # the same preprocessing and tokens as open_clip's own model, the same features
    pixels = jm.pixels(_images())
    tokens = jm.tokenize(LABELS)
    with torch.no_grad():
        ref_i = model.encode_image(pixels)
        ref_t = model.encode_text(tokens)
    fi = jm.encode_image(_images(), normalize=False)
    ft = jm.encode_text(LABELS, normalize=False)
    assert isinstance(fi, torch.Tensor) and fi.shape == (3, 64) and ft.shape == (3, 64)
    assert (fi - ref_i).abs().max() <= 1e-5 and (ft - ref_t).abs().max() <= 1e-5
    probs = jm.probabilities(jm.similarity(fi, ft))
    ref_p = (model.logit_scale.exp() * torch.nn.functional.normalize(ref_i, dim=-1)
             @ torch.nn.functional.normalize(ref_t, dim=-1).T).softmax(-1)
    assert (probs - ref_p).abs().max() <= 1e-5


def test_released_file_layout_loads(tiny, tmp_path):
    """open_clip_jax's files pickle Flax FrozenDicts of JAX arrays (no temp): read without trust_pickle."""
    model, path = tiny
    params = read_params(path)["params"]
    params.pop("temp")
    frozen = FrozenDict(jax.tree_util.tree_map(jax.numpy.asarray, params))
    released = tmp_path / "vit-eps-released.pkl"
    released.write_bytes(pickle.dumps({"params": frozen}))
    jm = clipzoo.load(str(released), model="vit-eps-patch32")
    assert jm.logit_scale == pytest.approx(100.0)  # open_clip_jax's softmax_temp when the file has no temp
    with torch.no_grad():
        ref = model.encode_text(jm.tokenize(LABELS))
    assert (jm.encode_text(LABELS, normalize=False) - ref).abs().max() <= 1e-5


def test_bf16_is_close_to_fp32(tiny):
    _, path = tiny
    fp32 = clipzoo.load(str(path), model="vit-eps-patch32").encode_image(_images())
    bf16 = clipzoo.load(str(path), model="vit-eps-patch32", precision="bf16").encode_image(_images())
    cos = (fp32 * bf16).sum(-1)
    assert cos.min() > 0.99 and (fp32 - bf16).abs().max() > 0  # bf16 really computed in bf16


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_errors(tiny, tmp_path):
    _, path = tiny
    with pytest.raises(ClipzooError, match=r"a JAX parameter file needs its config; pass model=NAME \(one of "
                                           r"vit-eps-patch32, "):
        clipzoo.load(str(path))
    with pytest.raises(CheckpointError, match=r"do not fit config 'vit-base-patch32': Dense_0/kernel is \(64, 64\), "
                                              r"the config needs \(768, 512\)"):
        clipzoo.load(str(path), model="vit-base-patch32")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"params": {"x": Evil()}}))
    with pytest.raises(UnsafePickleError, match=r"holds more than arrays \(it refers to builtins.print\); .*"
                                                r"pass trust_pickle=True"):
        clipzoo.load(str(evil), model="vit-eps-patch32")
    not_params = tmp_path / "list.pkl"
    not_params.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match=r"is not an open_clip_jax parameter file"):
        clipzoo.load(str(not_params), model="vit-eps-patch32")
    with pytest.raises(ClipzooError, match=r"unknown option\(s\) for a JAX model: model_name"):
        clipzoo.load(str(path), model="vit-eps-patch32", model_name="x")


def test_catalogue_cards():
    """open_clip_jax's pretrained table as cards: `jax:MODEL/TAG` and `jax:MODEL` (its last tag) resolve."""
    from clipzoo.registry import REGISTRY

    card = REGISTRY.resolve("jax:vit-base-patch32/laion2b-s34b-b79k")
    assert card.alias == "[clip - laion - vit-base-patch32/laion2b-s34b-b79k]" and card.backend == "jax"
    assert (card.source.hf_repo, card.source.hf_file) == ("BobMcDear/open-clip-jax-vit-base-patch32-laion2b-s34b-b79k",
                                                          "vit-base-patch32-laion2b-s34b-b79k.pkl")
    assert card.config == {"model": "vit-base-patch32", "pretrained": "laion2b-s34b-b79k"} and card.embed_dim == 512
    assert REGISTRY.resolve("jax:vit-base-patch16").config["pretrained"] == "datacomp-xl-s13b-b90k"
    assert REGISTRY.resolve("jax:vit-base-patch16/dfn2b").publisher == "apple"
    jax_cards = REGISTRY.find(backend="jax")
    assert len(jax_cards) == 24 and {c.config["model"] for c in jax_cards} == {
        "vit-base-patch32", "vit-base-patch16", "vit-large-patch14", "vit-huge-patch14", "convnext-base",
        "convnext-base-w", "convnext-large-d"}


def test_catalogue_convnext_cards():
    """open_clip_jax's ConvNeXt pairs: 1 + 5 + 3 tags, each at the image size open_clip trained it at."""
    from clipzoo.registry import REGISTRY

    tags = {c.config["pretrained"]: c for c in REGISTRY.find(backend="jax") if c.config["model"] == "convnext-base-w"}
    assert list(tags) == ["laion-aesthetic-s13b-b82k", "laion-aesthetic-s13b-b82k-320",
                          "laion-aesthetic-s13b-b82k-augreg-320", "laion2b-s13b-b82k", "laion2b-s13b-b82k-augreg"]
    assert [c.image_size for c in tags.values()] == [256, 320, 320, 256, 256]
    card = REGISTRY.resolve("jax:convnext-large-d")
    assert card.alias == "[clip - laion - convnext-large-d/laion2b-s29b-b131k-ft-soup-320]"
    assert (card.embed_dim, card.image_size, card.context_length) == (768, 320, 77)
    assert (card.source.hf_repo, card.source.hf_file) == (
        "BobMcDear/open-clip-jax-convnext-large-d-laion2b-s29b-b131k-ft-soup-320",
        "convnext-large-d-laion2b-s29b-b131k-ft-soup-320.pkl")
    assert REGISTRY.resolve("jax:convnext-base").config == {"model": "convnext-base",
                                                            "pretrained": "laion400m-s13b-b51k"}


def test_registered_card_carries_its_config(tiny):
    """A card registered with backend="jax" and model=... loads without model= at load time."""
    from clipzoo.registry import Registry, card_from_fields

    model, path = tiny
    card = card_from_fields(publisher="me", id="tiny-jax", path=str(path), backend="jax", model="vit-eps-patch32")
    jm = clipzoo.load(Registry().register(card))
    assert jm.card.config["model"] == "vit-eps-patch32" and jm.card.alias == "[clip - me - tiny-jax]"
    with torch.no_grad():
        ref = model.encode_text(jm.tokenize(LABELS))
    assert (jm.encode_text(LABELS, normalize=False) - ref).abs().max() <= 1e-5


def test_features_reach_torch_without_a_copy():
    from clipzoo.backends.jax import to_torch

    x = jax.numpy.arange(12.0).reshape(3, 4)
    t = to_torch(x)
    assert t.data_ptr() == x.unsafe_buffer_pointer() and t.tolist() == np.arange(12.0).reshape(3, 4).tolist()


def test_pixels_that_need_gradients_are_refused_not_detached(tiny):
    """JAX hands torch no gradients: a pixel tensor that requires grad is a one-line UnsupportedError (the
    same guard as the ONNX and MindSpore comparators), never features silently cut from the graph."""
    from clipzoo.errors import UnsupportedError

    jm = clipzoo.load(str(tiny[1]), model="vit-eps-patch32")
    pixels = jm.pixels(_images()).requires_grad_(True)
    with pytest.raises(UnsupportedError) as info:
        jm.encode_image(pixels)
    assert str(info.value) == (f"{jm.card.alias} runs in JAX, which hands torch no gradients; load the PyTorch "
                               "model (convert it to open_clip) to backpropagate")
    with torch.no_grad():  # without grad the same tensor is fine
        assert jm.encode_image(pixels).shape == (3, 64)
    assert "runtime=jax (jax)" in repr(jm)
