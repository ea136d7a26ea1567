"""A ViT or ConvNeXt CLIP in Flax (linen) whose variables have exactly open_clip_jax's tree.

``{'params': {'image_model': {...}, 'text_model': {...}, 'Dense_0': image projection, 'Dense_1': text
projection[, 'temp']}}`` — submodule names as Flax's auto-naming gives them in open_clip_jax
(``PatchEmbed_0/Conv_0``, ``ClsToken_0/cls_token``, ``PosEmbed_0/pos_embed``, ``Transformer_0/
TransformerBlock_{i}/{LayerNorm_0, MultiHeadAttention_0/{query,key,value,out}, LayerNorm_1, MLP_0/Dense_{0,1}}``,
…; the ConvNeXt tower is :mod:`clipzoo.models.jax_convnext`), so that its released ``.pkl`` parameter files
load as they are. Here every name is given explicitly.

Initialisation: Flax's defaults (as open_clip_jax) for the ViT and ConvNeXt models; the ResNet model — clipzoo's
twin of open_clip's ``ModifiedResNet`` CLIP, the tiny-shapes recipe's — initialises as open_clip does, its
image tower in :mod:`.jax_resnet` and its text tower here (``TextTransformer.init_parameters``: token
embedding normal(0.02), positions normal(0.01), attention q/k/v normal(width ** -0.5), attention output and
MLP output normal(width ** -0.5 * (2 * depth) ** -0.5), MLP input normal((2 * width) ** -0.5), the MLP's biases
as torch ``Linear``'s, the text projection normal(width ** -0.5)).

Images are NHWC floats (already normalised), texts int32 token ids whose end-of-text token is the largest
id (CLIP's BPE), as in open_clip_jax and open_clip.
"""
from __future__ import annotations

from typing import Any

from ..extras import require
from .jax_config import (
    DEFAULT_CONTEXT_LENGTH,
    DEFAULT_IMAGE_SIZE,
    ConvNeXtConfig,
    JaxClipConfig,
    TowerConfig,
    get_config,
)
from .jax_convnext import ConvNeXtTower
from .jax_resnet import ResNetTower, torch_bias_init
from .jax_resnet_config import ResNetConfig

jax = require("jax", "the JAX engine")
jnp = require("jax.numpy", "the JAX engine")
nn = require("flax.linen", "the JAX engine")

LN_EPS = 1e-5
MLP_RATIO = 4


def activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    return lambda x: jax.nn.gelu(x, approximate=False)


class SelfAttention(nn.Module):
    """Multi-head self-attention with Flax's ``MultiHeadDotProductAttention`` parameter layout."""

    n_heads: int
    dtype: Any = None
    init_std: "tuple[float, float] | None" = None  # (q/k/v, output) kernels' normal std; None: Flax's default

    @nn.compact
    def __call__(self, x, mask=None):
        width = x.shape[-1]
        head_dim = width // self.n_heads
        qkv_init, out_init = _kernel_inits(self.init_std, 2)

        def project(name):
            return nn.DenseGeneral((self.n_heads, head_dim), axis=-1, dtype=self.dtype, kernel_init=qkv_init,
                                   name=name)(x)

        q, k, v = project("query"), project("key"), project("value")
        q = q / jnp.sqrt(head_dim).astype(q.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, kernel_init=out_init, name="out")(out)


def _kernel_inits(stds, n: int) -> list:
    """``n`` kernel initialisers: normal(std) for each of ``stds``, or Flax's default when ``stds`` is None."""
    if stds is None:
        return [nn.linear.default_kernel_init] * n
    return [nn.initializers.normal(stddev=std) for std in stds]


def open_clip_stds(width: int, depth: int) -> dict[str, tuple[float, float]]:
    """open_clip's ``TextTransformer.init_parameters`` stds: attention ``(q/k/v, out)``, MLP ``(in, out)``."""
    proj_std = width ** -0.5 * (2 * depth) ** -0.5
    return {"attn": (width ** -0.5, proj_std), "mlp": ((2 * width) ** -0.5, proj_std)}


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    n_heads: int
    act: str = "gelu"
    dtype: Any = None
    open_clip_depth: int = 0  # > 0: open_clip's init for a transformer this deep; 0: Flax's defaults

    @nn.compact
    def __call__(self, x, mask=None):
        width = x.shape[-1]
        stds = open_clip_stds(width, self.open_clip_depth) if self.open_clip_depth else {}
        h = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_0")(x)
        x = x + SelfAttention(self.n_heads, dtype=self.dtype, init_std=stds.get("attn"),
                              name="MultiHeadAttention_0")(h, mask)
        h = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_1")(x)
        x = x + Mlp(MLP_RATIO * width, act=self.act, dtype=self.dtype, init_std=stds.get("mlp"), name="MLP_0")(h)
        return x


class Mlp(nn.Module):
    hidden: int
    act: str = "gelu"
    dtype: Any = None
    init_std: "tuple[float, float] | None" = None  # open_clip's (c_fc, c_proj) stds, torch's biases; None: Flax's

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        in_init, out_init = _kernel_inits(self.init_std, 2)
        zeros = nn.initializers.zeros_init()
        in_bias, out_bias = ((torch_bias_init(width), torch_bias_init(self.hidden)) if self.init_std
                             else (zeros, zeros))
        h = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=in_init, bias_init=in_bias, name="Dense_0")(x)
        return nn.Dense(width, dtype=self.dtype, kernel_init=out_init, bias_init=out_bias,
                        name="Dense_1")(activation(self.act)(h))


class Blocks(nn.Module):
    depth: int
    n_heads: int
    act: str = "gelu"
    dtype: Any = None
    grad_checkpoint: bool = False  # rematerialise each block's activations in the backward pass (same names)
    open_clip_init: bool = False

    @nn.compact
    def __call__(self, x, mask=None):
        block = nn.remat(Block) if self.grad_checkpoint else Block
        oc_depth = self.depth if self.open_clip_init else 0
        for i in range(self.depth):
            x = block(self.n_heads, act=self.act, dtype=self.dtype, open_clip_depth=oc_depth,
                      name=f"TransformerBlock_{i}")(x, mask)
        return x


class PatchEmbed(nn.Module):
    width: int
    patch_size: int
    dtype: Any = None

    @nn.compact
    def __call__(self, images):
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                    name="Conv_0")(images)
        return jnp.reshape(x, (x.shape[0], -1, self.width))


class ClassToken(nn.Module):
    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        token = self.param("cls_token", lambda key: width ** -0.5 * jax.random.normal(key, (width,), x.dtype))
        return jnp.concatenate([jnp.broadcast_to(token.astype(x.dtype), (x.shape[0], 1, width)), x], axis=1)


class PositionEmbedding(nn.Module):
    std: "float | None" = None  # None: width ** -0.5 (open_clip_jax's)

    @nn.compact
    def __call__(self, x):
        shape = x.shape[-2:]
        std = shape[-1] ** -0.5 if self.std is None else self.std
        pos = self.param("pos_embed", lambda key: std * jax.random.normal(key, shape, jnp.float32))
        return x + pos.astype(x.dtype)


class VisionTower(nn.Module):
    """Patch embedding, class token, positions, ``ln_pre``, blocks, class token through ``ln_post``."""

    cfg: TowerConfig
    act: str = "gelu"
    dtype: Any = None
    grad_checkpoint: bool = False

    @nn.compact
    def __call__(self, images):
        c = self.cfg
        x = PatchEmbed(c.embed_dim, c.patch_size, dtype=self.dtype, name="PatchEmbed_0")(images)
        x = ClassToken(name="ClsToken_0")(x)
        x = PositionEmbedding(name="PosEmbed_0")(x)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_0")(x)
        x = Blocks(c.depth, c.n_heads, act=self.act, dtype=self.dtype, grad_checkpoint=self.grad_checkpoint,
                   name="Transformer_0")(x)
        return nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_1")(x[:, 0])


class TextTower(nn.Module):
    """Token + position embeddings, causal blocks, ``ln_final``, the end-of-text token (the largest id)."""

    cfg: TowerConfig
    vocab_size: int
    act: str = "gelu"
    dtype: Any = None
    grad_checkpoint: bool = False
    open_clip_init: bool = False  # open_clip's TextTransformer.init_parameters; False: open_clip_jax's (Flax's)

    @nn.compact
    def __call__(self, tokens):
        c, oc = self.cfg, self.open_clip_init
        embed_init = nn.initializers.normal(stddev=0.02) if oc else nn.linear.default_embed_init
        x = nn.Embed(self.vocab_size, c.embed_dim, dtype=self.dtype, embedding_init=embed_init, name="Embed_0")(tokens)
        x = PositionEmbedding(std=0.01 if oc else None, name="PosEmbed_0")(x)
        length = tokens.shape[1]
        mask = jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
        x = Blocks(c.depth, c.n_heads, act=self.act, dtype=self.dtype, grad_checkpoint=self.grad_checkpoint,
                   open_clip_init=oc, name="Transformer_0")(x, mask)
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="LayerNorm_0")(x)
        return x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=1)]


class JaxCLIP(nn.Module):
    """``apply(vars, images, tokens)`` -> L2-normalised ``(image_proj, text_proj)`` as open_clip_jax's CLIP
    (the image side times ``exp(temp)`` when ``temp_init`` is set); ``method="encode_image"`` /
    ``"encode_text"`` give the raw projections. A ResNet image tower (clipzoo's, :mod:`.jax_resnet`) has
    BatchNorm: ``encode_image(images, train=True)`` with ``mutable=["batch_stats"]`` in training."""

    cfg: JaxClipConfig
    temp_init: float | None = None
    dtype: Any = None
    grad_checkpoint: bool = False  # open_clip_jax's: blocks rematerialised in the backward pass, same variables

    def setup(self):
        c = self.cfg
        resnet = isinstance(c.image, ResNetConfig)  # open_clip's ModifiedResNet CLIP: open_clip's init throughout
        if isinstance(c.image, ConvNeXtConfig):
            self.image_model = ConvNeXtTower(c.image, dtype=self.dtype, grad_checkpoint=self.grad_checkpoint)
        elif resnet:  # its attention pool is the image projection
            self.image_model = ResNetTower(c.image, c.proj_dim, dtype=self.dtype)
        else:
            self.image_model = VisionTower(c.image, act=c.act, dtype=self.dtype, grad_checkpoint=self.grad_checkpoint)
        self.text_model = TextTower(c.text, c.vocab_size, act=c.act, dtype=self.dtype,
                                    grad_checkpoint=self.grad_checkpoint, open_clip_init=resnet)
        if not resnet:
            self.Dense_0 = nn.Dense(c.proj_dim, use_bias=False, dtype=self.dtype)  # noqa: N815 (Flax's name)
        text_proj_init = (nn.initializers.normal(stddev=c.text.embed_dim ** -0.5) if resnet
                          else nn.linear.default_kernel_init)
        self.Dense_1 = nn.Dense(c.proj_dim, use_bias=False, dtype=self.dtype, kernel_init=text_proj_init)  # noqa: N815
        if self.temp_init is not None:
            self.temp = self.param("temp", lambda key: jnp.asarray(self.temp_init, jnp.float32))

    def encode_image(self, images, train: bool = False):
        if isinstance(self.cfg.image, ResNetConfig):
            return self.image_model(images, train)
        return self.Dense_0(self.image_model(images))

    def encode_text(self, tokens):
        return self.Dense_1(self.text_model(tokens))

    def __call__(self, images, tokens):
        image = l2_normalize(self.encode_image(images))
        text = l2_normalize(self.encode_text(tokens))
        if self.temp_init is not None:
            image = jnp.exp(self.temp) * image
        return image, text


def l2_normalize(x):
    x32 = x.astype(jnp.float32)
    return (x32 / jnp.linalg.norm(x32, axis=-1, keepdims=True)).astype(x.dtype)


def create_model(model: "str | dict | JaxClipConfig", temp_init: float | None = None, dtype=None,
                 grad_checkpoint: bool = False) -> JaxCLIP:
    return JaxCLIP(get_config(model), temp_init=temp_init, dtype=dtype, grad_checkpoint=grad_checkpoint)


def init_variables(module: JaxCLIP, image_size: int = DEFAULT_IMAGE_SIZE,
                   context_length: int = DEFAULT_CONTEXT_LENGTH, seed: int = 0) -> dict:
    """Random variables ``{'params': …}`` for images of ``image_size`` and texts of ``context_length``."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, context_length), jnp.int32)
    return jax.jit(module.init)(jax.random.PRNGKey(seed), images, tokens)


def variable_shapes(module: JaxCLIP, image_size: int = DEFAULT_IMAGE_SIZE,
                    context_length: int = DEFAULT_CONTEXT_LENGTH) -> dict:
    """The variable tree of ``module`` as shapes only (nothing is computed)."""
    tree = jax.eval_shape(lambda: init_variables(module, image_size, context_length))
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
