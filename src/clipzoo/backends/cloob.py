"""CLOOB backend (crowsonkb/cloob-training): the released LAION-400M ViT-B/16 checkpoints, in PyTorch.

A checkpoint is a Python pickle of ``{'params': (image_params, text_params), 'epoch': …}`` — Haiku parameters,
``{module name: {parameter name: numpy array}}`` — plus the model's JSON config (``d_embed``, ``inv_tau``, the
towers' sizes and head counts, the image normalisation). The pickle is read by a restricted unpickler that
builds nothing but containers, numbers, strings and numpy arrays: any other global is refused, so loading a file
runs no code. The config comes from the card (the publisher's JSON, as in ``catalog/cloob.toml``), or from a
``.json`` beside a local ``.pkl`` (same stem), or ``config=`` (a dict or a JSON path).

Logits are ``inv_tau`` (30) times the cosine, as CLOOB's zero-shot evaluation scores them. Texts: OpenAI's
BPE (CLOOB's ``clip.tokenize``), 77 tokens. Images: bicubic resize and centre crop to 224, then the config's
normalisation.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..cards import ModelCard
from ..comparator import Comparator, resolve_dtype
from ..errors import CheckpointError, ClipzooError, UnsafePickleError
from ..models.cloob import CLOOB, TowerShape, build_from_haiku
from ..models.jax_params import NUMPY_GLOBALS, ArraysOnlyUnpickler
from ..models.tokenize import tokenize_checked
from ..tokenizers import OpenAITokenizer
from .source_files import card_file


class NumpyOnlyUnpickler(ArraysOnlyUnpickler):
    """Unpickles containers, scalars, strings and numpy arrays (bounded by the file's size); refuses every other
    global."""

    allowed = NUMPY_GLOBALS

    def find_class(self, module: str, name: str):
        if (module, name) not in NUMPY_GLOBALS:
            raise UnsafePickleError(f"asks for the global {module}.{name}")
        return super().find_class(module, name)


def read_params(path: "str | os.PathLike") -> tuple[dict, dict]:
    """(image params, text params) of a CLOOB checkpoint, read with :class:`NumpyOnlyUnpickler`."""
    try:
        with open(path, "rb") as f:
            obj = NumpyOnlyUnpickler(io.BufferedReader(f), os.fstat(f.fileno()).st_size).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path} {exc}; a CLOOB checkpoint needs only numpy arrays, so it is refused — "
                                "use the file released by crowsonkb/cloob-training") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, MemoryError,
            CheckpointError) as exc:
        raise CheckpointError(f"{path} is not a readable CLOOB checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:150]}); is it truncated?") from None
    params = obj.get("params") if isinstance(obj, dict) else None
    if not (isinstance(params, (tuple, list)) and len(params) == 2 and all(isinstance(p, dict) for p in params)):
        raise CheckpointError(f"{path} is not a CLOOB checkpoint: it needs 'params' = (image params, text params)")
    return params[0], params[1]


def model_config(card: ModelCard, path: Path, config: "dict | str | None") -> dict:
    if isinstance(config, dict):
        return config
    if config is None and card.config.get("cloob_config"):
        return card.config["cloob_config"]
    json_path = Path(config) if config is not None else path.with_suffix(".json")
    if not json_path.is_file():
        raise ClipzooError(f"{path} needs its CLOOB JSON config (d_embed, inv_tau, the towers' n_heads, "
                           f"normalize); put it at {json_path} or pass config=")
    try:
        return json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the CLOOB config {json_path} ({exc})") from None


class CloobComparator(Comparator):
    def __init__(self, card: ModelCard, model: CLOOB, precision: str):
        import open_clip

        cfg = model.config
        size = int(cfg["image_encoder"]["image_size"])
        mean, std = (tuple(cfg["image_encoder"]["normalize"][k]) for k in ("mean", "std"))
        transform = open_clip.image_transform(size, is_train=False, mean=mean, std=std, interpolation="bicubic",
                                              resize_mode="shortest")
        context = int(cfg["text_encoder"]["text_size"])
        super().__init__(card, model, transform=transform, embed_dim=int(cfg["d_embed"]), image_size=size,
                         context_length=context)
        self.tokenizer = OpenAITokenizer(context_length=context)
        self.preprocess_config = {"size": size, "mean": mean, "std": std, "interpolation": "bicubic",
                                  "resize_mode": "shortest"}
        self.inv_tau = float(cfg.get("inv_tau", 30.0))
        self._input_dtype = resolve_dtype(precision)

    @property
    def dtype(self) -> torch.dtype:
        return self._input_dtype

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_encoder(pixels)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.text_encoder(tokens.long())

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        return tokenize_checked(self.tokenizer, texts, self.context_length, truncate)

    def logit_params(self):
        return torch.tensor(self.inv_tau), None


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, config: "dict | str | None" = None, gelu: str = "tanh",
         **kwargs: Any) -> CloobComparator:
    """``gelu="exact"`` reproduces cloob-training's PyTorch port; the default is JAX's, which it was trained with."""
    if kwargs:
        raise ClipzooError(f"unknown option(s) for a CLOOB model: {', '.join(sorted(kwargs))}")
    if gelu not in ("tanh", "exact"):
        raise ClipzooError(f"gelu={gelu!r}: use 'tanh' (JAX's, as trained) or 'exact' (the PyTorch port's)")
    dtype = resolve_dtype(precision)
    path = card_file(card, cache_dir, "cloob")
    cfg = model_config(card, Path(path), config)
    image_params, text_params = read_params(path)
    model = build_from_haiku(cfg, image_params, text_params, gelu).to(device=device, dtype=dtype)
    return CloobComparator(card, model, precision)


def meta_model(card: ModelCard, cache_dir=None) -> "CLOOB | None":
    """The released architecture from the card's JSON config, on the meta device (``clipzoo info``)."""
    cfg = card.config.get("cloob_config")
    if not cfg:
        return None
    im, tx = cfg["image_encoder"], cfg["text_encoder"]
    image = TowerShape(im["d_model"], im["n_layers"], im["n_heads"], 4 * im["d_model"],
                       (im["image_size"] // im["patch_size"]) ** 2 + 1)
    text = TowerShape(cfg["d_embed"], tx["n_layers"], tx["n_heads"], 4 * tx["d_model"], tx["text_size"])
    with torch.device("meta"):
        return CLOOB(cfg, image, text, im["patch_size"], im["input_channels"], tx["vocab_size"], cfg["d_embed"])
