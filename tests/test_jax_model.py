"""The Flax ViT CLIP: open_clip_jax's parameter tree, conversion both ways, parity with open_clip (fp32, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

from clipzoo.convert.jax import (  # noqa: E402
    config_from_open_clip,
    jax_to_open_clip,
    open_clip_config,
    open_clip_to_jax,
)
from clipzoo.errors import CheckpointError, ClipzooError  # noqa: E402
from clipzoo.models.jax_clip import (  # noqa: E402
    SelfAttention,
    create_model,
    init_variables,
    l2_normalize,
    variable_shapes,
)
from clipzoo.models.jax_config import MODEL_CONFIGS, expected_shapes, flatten, get_config  # noqa: E402
from clipzoo.testing.tiny import TINY_CONFIG, tiny_model  # noqa: E402

# parameter leaves of open_clip_jax's own CLIP (its modules at commit 89bab59, init with temp_init set), counted
# by running them; its tree paths and shapes were compared with ours leaf by leaf then (all equal)
OPEN_CLIP_JAX_LEAVES = {"vit-eps-patch32": 78, "vit-small-patch16": 398, "vit-small-patch32": 398,
                        "vit-base-patch16": 398, "vit-base-patch32": 398, "vit-large-patch14": 590,
                        "vit-large-patch16": 590, "vit-huge-patch14": 910, "vit-huge-patch16": 910}


@pytest.mark.parametrize("name", [n for n in MODEL_CONFIGS if n.startswith("vit")])  # ConvNeXt: test_jax_convnext
def test_tree_matches_the_layout(name):
    """The Flax module's variables (shapes only, nothing computed) == the layout written out path by path."""
    cfg = get_config(name)
    shapes = variable_shapes(create_model(name, temp_init=2.0))
    assert set(shapes) == {"params"}
    flat = flatten(shapes["params"])
    assert flat.pop("temp") == ()
    assert flat == expected_shapes(cfg, 224, 77)
    assert len(flat) + 1 == OPEN_CLIP_JAX_LEAVES[name]
    w, h = cfg.image.embed_dim, cfg.image.n_heads
    last = f"image_model/Transformer_0/TransformerBlock_{cfg.image.depth - 1}/MultiHeadAttention_0"
    assert flat[f"{last}/query/kernel"] == (w, h, w // h) and flat[f"{last}/out/kernel"] == (h, w // h, w)
    assert flat["image_model/PatchEmbed_0/Conv_0/kernel"] == (cfg.image.patch_size,) * 2 + (3, w)
    assert "image_model/PatchEmbed_0/Conv_0/bias" not in flat  # pre-norm ViT: no patch bias


def test_attention_is_flax_multi_head_attention():
    """Same parameter names/shapes as Flax's own MultiHeadDotProductAttention, and the same output (causal)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 32))
    mask = nn.make_causal_mask(jnp.ones((2, 7), jnp.int32))
    ref = nn.MultiHeadDotProductAttention(num_heads=4)
    variables = ref.init(jax.random.PRNGKey(1), x, x, mask=mask)
    ours = SelfAttention(4)
    mine = jax.tree_util.tree_map(jnp.shape, ours.init(jax.random.PRNGKey(1), x, mask))
    assert mine == jax.tree_util.tree_map(jnp.shape, variables)
    np.testing.assert_allclose(ours.apply(variables, x, mask), ref.apply(variables, x, x, mask=mask),
                               atol=1e-6, rtol=0)


def _tiny(name_or_cfg, image_size):
    cfg = get_config(name_or_cfg)
    oc_cfg = open_clip_config(cfg, image_size, 77)
    return cfg, tiny_model(0, oc_cfg)


def _inputs(image_size):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, image_size, image_size, generator=g)
    tokens = torch.zeros(4, 77, dtype=torch.long)
    for i, n in enumerate((3, 9, 20, 76)):
        tokens[i, 0] = 49406
        tokens[i, 1:n] = torch.randint(1, 49000, (n - 1,), generator=g)
        tokens[i, n] = 49407
    return images, tokens


@pytest.mark.parametrize("which", ["vit-eps-patch32", "tiny-quickgelu"])
def test_parity_with_open_clip(which):
    """open_clip -> JAX: image features, text features and probabilities within 1e-5 of open_clip's."""
    if which == "tiny-quickgelu":  # clipzoo's tiny model: QuickGELU, one head, 8-pixel patches
        cfg, model, size = config_from_open_clip(TINY_CONFIG), tiny_model(0), TINY_CONFIG["vision_cfg"]["image_size"]
        assert cfg.act == "quick_gelu" and cfg.image.n_heads == 1
    else:
        size = 64
        cfg, model = _tiny(which, size)
    variables = open_clip_to_jax(model.state_dict(), cfg)
    module = create_model(cfg)
    images, tokens = _inputs(size)
    with torch.no_grad():
        ref_i, ref_t = model.encode_image(images), model.encode_text(tokens)
        ref_p = (model.logit_scale.exp() * torch.nn.functional.normalize(ref_i, dim=-1)
                 @ torch.nn.functional.normalize(ref_t, dim=-1).T).softmax(-1)
    img = jax.jit(lambda v, x: module.apply(v, x, method="encode_image"))(
        variables, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
    txt = jax.jit(lambda v, t: module.apply(v, t, method="encode_text"))(variables, jnp.asarray(tokens.numpy(),
                                                                                               jnp.int32))
    # open_clip_jax's own forward: normalised features, the image side scaled by exp(temp)
    scaled_i, norm_t = jax.jit(module.clone(temp_init=0.0).apply)(
        variables, jnp.asarray(images.permute(0, 2, 3, 1).numpy()), jnp.asarray(tokens.numpy(), jnp.int32))
    probs = jax.nn.softmax(scaled_i @ norm_t.T, axis=-1)
    assert np.abs(np.asarray(img) - ref_i.numpy()).max() <= 1e-5
    assert np.abs(np.asarray(txt) - ref_t.numpy()).max() <= 1e-5
    assert np.abs(np.asarray(probs) - ref_p.numpy()).max() <= 1e-5
    assert ref_p.max() > 0.3  # the comparison is not between two uniform distributions


def test_round_trip_is_bit_identical():
    cfg, model = _tiny("vit-eps-patch32", 64)
    sd = model.state_dict()
    back = jax_to_open_clip(open_clip_to_jax(sd, cfg), cfg)
    assert set(back) == set(sd) - {"attn_mask"}
    for k, v in back.items():
        assert v.dtype == sd[k].dtype and torch.equal(v, sd[k]), k
    # and the other way: a random Flax init -> open_clip -> JAX gives the same arrays bit for bit
    variables = init_variables(create_model(cfg, temp_init=1.5), 64, 77, seed=4)
    again = open_clip_to_jax(jax_to_open_clip(variables, cfg), cfg)
    a, b = flatten(jax.device_get(variables["params"])), flatten(again["params"])
    assert set(a) == set(b) and all(np.array_equal(np.asarray(a[k]), b[k]) for k in a)


def test_conversion_errors():
    cfg, model = _tiny("vit-eps-patch32", 64)
    with pytest.raises(CheckpointError, match=r"not an open_clip ViT CLIP of config 'vit-small-patch32'"):
        open_clip_to_jax(model.state_dict(), "vit-small-patch32")
    message = (r"do not fit config 'custom': image_model/Transformer_0/TransformerBlock_0/MultiHeadAttention_0/"
               r"key/bias is \(4, 16\), the config needs \(2, 32\)")
    with pytest.raises(CheckpointError, match=message):
        raw = cfg.as_dict()
        raw["image_model"]["n_heads"] = 2
        jax_to_open_clip(open_clip_to_jax(model.state_dict(), cfg), raw)
    with pytest.raises(ClipzooError, match=r"^unknown JAX model config 'vit-giant'; use one of: vit-eps-patch32, "
                                           r".*, convnext-large-d$"):
        get_config("vit-giant")


@pytest.mark.slow
def test_full_size_vit_b32_parity():
    """open_clip's ViT-B-32 (random init) -> JAX vit-base-patch32: features and probabilities within 1e-5, fp32
    on CPU (about 20 s here)."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    cfg = config_from_open_clip(open_clip.get_model_config("ViT-B-32"))
    assert cfg.as_dict() == MODEL_CONFIGS["vit-base-patch32"]
    variables = open_clip_to_jax(model.state_dict(), "vit-base-patch32")
    module = create_model("vit-base-patch32")
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a dog", "two cats on a mat"])
    with torch.no_grad():
        ref_i, ref_t = model.encode_image(images), model.encode_text(tokens)
    img = jax.jit(lambda v, x: module.apply(v, x, method="encode_image"))(
        variables, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
    txt = jax.jit(lambda v, t: module.apply(v, t, method="encode_text"))(variables, jnp.asarray(tokens.numpy(),
                                                                                               jnp.int32))
    assert np.abs(np.asarray(img) - ref_i.numpy()).max() <= 1e-5
    assert np.abs(np.asarray(txt) - ref_t.numpy()).max() <= 1e-5
    scale = float(np.exp(variables["params"]["temp"]))
    ref_p = (scale * torch.nn.functional.normalize(ref_i, dim=-1) @ torch.nn.functional.normalize(ref_t, dim=-1).T)
    probs = jax.nn.softmax(scale * l2_normalize(img) @ l2_normalize(txt).T, axis=-1)
    assert np.abs(np.asarray(probs) - ref_p.softmax(-1).numpy()).max() <= 1e-5 and ref_p.softmax(-1).max() > 0.5


def test_grad_checkpoint_rematerialises_each_block():
    """grad_checkpoint=True (open_clip_jax's option): the same variables and loss; the backward pass recomputes
    each transformer block (one remat per block in the gradient's program) where the plain model stores them."""
    tiny = {"image_model": {"depth": 2, "embed_dim": 16, "n_heads": 2, "patch_size": 16},
            "text_model": {"depth": 1, "embed_dim": 16, "n_heads": 2, "vocab_size": 64}, "proj_dim": 8}
    rng = np.random.default_rng(1)
    variables: dict = {"params": {"temp": np.float32(1.0)}}
    for path, shape in expected_shapes(get_config(tiny), 32, 8).items():  # random values, no init to compile
        *heads, last = path.split("/")
        node = variables["params"]
        for h in heads:
            node = node.setdefault(h, {})
        node[last] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    images = jax.random.normal(jax.random.PRNGKey(2), (3, 32, 32, 3))
    tokens = jnp.asarray([[62, 5, 6, 63, 0, 0, 0, 0], [62, 9, 63, 0, 0, 0, 0, 0], [62, 7, 8, 9, 10, 11, 12, 63]],
                         jnp.int32)

    def loss_of(module):
        def loss(v):
            img, txt = module.apply(v, images, tokens)
            return -jnp.mean(jnp.diag(jax.nn.log_softmax(img @ txt.T, axis=-1)))
        return loss

    plain, remat = (create_model(tiny, temp_init=1.0, grad_checkpoint=g) for g in (False, True))
    assert variable_shapes(remat, 32, 8) == variable_shapes(plain, 32, 8)
    jit_loss = jax.jit(lambda v: (loss_of(plain)(v), loss_of(remat)(v)))
    l0, l1 = jit_loss(variables)
    assert float(l0) > 0 and abs(float(l0) - float(l1)) <= 1e-6

    def remats(module):  # tracing only: nothing is compiled
        eqns = jax.make_jaxpr(jax.grad(loss_of(module)))(variables).jaxpr.eqns
        return sum(e.primitive.name in ("remat2", "checkpoint") for e in eqns)

    assert (remats(plain), remats(remat)) == (0, 3)
    raw = {"image_model": {"depths": [1, 1, 2, 1], "out_dims": [8, 16, 24, 32]},
           "text_model": {"depth": 1, "embed_dim": 32, "n_heads": 2}, "proj_dim": 16}
    assert variable_shapes(create_model(raw, grad_checkpoint=True), 32, 8) == variable_shapes(create_model(raw),
                                                                                               32, 8)
