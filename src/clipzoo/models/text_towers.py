"""Text towers of compositional models: a transformers ``AutoModel`` (pooled at [CLS], by masked mean or by its
pooler), a SentenceTransformer, or an open_clip text tower — each with its tokenizer and LiT locking."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import DEFAULT_CONTEXT_LENGTH
from ..errors import CheckpointError
from .open_clip_parts import open_clip_config, open_clip_tokenizer
from .tokenize import TextTokenizer

__all__ = ["TextTower", "HFText", "SentenceTransformerText", "OpenClipText", "build_text", "embedding_dim"]


class TextTower(nn.Module):
    out_dim: int
    layers_attr: "str | None" = None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        hf = getattr(self, "hf_model", None)
        if hf is not None and enable and getattr(hf, "supports_gradient_checkpointing", False):
            hf.gradient_checkpointing_enable()

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """open_clip's HF-tower semantics: freeze the embeddings and all but the last ``unlocked_layers``
        transformer layers; what follows the layers (pooler, final norm, Dense) stays trainable when
        ``unlocked_layers`` > 0. LayerNorms of frozen parts train unless ``freeze_layer_norm``."""
        _, layers = layer_list(self)
        keep = len(layers) - max(0, int(unlocked_layers)) if layers is not None else 0
        frozen_layers = {id(p) for layer in (layers[:keep] if layers is not None else []) for p in layer.parameters()}
        in_layers = {id(p) for p in (layers.parameters() if layers is not None else [])}
        norms = {id(p) for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        for name, p in self.named_parameters():
            # a transformer layer: frozen unless among the last ones; anything else: frozen when no layer is
            # unlocked, and the embeddings always
            frozen = (id(p) in frozen_layers) if id(p) in in_layers else (unlocked_layers <= 0 or "embed" in name)
            if frozen and id(p) in norms and not freeze_layer_norm:
                frozen = False
            p.requires_grad = not frozen


def layer_list(module: nn.Module) -> tuple["str | None", "nn.ModuleList | None"]:
    """The longest ``nn.ModuleList`` in a text model: its transformer layers."""
    best = (None, None)
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and (best[1] is None or len(m) > len(best[1])):
            best = (name, m)
    return best


def _mask(tokens: torch.Tensor, pad_id: "int | None") -> torch.Tensor:
    return torch.ones_like(tokens) if pad_id is None else (tokens != pad_id).long()


class HFText(TextTower):
    """A transformers ``AutoModel`` pooled at [CLS] (``cls``), by masked mean (``mean``) or its pooler."""

    def __init__(self, model: nn.Module, pooling: str, pad_id: "int | None"):
        super().__init__()
        self.hf_model = model
        self.pooling = pooling
        self.pad_id = pad_id
        self.out_dim = int(model.config.hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = _mask(tokens, self.pad_id)
        out = self.hf_model(input_ids=tokens, attention_mask=mask)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class SentenceTransformerText(TextTower):
    """A SentenceTransformer (Transformer, Pooling, Dense, …): its ``sentence_embedding``."""

    def __init__(self, model: nn.Module, pad_id: "int | None", out_dim: int):
        super().__init__()
        self.st_model = model
        self.pad_id = pad_id
        self.out_dim = int(out_dim)

    @property
    def hf_model(self):
        return getattr(self.st_model[0], "auto_model", None) or getattr(self.st_model[0], "model", None)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        features = {"input_ids": tokens, "attention_mask": _mask(tokens, self.pad_id), "modality": "text"}
        return self.st_model(features)["sentence_embedding"]


class OpenClipText(TextTower):
    def __init__(self, model: nn.Module, out_dim: int):
        super().__init__()
        self.model = model
        self.out_dim = int(out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        if hasattr(self.model, "lock"):
            self.model.lock(unlocked_layers=unlocked_layers, freeze_layer_norm=freeze_layer_norm)
        else:
            super().lock(unlocked_layers, freeze_layer_norm)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        fn = getattr(self.model, "set_grad_checkpointing", None)
        if fn is not None:
            fn(enable)


def embedding_dim(model) -> int:
    """The width of a SentenceTransformer's sentence embedding."""
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        method = getattr(model, name, None)
        if method is not None:
            dim = method()
            if dim:
                return int(dim)
    raise CheckpointError("cannot tell the embedding size of this SentenceTransformer")


def _hf_context(spec: dict[str, Any], tokenizer, config) -> int:
    if spec.get("context_length"):
        return int(spec["context_length"])
    limits = [DEFAULT_CONTEXT_LENGTH, getattr(config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    return int(min(x for x in limits if isinstance(x, int) and x > 0))


def build_text(spec: dict[str, Any], base_dir: "Path | None") -> tuple[TextTower, TextTokenizer]:
    """(tower, tokenizer) of a checked ``towers.text`` spec; a relative ``name`` is looked up in ``base_dir``
    first (a saved composite folder's ``text/``)."""
    if spec["source"] == "open_clip":
        return _open_clip(spec)
    name = str(spec["name"])
    if base_dir is not None and not os.path.isabs(name) and (base_dir / name).exists():
        name = str(base_dir / name)
    if spec["source"] == "hf":
        return _hf(spec, name)
    return _sentence_transformers(spec, name)


def _hf(spec: dict[str, Any], name: str) -> tuple[TextTower, TextTokenizer]:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    kwargs = dict(spec.get("kwargs") or {})
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    if spec.get("pretrained", True):
        model = AutoModel.from_pretrained(name, trust_remote_code=False, **kwargs)
    else:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
        model = AutoModel.from_config(config, trust_remote_code=False, **kwargs)
    pooling = spec.get("pooling") or "cls"
    tower = HFText(model.float(), pooling, tokenizer.pad_token_id)
    return tower, TextTokenizer(tokenizer, _hf_context(spec, tokenizer, model.config), "hf")


def _sentence_transformers(spec: dict[str, Any], name: str) -> tuple[TextTower, TextTokenizer]:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(name, device="cpu", trust_remote_code=False, **dict(spec.get("kwargs") or {}))
    tok = st.tokenizer
    context = int(spec.get("context_length") or st.max_seq_length or DEFAULT_CONTEXT_LENGTH)
    lower = bool(getattr(st[0], "do_lower_case", False))
    tower = SentenceTransformerText(st.float(), tok.pad_token_id, embedding_dim(st))
    return tower, TextTokenizer(tok, context, "hf", lower)


def _open_clip(spec: dict[str, Any]) -> tuple[TextTower, TextTokenizer]:
    from open_clip import model as oc_model

    cfg, weights = open_clip_config(spec)
    text_cfg = dict(cfg["text_cfg"])
    if spec.get("context_length"):
        text_cfg["context_length"] = int(spec["context_length"])
    text = oc_model._build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))
    if weights is not None:
        if any(k.startswith("text.") for k in weights):
            sd = {k[len("text."):]: v for k, v in weights.items() if k.startswith("text.")}
        else:
            sd = {k: v for k, v in weights.items()
                  if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}
        text.load_state_dict(sd, strict=False)
    tokenizer = open_clip_tokenizer({"text_cfg": text_cfg})
    context = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    return OpenClipText(text, cfg["embed_dim"]), TextTokenizer(tokenizer, context, "open_clip")
