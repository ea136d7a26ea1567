"""Compositional CLIP models (what the ITRA codebase does): an image tower, a text tower and two projection heads.

Configured by ``TrainConfig.towers``::

    {"image": {"source": "timm", "name": "resnet18"},                 # timm | torchvision | open_clip
     "text": {"source": "hf", "name": "bert-base-uncased", "pooling": "mean"},  # hf | sentence_transformers | open_clip
     "image_head": {"kind": "mlp", "layers": 2}, "text_head": {"kind": "linear"},
     "embed_dim": 256, "logit_bias": null}

Image tower keys: ``source``, ``name`` (or, for open_clip, ``config``: a model config dict), ``pretrained``
(timm / torchvision / open_clip weights; default false), ``image_size``, ``mean``, ``std``, ``kwargs`` (more
constructor arguments). Text tower keys: ``source``, ``name`` (a hub id or a local folder; open_clip: a model
config name, or ``config``), ``pooling`` (hf: ``cls`` | ``mean`` | ``pooler``), ``pretrained`` (hf /
sentence-transformers: load the folder's weights, default true; open_clip: a pretrained tag), ``context_length``.

:class:`CompositeCLIP` has the open_clip CLIP surface the engine uses — ``encode_image``, ``encode_text``,
``forward`` (a dict when ``output_dict``), ``logit_scale`` / ``logit_bias``, ``lock_image_tower`` /
``lock_text_tower`` (LiT, with open_clip's semantics), ``set_grad_checkpointing`` — so it trains exactly like an
open_clip model. :func:`save_composite` writes a self-describing folder (``clipzoo_composite.json`` +
``model.safetensors`` + the text tower's config and tokenizer files under ``text/``) that
:func:`load_composite` (and so ``clipzoo.load``, through the ``composite`` backend) reads back.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError
from .heads import build_head

__all__ = ["CompositeCLIP", "build_composite", "save_composite", "load_composite", "MARKER", "check_towers"]

MARKER = "clipzoo_composite.json"
WEIGHTS = "model.safetensors"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TOP_KEYS = ("image", "text", "image_head", "text_head", "embed_dim", "logit_bias")
IMAGE_KEYS = ("source", "name", "config", "pretrained", "image_size", "mean", "std", "kwargs")
TEXT_KEYS = ("source", "name", "config", "pretrained", "pooling", "context_length", "kwargs")
IMAGE_SOURCES = ("timm", "torchvision", "open_clip")
TEXT_SOURCES = ("hf", "sentence_transformers", "open_clip")
SOURCE_ALIASES = {"transformers": "hf", "huggingface": "hf", "sentence-transformers": "sentence_transformers",
                  "sbert": "sentence_transformers", "st": "sentence_transformers", "open-clip": "open_clip",
                  "openclip": "open_clip"}


# ------------------------------------------------------------------ config checks
def _keys(spec: Mapping[str, Any], valid: tuple[str, ...], where: str) -> None:
    for key in spec:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def check_towers(towers: Any) -> dict[str, Any]:
    """The ``towers`` config with its keys checked and sources normalised (raises :class:`ConfigError`)."""
    if not isinstance(towers, Mapping):
        raise ConfigError(f"towers must be a table with image / text / image_head / text_head / embed_dim, "
                          f"got {type(towers).__name__}")
    towers = copy.deepcopy(dict(towers))
    _keys(towers, TOP_KEYS, "towers")
    for side, valid, sources in (("image", IMAGE_KEYS, IMAGE_SOURCES), ("text", TEXT_KEYS, TEXT_SOURCES)):
        spec = towers.get(side)
        if not isinstance(spec, Mapping):
            raise ConfigError(f"towers.{side} is missing: give its source ({' | '.join(sources)}) and name")
        spec = dict(spec)
        _keys(spec, valid, f"towers.{side}")
        source = str(spec.get("source", "")).lower()
        source = SOURCE_ALIASES.get(source, source)
        if source not in sources:
            raise ConfigError(f"towers.{side}.source must be one of {', '.join(sources)}, got {spec.get('source')!r}")
        if not spec.get("name") and not spec.get("config"):
            raise ConfigError(f"towers.{side}: give its name" + (" (or config)" if source == "open_clip" else ""))
        spec["source"] = source
        towers[side] = spec
    pooling = towers["text"].get("pooling")
    if pooling is not None and pooling not in ("cls", "mean", "pooler"):
        raise ConfigError(f"towers.text.pooling must be cls, mean or pooler, got {pooling!r}")
    if towers.get("embed_dim") is not None and int(towers["embed_dim"]) < 1:
        raise ConfigError(f"towers.embed_dim must be positive, got {towers['embed_dim']}")
    return towers


# ------------------------------------------------------------------ image towers
class ImageTower(nn.Module):
    """A backbone returning pooled features (N, ``out_dim``)."""

    out_dim: int

    def __init__(self, model: nn.Module, out_dim: int):
        super().__init__()
        self.model = model
        self.out_dim = int(out_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixels)
        return out.flatten(1) if out.ndim > 2 else out

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze all but the last ``unlocked_groups`` groups of layers (top-level children with parameters)."""
        groups = [m for _, m in self.model.named_children() if any(True for _ in m.parameters())]
        _freeze_groups(groups, unlocked_groups)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        fn = getattr(self.model, "set_grad_checkpointing", None)
        if fn is not None:
            fn(enable)


def _freeze_groups(groups: list, unlocked: int) -> None:
    keep = len(groups) - max(0, int(unlocked))
    for i, group in enumerate(groups):
        params = group.parameters() if isinstance(group, nn.Module) else group
        for p in params:
            p.requires_grad = i >= keep


class TimmImage(ImageTower):
    def lock(self, unlocked_groups: int = 0) -> None:
        """open_clip's TimmModel semantics: timm's own layer groups (``group_matcher``)."""
        try:
            from timm.models import group_parameters
        except ImportError:  # pragma: no cover - very old timm
            return super().lock(unlocked_groups)
        matcher = self.model.group_matcher()
        gparams = group_parameters(self.model, matcher)
        top = max(gparams) - max(0, int(unlocked_groups))
        for p in self.model.parameters():
            p.requires_grad = True
        for gid, names in gparams.items():
            if gid <= top:
                for name in names:
                    self.model.get_parameter(name).requires_grad = False


class OpenClipImage(ImageTower):
    def lock(self, unlocked_groups: int = 0) -> None:
        self.model.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=False)


def _build_image(spec: dict[str, Any], embed_dim: "int | None") -> tuple[ImageTower, dict[str, Any]]:
    source, kwargs = spec["source"], dict(spec.get("kwargs") or {})
    size = spec.get("image_size")
    if source == "timm":
        import timm

        pretrained = bool(spec.get("pretrained", False))
        if size is not None and "img_size" not in kwargs:
            try:  # ViT-like timm models take the input size; convnets do not
                model = timm.create_model(spec["name"], pretrained=pretrained, num_classes=0, img_size=size, **kwargs)
            except TypeError:
                model = timm.create_model(spec["name"], pretrained=pretrained, num_classes=0, **kwargs)
        else:
            model = timm.create_model(spec["name"], pretrained=pretrained, num_classes=0, **kwargs)
        data = model.pretrained_cfg or {}
        pre = {"size": size or data.get("input_size", (3, 224, 224))[-1], "mean": data.get("mean", IMAGENET_MEAN),
               "std": data.get("std", IMAGENET_STD), "interpolation": data.get("interpolation", "bicubic")}
        return TimmImage(model, model.num_features), pre
    if source == "torchvision":
        import torchvision

        weights = spec.get("pretrained") or None
        if weights is True:
            weights = "DEFAULT"
        model = torchvision.models.get_model(spec["name"], weights=weights, **kwargs)
        out_dim = _drop_classifier(model, spec["name"])
        pre = {"size": size or 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}
        tower = ImageTower(model, out_dim)
        if out_dim is None:  # probe the width once
            was = model.training
            model.eval()
            with torch.no_grad():
                tower.out_dim = int(tower(torch.zeros(1, 3, pre["size"], pre["size"])).shape[1])
            model.train(was)
        return tower, pre
    # open_clip: the visual tower of a model config (with its own projection to that config's embed_dim)
    from open_clip import model as oc_model

    cfg, weights = _open_clip_cfg(spec)
    vision_cfg = dict(cfg["vision_cfg"])
    if size is not None:
        vision_cfg["image_size"] = size
    visual = oc_model._build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=cfg.get("quick_gelu", False))
    if weights is not None:
        sd = {k[len("visual."):]: v for k, v in weights.items() if k.startswith("visual.")}
        visual.load_state_dict(sd)
    isz = vision_cfg.get("image_size", 224)
    pre = {"size": isz if isinstance(isz, int) else isz[0], "mean": vision_cfg.get("image_mean") or OPENAI_MEAN,
           "std": vision_cfg.get("image_std") or OPENAI_STD, "interpolation": "bicubic"}
    return OpenClipImage(visual, cfg["embed_dim"]), pre


def _drop_classifier(model: nn.Module, name: str) -> "int | None":
    """Replace a torchvision classifier's last Linear with Identity; return its input width (None: unknown)."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential):
            for i in range(len(head) - 1, -1, -1):
                if isinstance(head[i], nn.Linear):
                    width = head[i].in_features
                    head[i] = nn.Identity()
                    return width
            if any(isinstance(m, nn.Conv2d) for m in head):  # squeezenet: a conv classifier
                setattr(model, attr, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
                return None
    raise ConfigError(f"towers.image: cannot find the classifier of torchvision model {name!r} to remove")


def _open_clip_cfg(spec: dict[str, Any]) -> tuple[dict[str, Any], "dict | None"]:
    import open_clip

    if spec.get("config"):
        cfg = copy.deepcopy(spec["config"])
    else:
        cfg = open_clip.get_model_config(spec["name"])
        if cfg is None:
            raise ConfigError(f"towers: {spec['name']!r} is not an open_clip model config name")
    weights = None
    tag = spec.get("pretrained")
    if tag:
        full = open_clip.create_model(spec["name"], pretrained=tag if isinstance(tag, str) else None)
        weights = full.state_dict()
    return cfg, weights


# ------------------------------------------------------------------ text towers
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
        root = self
        layers_name, layers = _layer_list(root)
        keep = len(layers) - max(0, int(unlocked_layers)) if layers is not None else 0
        frozen_layers = {id(p) for layer in (layers[:keep] if layers is not None else []) for p in layer.parameters()}
        in_layers = {id(p) for p in (layers.parameters() if layers is not None else [])}
        norms = {id(p) for m in root.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        for name, p in root.named_parameters():
            if id(p) in in_layers:
                frozen = id(p) in frozen_layers
            elif unlocked_layers <= 0 or "embed" in name:
                frozen = True
            else:
                frozen = False
            if frozen and id(p) in norms and not freeze_layer_norm:
                frozen = False
            p.requires_grad = not frozen


def _layer_list(module: nn.Module) -> tuple["str | None", "nn.ModuleList | None"]:
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


class TextTokenizer:
    """texts -> LongTensor (N, context_length), padded the tokenizer's way (picklable, for DataLoader workers)."""

    def __init__(self, tokenizer, context_length: int, kind: str, lower_case: bool = False):
        self.tokenizer, self.context_length, self.kind, self.lower_case = tokenizer, int(context_length), kind, lower_case

    def __call__(self, texts, truncate: bool = True) -> torch.Tensor:
        from ..inputs import text_items

        texts = text_items(texts)
        if self.lower_case:
            texts = [t.lower() for t in texts]
        if self.kind == "open_clip":
            from ..backends.open_clip import tokenize_checked

            return tokenize_checked(self.tokenizer, texts, self.context_length, truncate)
        from ..backends.transformers import tokenize_with

        return tokenize_with(self.tokenizer, texts, self.context_length, truncate)


def _hf_context(spec: dict[str, Any], tokenizer, config) -> int:
    if spec.get("context_length"):
        return int(spec["context_length"])
    limits = [77, getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    return int(min(x for x in limits if isinstance(x, int) and x > 0))


def _build_text(spec: dict[str, Any], base_dir: "Path | None") -> tuple[TextTower, TextTokenizer]:
    source, kwargs = spec["source"], dict(spec.get("kwargs") or {})
    if source in ("hf", "sentence_transformers"):
        name = str(spec["name"])
        if base_dir is not None and not os.path.isabs(name) and (base_dir / name).exists():
            name = str(base_dir / name)
    if source == "hf":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
        if spec.get("pretrained", True):
            model = AutoModel.from_pretrained(name, **kwargs)
        else:
            config = AutoConfig.from_pretrained(name)
            model = AutoModel.from_config(config, **kwargs)
        pooling = spec.get("pooling") or "cls"
        tower = HFText(model.float(), pooling, tokenizer.pad_token_id)
        return tower, TextTokenizer(tokenizer, _hf_context(spec, tokenizer, model.config), "hf")
    if source == "sentence_transformers":
        from sentence_transformers import SentenceTransformer

        from ..backends.sentence_transformers import _embedding_dim

        st = SentenceTransformer(name, device="cpu", trust_remote_code=False, **kwargs)
        tok = st.tokenizer
        context = int(spec.get("context_length") or st.max_seq_length or 77)
        lower = bool(getattr(st[0], "do_lower_case", False))
        tower = SentenceTransformerText(st.float(), tok.pad_token_id, _embedding_dim(st))
        return tower, TextTokenizer(tok, context, "hf", lower)
    from open_clip import model as oc_model

    from .model import _tokenizer

    cfg, weights = _open_clip_cfg(spec)
    text_cfg = dict(cfg["text_cfg"])
    if spec.get("context_length"):
        text_cfg["context_length"] = int(spec["context_length"])
    text = oc_model._build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))
    if weights is not None:
        if any(k.startswith("text.") for k in weights):
            sd = {k[len("text."):]: v for k, v in weights.items() if k.startswith("text.")}
        else:
            sd = {k: v for k, v in weights.items() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}
        text.load_state_dict(sd, strict=False)
    tokenizer = _tokenizer({"text_cfg": text_cfg})
    return OpenClipText(text, cfg["embed_dim"]), TextTokenizer(tokenizer, text_cfg.get("context_length", 77), "open_clip")


# ------------------------------------------------------------------ the model
class CompositeCLIP(nn.Module):
    """Image tower + image head, text tower + text head, learnable logit scale (and bias)."""

    def __init__(self, image: ImageTower, text: TextTower, image_head: nn.Module, text_head: nn.Module,
                 embed_dim: int, logit_scale_init: float = 1 / 0.07, logit_bias_init: "float | None" = None):
        super().__init__()
        self.image, self.text = image, text
        self.image_head, self.text_head = image_head, text_head
        self.embed_dim = int(embed_dim)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(logit_scale_init))
        self.logit_bias = nn.Parameter(torch.ones([]) * logit_bias_init) if logit_bias_init is not None else None
        self.output_dict = False
        # set by the trainer for objectives that read prototype scores (dino, protocpc): a DINO head's output
        # then reaches them unnormalised; every other head's output is L2-normalised as always
        self.raw_head_scores = False
        self._frozen_norms: list[nn.Module] = []

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.image_head(self.image(image))
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text_head(self.text(text))
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def has_dino_head(self) -> bool:
        from .heads import DINOHead

        return isinstance(self.image_head, DINOHead) or isinstance(self.text_head, DINOHead)

    def forward(self, image: "torch.Tensor | None" = None, text: "torch.Tensor | None" = None):
        from .heads import DINOHead

        raw = self.raw_head_scores
        img = (self.encode_image(image, normalize=not (raw and isinstance(self.image_head, DINOHead)))
               if image is not None else None)
        txt = (self.encode_text(text, normalize=not (raw and isinstance(self.text_head, DINOHead)))
               if text is not None else None)
        scale = self.logit_scale.exp()
        if self.output_dict:
            out = {"image_features": img, "text_features": txt, "logit_scale": scale}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        return (img, txt, scale) if self.logit_bias is None else (img, txt, scale, self.logit_bias)

    # LiT: the open_clip method names and semantics
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        self.image.lock(unlocked_groups)
        if freeze_bn_stats:  # BatchNorms whose parameters are all frozen keep their running statistics
            self._frozen_norms += [m for m in self.image.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                                   and not any(p.requires_grad for p in m.parameters())]
            self.train(self.training)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        self.text.lock(unlocked_layers, freeze_layer_norm)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.image.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_norms:
            m.eval()
        return self


# ------------------------------------------------------------------ build, save, load
def build_composite(towers: Mapping[str, Any], *, logit_scale_init: float = 1 / 0.07,
                    base_dir: "str | os.PathLike | None" = None):
    """(module, tokenizer, preprocess_cfg, resolved spec) for a ``towers`` config."""
    spec = check_towers(towers)
    base = Path(base_dir) if base_dir is not None else None
    try:
        image, pre = _build_image(spec["image"], spec.get("embed_dim"))
        text, tokenizer = _build_text(spec["text"], base)
    except ImportError as err:
        raise ConfigError(f"towers: the {err.name or 'required'} package is not installed; "
                          "pip install 'clipzoo[train]'") from None
    except (OSError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ConfigError(f"towers: cannot build a tower ({first})") from None
    embed_dim = int(spec.get("embed_dim") or text.out_dim)
    spec["embed_dim"] = embed_dim
    module = CompositeCLIP(image, text, build_head(spec.get("image_head"), image.out_dim, embed_dim, "image_head"),
                           build_head(spec.get("text_head"), text.out_dim, embed_dim, "text_head"), embed_dim,
                           logit_scale_init, spec.get("logit_bias"))
    pre = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pre.items()}
    pre["mean"] = list(spec["image"].get("mean") or pre["mean"])
    pre["std"] = list(spec["image"].get("std") or pre["std"])
    pre["size"] = [int(pre["size"])] * 2 if isinstance(pre["size"], int) else list(pre["size"])
    pre.setdefault("resize_mode", "shortest")
    return module.float().train(), tokenizer, pre, spec


def save_composite(module: CompositeCLIP, spec: Mapping[str, Any], preprocess: Mapping[str, Any],
                   tokenizer: TextTokenizer, folder: Path) -> None:
    """Write ``module`` (adapters already merged) into ``folder`` as a self-describing composite folder."""
    from safetensors.torch import save_file

    spec = copy.deepcopy(dict(spec))
    image, text = dict(spec["image"]), dict(spec["text"])
    image["pretrained"] = False
    if image["source"] == "open_clip":
        image["config"], _ = _open_clip_cfg({**image, "pretrained": False})
        image.pop("name", None)
    if text["source"] == "open_clip":
        text["config"], _ = _open_clip_cfg({**text, "pretrained": False})
        text.pop("name", None)
        text["pretrained"] = False
    elif text["source"] == "hf":
        module.text.hf_model.config.save_pretrained(folder / "text")
        tokenizer.tokenizer.save_pretrained(folder / "text")
        text.update(name="text", pretrained=False)
    else:  # sentence-transformers: its folder (modules, configs, tokenizer) is the recipe of the tower
        module.text.st_model.save(str(folder / "text"))
        text.update(name="text")
    text["context_length"] = tokenizer.context_length
    spec.update(image=image, text=text)
    config = {"format": "clipzoo-composite", "version": 1, "towers": spec,
              "preprocess_cfg": {k: v for k, v in preprocess.items() if k != "aug_cfg"}}
    (folder / MARKER).write_text(json.dumps(config, indent=2) + "\n")
    sd = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(sd, str(folder / WEIGHTS), metadata={"format": "pt"})


def load_composite(folder: "str | os.PathLike"):
    """(module in eval mode, tokenizer, preprocess_cfg, spec) of a folder :func:`save_composite` wrote."""
    from ..checkpoints import load_into, read_json, read_safetensors

    folder = Path(folder)
    config = read_json(folder / MARKER)
    if config.get("format") != "clipzoo-composite":
        raise ConfigError(f"{folder / MARKER} is not a clipzoo composite model config")
    module, tokenizer, _, spec = build_composite(config["towers"], base_dir=folder)
    sd, _ = read_safetensors(folder / WEIGHTS)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") or k in module.state_dict()}
    load_into(module, sd, str(folder / WEIGHTS))
    preprocess = dict(config.get("preprocess_cfg") or {})
    return module.eval(), tokenizer, preprocess, spec


def composite_transforms(preprocess: Mapping[str, Any]) -> tuple[Callable, Callable]:
    from .model import _transforms

    return _transforms(dict(preprocess))
