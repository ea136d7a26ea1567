"""MindSpore-CLIP's ``CustomTextCLIP`` (``open_clip.create_model(..., force_custom_text=True)``): the text tower in
its own ``text`` cell, so its parameters are ``text.token_embedding.embedding_table``, ``text.positional_embedding``,
``text.transformer.resblocks.{i}...``, ``text.ln_final.{gamma,beta}``, ``text.text_projection``; ``visual.*`` and
``logit_scale`` as in ``CLIP``. A checkpoint of ``CLIP``'s layout is renamed on loading as the original's
``convert_to_custom_text_param_dict`` does.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mindspore import nn, ops

from ...models.mindspore_clip import VisionTransformer
from ...models.mindspore_config import tower_sizes
from ...models.mindspore_layers import Transformer, causal_mask, layer_norm, zeros
from ...models.mindspore_resnet import ModifiedResNet

__all__ = ["CustomTextModel", "TextTower", "convert_to_custom_text_param_dict"]

TEXT_KEYS = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")


class TextTower(nn.Cell):
    """open_clip's ``TextTransformer`` (CLIP's text tower): ids -> projected end-of-text features."""

    def __init__(self, s: Mapping[str, Any]):
        super().__init__()
        self.context_length, self.vocab_size = s["context_length"], s["vocab_size"]
        self.transformer = Transformer(s["text_width"], s["text_layers"], s["text_heads"], 4.0, s["quick_gelu"])
        self.token_embedding = nn.Embedding(s["vocab_size"], s["text_width"], embedding_table="zeros")
        self.positional_embedding = zeros(s["context_length"], s["text_width"])
        self.ln_final = layer_norm(s["text_width"])
        self.text_projection = zeros(s["text_width"], s["embed_dim"])
        self.attn_mask = causal_mask(s["context_length"])

    def construct(self, text):
        length = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:length]
        x = self.ln_final(self.transformer(x, self.attn_mask[:length, :length]))
        eot = ops.argmax(text, dim=-1)  # CLIP's end-of-text token has the largest id
        return ops.matmul(ops.gather(x, eot, 1, batch_dims=1), self.text_projection)


class CustomTextModel(nn.Cell):
    """``model(image, text)`` -> ``(image_features, text_features, logit_scale)`` as :class:`OpenClipModel`."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        s = tower_sizes(cfg)
        self.config = dict(cfg)
        self.embed_dim, self.image_size = s["embed_dim"], s["image_size"]
        if s["resnet"]:
            self.visual = ModifiedResNet(s["vision_layers"], s["embed_dim"], s["vision_heads"], s["image_size"],
                                         s["vision_width"])
        else:
            self.visual = VisionTransformer(s["image_size"], s["patch_size"], s["vision_width"], s["vision_layers"],
                                            s["vision_heads"], s["embed_dim"], s["mlp_ratio"], s["quick_gelu"])
        self.text = TextTower(s)
        self.context_length, self.vocab_size = self.text.context_length, self.text.vocab_size
        self.logit_scale = zeros()
        self.logit_bias = None  # open_clip's attribute (SigLIP's models have one; CLIP's, as here, none)

    def encode_image(self, image, normalize: bool = False):
        x = self.visual(image)
        return x / ops.norm(x, dim=-1, keepdim=True) if normalize else x

    def encode_text(self, text, normalize: bool = False):
        x = self.text(text)
        return x / ops.norm(x, dim=-1, keepdim=True) if normalize else x

    def construct(self, image=None, text=None):
        image_features = self.encode_image(image, True) if image is not None else None
        text_features = self.encode_text(text, True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()


def convert_to_custom_text_param_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    """A ``CLIP``-layout parameter dict (it has ``text_projection``) with its text tower moved under ``text.``;
    another is returned as it is."""
    if "text_projection" not in params:
        return dict(params)
    return {f"text.{k}" if k.startswith(TEXT_KEYS) else k: v for k, v in params.items()}
