"""Issue 18 §2 ConvNeXt: open_clip_jax's ConvNeXt towers in Flax, conversion both ways with open_clip's timm
ConvNeXt, parity (fp32, CPU) and loading through the jax backend."""
from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("timm")
import jax.numpy as jnp  # noqa: E402

import clipzoo  # noqa: E402
from clipzoo.convert.jax import (  # noqa: E402
    config_from_open_clip,
    jax_to_open_clip,
    open_clip_config,
    open_clip_to_jax,
    write_params,
)
from clipzoo.errors import CheckpointError, ClipzooError  # noqa: E402
from clipzoo.models.jax_clip import create_model, l2_normalize, variable_shapes  # noqa: E402
from clipzoo.models.jax_config import (  # noqa: E402
    MODEL_CONFIGS,
    expected_shapes,
    flatten,
    get_config,
    match_config,
)
from clipzoo.testing.tiny_convnext import TINY_IMAGE_SIZE, tiny_convnext_config, tiny_convnext_model  # noqa: E402

CONVNEXTS = ("convnext-base", "convnext-base-w", "convnext-large-d")
# parameter leaves of open_clip_jax's own CLIP with its ConvNeXt (its modules at commit 89bab59 run under flax
# 0.12, init with temp_init set); paths and shapes were compared with ours leaf by leaf then (all equal), and
# its forward on the same variables equalled ours bit for bit
OPEN_CLIP_JAX_LEAVES = {"convnext-base": 541, "convnext-base-w": 541, "convnext-large-d": 607}
# open_clip's configs of the same models
OPEN_CLIP_NAMES = {"convnext-base": "convnext_base", "convnext-base-w": "convnext_base_w",
                   "convnext-large-d": "convnext_large_d"}


@pytest.mark.parametrize("name", CONVNEXTS)
def test_convnext_tree_matches_open_clip_jax(name):
    """The Flax module's variables (shapes only) == the layout written out path by path == open_clip_jax's
    (convnext-base's towers are convnext-base-w's image tower and the ViTs' text tower: its layout only)."""
    cfg = get_config(name)
    flat = expected_shapes(cfg, 64, 77)
    assert len(flat) + 1 == OPEN_CLIP_JAX_LEAVES[name]
    if name != "convnext-base":
        shapes = variable_shapes(create_model(name, temp_init=2.0), 64, 77)
        assert set(shapes) == {"params"}
        module_flat = flatten(shapes["params"])
        assert module_flat.pop("temp") == () and module_flat == flat
    d = cfg.image.out_dims
    assert flat["image_model/PatchEmbed_0/Conv_0/kernel"] == (4, 4, 3, d[0])
    assert "image_model/ConvNeXtStage_0/PatchEmbed_0/Conv_0/kernel" not in flat  # stage 0 keeps the stem's grid
    assert flat["image_model/ConvNeXtStage_1/PatchEmbed_0/Conv_0/kernel"] == (2, 2, d[0], d[1])
    assert flat["image_model/ConvNeXtStage_2/ConvNeXtBlock_26/Conv_0/kernel"] == (7, 7, 1, d[2])  # depthwise
    assert flat["image_model/ConvNeXtStage_3/ConvNeXtBlock_2/lambda"] == (d[3],)
    assert ("image_model/Dense_0/kernel" in flat) == (name == "convnext-large-d")
    assert flat["Dense_0/kernel"] == (cfg.image.embed_dim, cfg.proj_dim)


@pytest.mark.parametrize("name", CONVNEXTS)
def test_convnext_configs_are_open_clips(name):
    """open_clip's own config of each model maps to open_clip_jax's config, and back to the same timm head."""
    import open_clip

    oc = open_clip.get_model_config(OPEN_CLIP_NAMES[name])
    cfg = config_from_open_clip(oc)
    assert match_config(cfg) == name and cfg.as_dict() == MODEL_CONFIGS[name]
    back = open_clip_config(name, oc["vision_cfg"]["image_size"], 77)
    for key in ("timm_model_name", "timm_pool", "timm_proj", "image_size"):
        assert back["vision_cfg"][key] == oc["vision_cfg"][key], key
    assert back["text_cfg"] == oc["text_cfg"] and back["embed_dim"] == oc["embed_dim"]


def _inputs(size, n_images=3):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n_images, 3, size, size, generator=g)
    tokens = torch.zeros(4, 77, dtype=torch.long)
    for i, n in enumerate((3, 9, 20, 76)):
        tokens[i, 0] = 49406
        tokens[i, 1:n] = torch.randint(1, 49000, (n - 1,), generator=g)
        tokens[i, n] = 49407
    return images, tokens


@pytest.mark.parametrize("proj", ["linear", "mlp"])
def test_convnext_parity_with_open_clip(proj):
    """open_clip (timm ConvNeXt trunk, linear / mlp head) -> JAX: features and probabilities within 1e-5."""
    model = tiny_convnext_model(0, proj)
    cfg = config_from_open_clip(tiny_convnext_config(proj), model.state_dict())
    assert cfg.image.depths == (1, 1, 2, 1) and cfg.image.head_hidden_dim == (64 if proj == "mlp" else None)
    variables = open_clip_to_jax(model.state_dict(), cfg)
    module = create_model(cfg)
    images, tokens = _inputs(TINY_IMAGE_SIZE)
    with torch.no_grad():
        ref_i, ref_t = model.encode_image(images), model.encode_text(tokens)
        ref_p = (model.logit_scale.exp() * torch.nn.functional.normalize(ref_i, dim=-1)
                 @ torch.nn.functional.normalize(ref_t, dim=-1).T).softmax(-1)
    x, t = jnp.asarray(images.permute(0, 2, 3, 1).numpy()), jnp.asarray(tokens.numpy(), jnp.int32)

    @jax.jit
    def run(v, x, t):  # raw features; probabilities as open_clip_jax's CLIPInference: exp(temp) * cosines
        img, txt = module.apply(v, x, method="encode_image"), module.apply(v, t, method="encode_text")
        cos = l2_normalize(img) @ l2_normalize(txt).T
        return img, txt, jax.nn.softmax(jnp.exp(v["params"]["temp"]) * cos, axis=-1)

    img, txt, probs = run(variables, x, t)
    assert np.abs(np.asarray(img) - ref_i.numpy()).max() <= 1e-5
    assert np.abs(np.asarray(txt) - ref_t.numpy()).max() <= 1e-5
    assert np.abs(np.asarray(probs) - ref_p.numpy()).max() <= 1e-5
    assert ref_p.max() > 0.3 and ref_i.abs().mean() > 0.05  # neither uniform probabilities nor vanishing features


def test_convnext_round_trip_is_bit_identical():
    model = tiny_convnext_model(0, "mlp")
    sd = model.state_dict()
    cfg = config_from_open_clip(tiny_convnext_config("mlp"), sd)
    back = jax_to_open_clip(open_clip_to_jax(sd, cfg), cfg)
    assert set(back) == set(sd) - {"attn_mask"}
    assert all(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]) for k in back)
    # and the other way: a random tree of the layout's paths and shapes -> open_clip -> JAX, bit for bit
    rng = np.random.default_rng(3)
    flat = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in expected_shapes(cfg, 32, 77).items()}
    params: dict = {"temp": np.float32(1.5)}
    for path, value in flat.items():
        node = params
        for part in path.split("/")[:-1]:
            node = node.setdefault(part, {})
        node[path.split("/")[-1]] = value
    again = flatten(open_clip_to_jax(jax_to_open_clip({"params": params}, cfg), cfg)["params"])
    assert set(again) == set(flat) | {"temp"} and all(np.array_equal(flat[k], again[k]) for k in flat)


def test_convnext_pkl_loads_with_its_image_size(tmp_path):
    """clipzoo.load(PATH.pkl, model=...) runs the ConvNeXt in JAX; its image size is free (image_size=)."""
    model = tiny_convnext_model(2)
    cfg = config_from_open_clip(tiny_convnext_config(), model.state_dict())
    path = tmp_path / "tiny-convnext.pkl"
    write_params(path, open_clip_to_jax(model.state_dict(), cfg))
    from clipzoo.registry import card_from_fields

    assert clipzoo.load(str(path), model=cfg.as_dict()).image_size == 224  # the default
    card = card_from_fields(id="tiny-convnext", path=str(path), backend="jax", model=cfg.as_dict(), image_size=80)
    assert clipzoo.load(card).image_size == 80  # a card's image size (the catalogue's 256 / 320 tags)
    jm = clipzoo.load(str(path), model=cfg.as_dict(), image_size=96)
    assert jm.card.backend == "jax" and jm.image_size == 96 and jm.embed_dim == 32
    assert jm.card.config["model"]["image_model"]["timm_model_name"] == "clipzoo_tiny_convnext"
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.encode_image(pixels)
    assert jm.pixels([np.zeros((120, 150, 3), np.uint8)]).shape == (1, 3, 96, 96)
    assert (jm.encode_image(pixels, normalize=False) - ref).abs().max() <= 1e-5


def test_convnext_errors():
    model = tiny_convnext_model(0)
    with pytest.raises(CheckpointError, match=r"not an open_clip ConvNeXt CLIP of config 'convnext-base' \(missing "):
        open_clip_to_jax(model.state_dict(), "convnext-base")
    raw = {"image_model": {"depths": [1, 1, 2, 1], "out_dims": [8, 16, 24, 32]},
           "text_model": {"depth": 2, "embed_dim": 64, "n_heads": 4}, "proj_dim": 32}
    with pytest.raises(ClipzooError, match=r"no timm ConvNeXt has depths \[1, 1, 2, 1\] and out_dims \[8, 16, 24, "
                                           r"32\]; name the timm model that builds it as image_model.timm_model_name"):
        open_clip_config(raw, 64, 77)
    with pytest.raises(ClipzooError, match=r"open_clip's mlp head is 2 x proj_dim = 1024 wide, not head_hidden_dim"):
        open_clip_config({**MODEL_CONFIGS["convnext-base"], "image_model": {
            **MODEL_CONFIGS["convnext-base"]["image_model"], "head_hidden_dim": 100}}, 224, 77)
    with pytest.raises(ClipzooError, match=r"not a ConvNeXt CLIP the JAX engine implements \(unsupported: "
                                           r"timm_pool 'abs_attn'\)"):
        config_from_open_clip({**tiny_convnext_config(), "vision_cfg": {**tiny_convnext_config()["vision_cfg"],
                                                                        "timm_pool": "abs_attn"}}, model.state_dict())
    with pytest.raises(ClipzooError, match=r"unsupported: timm model 'resnet50'"):
        config_from_open_clip({"embed_dim": 32, "vision_cfg": {"timm_model_name": "resnet50"}, "text_cfg": {}}, {})
    with pytest.raises(ClipzooError, match=r"malformed \(unexpected ConvNeXt field\(s\) kernel\)"):
        get_config({**raw, "image_model": {**raw["image_model"], "kernel": 5}})
