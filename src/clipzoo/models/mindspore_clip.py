"""OpenAI's CLIP (ModifiedResNet or ViT image tower, causal text transformer) as a MindSpore ``nn.Cell``.

Parameter names are MindSpore-CLIP's (mindspore-lab/mindcv ``examples/clip`` and ``examples/open_clip``):
``visual.*``, ``transformer.resblocks.{i}.*``, ``token_embedding.embedding_table``, ``positional_embedding``,
``ln_final.gamma``/``beta``, ``text_projection``, ``logit_scale`` — so that the ``.ckpt`` files its
``ckpt_transform.py`` writes load as they are, and ours load into its classes.

>>> model = build_model("ViT-B-32")               # a config name (models/mindspore_config.py) or a config dict
>>> load_params(model, params)                    # {name: numpy array}; names and shapes checked
>>> model.encode_image(pixels), model.encode_text(tokens)

Images are NCHW fp32 (normalised), texts int32 token ids whose end-of-text token is the largest id.
``construct(image, text)`` returns open_clip's ``(image_features, text_features, logit_scale)`` (normalised
features); :meth:`CLIP.logits` OpenAI's ``(logits_per_image, logits_per_text)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CheckpointError
from ..extras import require
from .mindspore_config import get_config, tower_sizes
from .mindspore_layers import Transformer, UnfoldConv2d, causal_mask, layer_norm, zeros
from .mindspore_names import DROPPED_LEAVES, NON_WEIGHTS
from .mindspore_resnet import ModifiedResNet

ms = require("mindspore", "the MindSpore engine")
nn = require("mindspore.nn", "the MindSpore engine")
ops = require("mindspore.ops", "the MindSpore engine")

__all__ = ["CLIP", "VisionTransformer", "build_model", "load_params", "param_shapes"]


class VisionTransformer(nn.Cell):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int,
                 mlp_ratio: float = 4.0, quick_gelu: bool = False):
        super().__init__()
        self.image_size, self.output_dim = image_size, output_dim
        grid = image_size // patch_size
        self.grid_size = (grid, grid)  # open_clip's (and MindSpore-CLIP's) attribute: patches per side
        self.conv1 = UnfoldConv2d(3, width, patch_size, stride=patch_size, pad_mode="valid", has_bias=False,
                                  weight_init="zeros")
        self.class_embedding = zeros(width)
        self.positional_embedding = zeros(grid * grid + 1, width)
        self.ln_pre = layer_norm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, quick_gelu)
        self.ln_post = layer_norm(width)
        self.proj = zeros(width, output_dim)

    def construct(self, x):
        x = self.conv1(x)
        n, width = x.shape[0], x.shape[1]
        x = x.reshape(n, width, x.shape[2] * x.shape[3]).transpose(0, 2, 1)  # (N, grid², W)
        cls = ops.broadcast_to(self.class_embedding.reshape(1, 1, width).astype(x.dtype), (n, 1, width))
        x = ops.cat([cls, x], axis=1) + self.positional_embedding.astype(x.dtype)  # x is float16 after to_float
        x = self.transformer(self.ln_pre(x))
        return ops.matmul(self.ln_post(x[:, 0]), self.proj)


class CLIP(nn.Cell):
    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        s = tower_sizes(cfg)
        self.config = dict(cfg)
        self.embed_dim, self.image_size, self.context_length = s["embed_dim"], s["image_size"], s["context_length"]
        self.vocab_size = s["vocab_size"]
        if s["resnet"]:
            self.visual = ModifiedResNet(s["vision_layers"], s["embed_dim"], s["vision_heads"], s["image_size"],
                                         s["vision_width"])
        else:
            self.visual = VisionTransformer(s["image_size"], s["patch_size"], s["vision_width"], s["vision_layers"],
                                            s["vision_heads"], s["embed_dim"], s["mlp_ratio"], s["quick_gelu"])
        self.transformer = Transformer(s["text_width"], s["text_layers"], s["text_heads"], 4.0, s["quick_gelu"])
        self.token_embedding = nn.Embedding(s["vocab_size"], s["text_width"], embedding_table="zeros")
        self.positional_embedding = zeros(s["context_length"], s["text_width"])
        self.ln_final = layer_norm(s["text_width"])
        self.text_projection = zeros(s["text_width"], s["embed_dim"])
        self.logit_scale = zeros()
        self.attn_mask = causal_mask(s["context_length"])

    def encode_image(self, image, normalize: bool = False):
        x = self.visual(image)
        return x / ops.norm(x, dim=-1, keepdim=True) if normalize else x

    def encode_text(self, text, normalize: bool = False):
        length = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self.attn_mask[:length, :length]))
        eot = ops.argmax(text, dim=-1)  # CLIP's end-of-text token has the largest id
        x = ops.matmul(ops.gather(x, eot, 1, batch_dims=1), self.text_projection)
        return x / ops.norm(x, dim=-1, keepdim=True) if normalize else x

    def construct(self, image, text):
        return self.encode_image(image, True), self.encode_text(text, True), self.logit_scale.exp()

    def logits(self, image, text):
        """OpenAI's ``model(image, text)``: ``(logits_per_image, logits_per_text)``."""
        image_features, text_features, scale = self.construct(image, text)
        per_image = scale * ops.matmul(image_features, text_features.T)
        return per_image, per_image.T


def build_model(model: "str | Mapping[str, Any]", openai: bool = False) -> CLIP:
    """An inference-mode CLIP of config ``model`` (a name or an open_clip model config), zero weights."""
    net = CLIP(get_config(model, openai=openai))
    net.set_train(False)
    return net


def param_shapes(net: CLIP) -> dict[str, tuple[int, ...]]:
    return {p.name: tuple(p.shape) for p in net.get_parameters()}


def load_params(net: CLIP, params: Mapping[str, Any], strict: bool = True) -> CLIP:
    """Copy ``{name: array}`` (MindSpore-CLIP's names) into ``net`` as fp32; ``strict`` refuses missing,
    unexpected or misshapen entries (MindSpore-CLIP's own extra entries — ``input_resolution``,
    ``context_length``, ``vocab_size``, ``*.num_batches_tracked``, ``*.attn_mask`` — and clipzoo's stored config
    are dropped first). A parameter's values must be floats (as MindSpore's ``load_param_into_net`` refuses an
    int or bool tensor for a float Parameter): anything else is a one-line CheckpointError naming it."""
    import numpy as np

    own = {p.name: p for p in net.get_parameters()}
    given = {k: v for k, v in params.items() if k not in NON_WEIGHTS and not k.endswith(DROPPED_LEAVES)}
    for name in sorted(set(own) & set(given)):
        kind = np.asarray(given[name]).dtype
        if kind.kind != "f":
            what = f"a string ({given[name][:40]!r})" if isinstance(given[name], str) else f"{kind} values"
            raise CheckpointError(f"parameter {name} holds {what}, not floats (MindSpore's load_param_into_net "
                                  "refuses it too); write the checkpoint again with float weights")
    if np.size(given.get("logit_scale", ())) == 1:  # a scalar, whichever way a writer shaped it
        given["logit_scale"] = np.reshape(given["logit_scale"], ())
    missing, extra = sorted(set(own) - set(given)), sorted(set(given) - set(own))
    wrong = sorted(k for k in set(own) & set(given) if tuple(np.shape(given[k])) != tuple(own[k].shape))
    if strict and (missing or extra or wrong):
        parts = [f"missing {', '.join(missing[:4])}" if missing else "",
                 f"unexpected {', '.join(extra[:4])}" if extra else "",
                 "shape of " + ", ".join(f"{k} {tuple(np.shape(given[k]))} != {tuple(own[k].shape)}"
                                         for k in wrong[:3]) if wrong else ""]
        raise CheckpointError("these weights do not fit the MindSpore CLIP config "
                              f"({'; '.join(p for p in parts if p)}); name the matching config with model=")
    for name, param in own.items():
        if name in given and name not in wrong:
            param.set_data(ms.Tensor(np.asarray(given[name], dtype=np.float32)))
    return net

