"""FAIR SLIP backend (facebookresearch/SLIP): its SLIP, CLIP and SimCLR checkpoints, ViT-S/16, B/16, L/16.

A released ``.pt`` file holds ``{'state_dict': {'module.…': tensor}, 'args': argparse.Namespace, 'epoch': …}``.
It is read with ``torch.load(weights_only=True)`` and one global allowed beyond tensors and containers:
``argparse.Namespace`` (the training arguments, whose ``model`` names the architecture). A pickle that asks
for any other global is refused, whatever it is (``trust_pickle`` does not widen this); nothing in the file is
trusted further.

Images: SLIP's eval transform (resize the short side to 224 bilinear, centre crop, ImageNet mean/std).
Texts: OpenAI's BPE, 77 positions, pooled at the end-of-text token; ``truncate=True`` keeps the first 77
tokens as SLIP's own tokenizer does. SimCLR checkpoints are image-only.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from typing import Any

import torch

from ..cards import IMAGE, ModelCard
from ..checkpoints import load_into, strip_prefixes
from ..comparator import Comparator, resolve_dtype
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError, ClipzooError, UnsafePickleError, UnsupportedError
from ..inputs import text_items, too_long_error
from ..models.slip import SlipConfig, SlipModel, config_for_name, config_from_state_dict
from ..tokenizers import OpenAITokenizer
from .source_files import card_file

ALLOWED_GLOBALS = (argparse.Namespace,)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_checkpoint(path: "str | os.PathLike") -> tuple[dict, dict]:
    """(state dict without the ``module.`` prefix, training arguments as a dict) of a SLIP ``.pt`` file."""
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        what = f"the global {found[1]}" if found else "an object that is not allowed"
        raise UnsafePickleError(f"{path} asks for {what}; a SLIP checkpoint needs only tensors and "
                                "argparse.Namespace, so it is refused — use the file released by facebookresearch/SLIP"
                                ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"{path} is not a readable SLIP checkpoint ({first}); is it truncated?") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a SLIP checkpoint: it holds no 'state_dict' dict")
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    sd = {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
    return strip_prefixes(sd), args


def slip_transform(size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size),
                      T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class SlipComparator(Comparator):
    """A Comparator over :class:`~clipzoo.models.slip.SlipModel`."""

    def __init__(self, card: ModelCard, model: SlipModel, precision: str):
        cfg: SlipConfig = model.config
        image_only = cfg.kind == "SIMCLR"
        super().__init__(card, model, transform=slip_transform(cfg.image_size), embed_dim=cfg.out_dim,
                         image_size=cfg.image_size, context_length=None if image_only else cfg.context_length,
                         modalities=(IMAGE,) if image_only else card.modalities)
        self.kind = cfg.kind
        self.tokenizer = None if image_only else OpenAITokenizer(context_length=cfg.context_length)
        self.preprocess_config = {"size": cfg.image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                  "interpolation": "bilinear", "resize_mode": "shortest"}
        self._input_dtype = resolve_dtype(precision)

    @property
    def dtype(self) -> torch.dtype:
        return self._input_dtype

    def _image_only(self) -> UnsupportedError:
        return UnsupportedError(f"{self.card.alias} is a SimCLR model: it is image-only (no text tower); "
                                "use a SLIP or CLIP checkpoint for text")

    def encode_text(self, texts: Any, normalize: bool = True, batch_size: int = 256, truncate: bool = False,
                    long_text: str | None = None):
        if self.kind == "SIMCLR":
            raise self._image_only()
        return super().encode_text(texts, normalize=normalize, batch_size=batch_size, truncate=truncate,
                                   long_text=long_text)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "SIMCLR":
            raise self._image_only()
        return self.model.encode_text(tokens)

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        """SLIP's tokenizer: ``[sot] + bpe + [eot]``, zero-padded; a longer text raises unless ``truncate``,
        which keeps its first ``context_length`` tokens (SLIP's cut, end-of-text included only if it fits)."""
        if self.kind == "SIMCLR":
            raise self._image_only()
        tok, n = self.tokenizer, self.context_length
        texts = text_items(texts)
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
            if len(ids) > n and not truncate:
                raise too_long_error(text, len(ids), n)
            ids = ids[:n]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def logit_params(self):
        if self.kind == "SIMCLR":  # no learned temperature: plain cosine
            return torch.ones(()), None
        return self.model.logit_scale.exp().reshape(()), None


def build_model(sd: dict, args: dict, card: ModelCard, source: str) -> SlipModel:
    name = args.get("model") or card.config.get("model")
    if not name:
        raise CheckpointError(f"{source} names no SLIP model (its 'args' has no 'model'); register the card "
                              "with model='SLIP_VITB16' (or CLIP_/SIMCLR_, VITS16/VITB16/VITL16)")
    model = SlipModel(config_from_state_dict(sd, name))
    load_into(model, sd, source)
    return model.eval()


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, **kwargs: Any) -> SlipComparator:
    if kwargs:
        raise ClipzooError(f"unknown option(s) for a SLIP model: {', '.join(sorted(kwargs))}")
    dtype = resolve_dtype(precision)
    path = card_file(card, cache_dir, "slip")
    sd, args = read_checkpoint(path)
    model = build_model(sd, args, card, str(path)).to(device=device, dtype=dtype)
    return SlipComparator(card, model, precision)


def meta_model(card: ModelCard, cache_dir=None) -> "SlipModel | None":
    """The card's released architecture on the meta device (for ``clipzoo info``), or None without a model name."""
    name = card.config.get("model")
    if not name:
        return None
    with torch.device("meta"):
        return SlipModel(config_for_name(name))
