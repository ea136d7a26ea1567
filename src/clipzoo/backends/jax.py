"""JAX backend: open_clip_jax's ViT and ConvNeXt CLIPs (a ``.pkl`` parameter file) run jit-compiled in JAX.

``clipzoo.load("params.pkl", model="vit-base-patch32")`` — ``model`` names one of open_clip_jax's configs
(:data:`clipzoo.models.jax_config.MODEL_CONFIGS`) or is a dict in its JSON form; a catalogued card carries it
in ``config.model``, and a file written by ``clipzoo convert --to jax`` in ``params.config.json`` next to it.
Image size and context length follow from the parameters (a ConvNeXt's image size: ``image_size=``, the
config file's, the card's, else 224). Encoding hands features back
as torch tensors (through DLPack, without a copy where the devices allow), so similarity, ensembles,
evaluation and indices work as with any backend; gradients do not flow back from JAX into torch.

A ``.pkl`` is a pickle: it is read with an unpickler that admits only dicts of numpy / JAX arrays and Flax's
``FrozenDict`` (what open_clip_jax's released files hold) unless ``trust_pickle=True``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ..cards import IMAGE, TEXT, ModelCard
from ..comparator import ForeignComparator
from ..constants import OPENAI_MEAN, OPENAI_STD
from ..download import hub_file
from ..errors import CheckpointError, ClipzooError, UnsupportedError
from ..models.jax_clip import create_model
from ..models.jax_config import (
    JaxClipConfig,
    check_shapes,
    check_temp,
    get_config,
    list_configs,
    param_sizes,
    read_config_file,
)
from ..models.jax_open_clip_map import DEFAULT_TEMPERATURE  # parameter files without 'temp'
from ..models.jax_params import read_params
from ..models.open_clip_parts import eval_transform
from ..models.tokenize import tokenize_checked
from ..tokenizers import OpenAITokenizer

__all__ = ["JaxComparator", "JaxTowers", "build", "load", "read_params", "to_torch"]

JAX_DTYPES = {"fp32": jnp.float32, "float32": jnp.float32, "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16,
              "fp16": jnp.float16, "float16": jnp.float16}


def to_torch(x) -> torch.Tensor:
    """A JAX array as a torch tensor, sharing its memory through DLPack where possible."""
    try:
        return torch.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError):
        return torch.from_numpy(np.array(x))


@functools.lru_cache(maxsize=16)
def compiled_encoders(cfg: JaxClipConfig, dtype):
    """``(module, encode_image, encode_text)`` of a config: the jitted encoders are shared by every model of
    the same config and dtype, so loading it again (other weights, same shapes) compiles nothing."""
    module = create_model(cfg, dtype=dtype)
    return (module, jax.jit(lambda v, x: module.apply(v, x, method="encode_image")),
            jax.jit(lambda v, t: module.apply(v, t, method="encode_text")))


class JaxTowers(torch.nn.Module):
    """The Flax model, its parameters on a JAX device and the two jit-compiled encoders."""

    def __init__(self, cfg: JaxClipConfig, params: dict, *, dtype, jax_device):
        super().__init__()
        self.cfg = cfg
        self.module, self.image, self.text = compiled_encoders(cfg, dtype)
        self.jax_device = jax_device
        tower_params = {k: v for k, v in params["params"].items() if k != "temp"}
        variables = {"params": tower_params}
        if "batch_stats" in params:  # a ResNet's BatchNorm running averages
            variables["batch_stats"] = params["batch_stats"]
        self.variables = jax.device_put(variables, jax_device)

    def encode_image(self, pixels_nhwc: np.ndarray):
        return self.image(self.variables, jax.device_put(pixels_nhwc, self.jax_device))

    def encode_text(self, tokens: np.ndarray):
        return self.text(self.variables, jax.device_put(tokens, self.jax_device))

    def extra_repr(self) -> str:
        return f"config={self.cfg.name}, device={self.jax_device}"


class JaxComparator(ForeignComparator):
    """A Comparator whose encoders are jit-compiled JAX functions. ``model`` is the :class:`JaxTowers`."""

    ENGINE = "jax"
    NO_GRAD = ("runs in JAX, which hands torch no gradients; load the PyTorch model (convert it to open_clip) "
               "to backpropagate")

    def __init__(self, card: ModelCard, towers: JaxTowers, *, transform, tokenizer, image_size: int,
                 context_length: int, logit_scale: float, device: torch.device):
        super().__init__(card, towers, transform=transform, embed_dim=towers.cfg.proj_dim, image_size=image_size,
                         context_length=context_length, modalities=(IMAGE, TEXT), device=device)
        self.tokenizer = tokenizer
        self._scale = torch.tensor(float(logit_scale))
        self.runtime = "jax"

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).contiguous().numpy()
        return to_torch(self.model.encode_image(x))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return to_torch(self.model.encode_text(tokens.detach().cpu().numpy().astype(np.int32)))

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        return tokenize_checked(self.tokenizer, texts, self.context_length, truncate).long()

    def logit_params(self):
        return self._scale, None



def _jax_device(device: str):
    kind = torch.device(device)
    platform = {"cpu": "cpu", "cuda": "gpu"}.get(kind.type)
    try:
        devices = jax.devices(platform) if platform else []
    except RuntimeError:
        devices = []
    index = kind.index or 0
    if index >= len(devices):
        raise UnsupportedError(f"device {device!r} is not available to JAX (it has: "
                               f"{', '.join(str(d) for d in jax.devices())}); use device='cpu'")
    return devices[index]


def _params_path(card: ModelCard, cache_dir) -> str:
    src = card.source
    if src.path:
        return src.path
    if src.hf_repo and src.hf_file:
        return str(hub_file(src.hf_repo, src.hf_file, cache_dir))
    raise CheckpointError(f"{card.alias}: the jax backend loads a local .pkl or a hub file (hf_repo + hf_file)")


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, model: "str | dict | None" = None, image_size: "int | None" = None,
         **kwargs: Any) -> JaxComparator:
    """Load open_clip_jax parameters; ``model`` names the config (or comes from the card's ``config.model``,
    or the ``.config.json`` file next to a local ``.pkl``)."""
    if kwargs:
        raise ClipzooError(f"unknown option(s) for a JAX model: {', '.join(sorted(kwargs))}")
    recorded = read_config_file(card.source.path) if card.source.path else None
    model = model if model is not None else card.config.get("model", (recorded or {}).get("model"))
    if model is None:
        raise ClipzooError(f"{card.alias}: a JAX parameter file needs its config; pass model=NAME "
                           f"(one of {', '.join(list_configs())})")
    if precision not in JAX_DTYPES:
        raise ClipzooError(f"unknown precision {precision!r} for a JAX model; use fp32, bf16 or fp16")
    path = _params_path(card, cache_dir)
    params = read_params(path, trust_pickle)
    size = image_size or (recorded or {}).get("image_size") or card.image_size
    try:
        return build(card, params, model, image_size=size, precision=precision, device=device,
                     preprocess=(recorded or {}).get("preprocess_cfg"))
    except CheckpointError as exc:  # what the values say (a bad temp, an empty grid, a shape): name the file too
        if str(path) in str(exc) or card.alias in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from None


def build(card: ModelCard, params: Mapping[str, Any], model: "str | dict | JaxClipConfig", *,
          image_size: "int | None" = None, precision: str = "fp32", device: str = "cpu",
          preprocess: "dict | None" = None) -> JaxComparator:
    """A :class:`JaxComparator` of ``{'params': …}`` in open_clip_jax's tree (checked against config ``model``);
    ``preprocess``: the preprocessing a conversion recorded beside the ``.pkl`` (else OpenAI's, open_clip_jax's)."""
    if precision not in JAX_DTYPES:
        raise ClipzooError(f"unknown precision {precision!r} for a JAX model; use fp32, bf16 or fp16")
    cfg = get_config(model)
    check_shapes(params["params"], cfg)
    if cfg.is_resnet and "batch_stats" not in params:
        raise CheckpointError(f"{card.alias}: a JAX ResNet's parameter file needs its BatchNorm running averages "
                              "('batch_stats' beside 'params'); write it with clipzoo train --engine jax or "
                              "clipzoo convert --to jax")
    image_size, context_length = param_sizes(params["params"], cfg, image_size)
    temp = params["params"].get("temp")  # checked by check_shapes: one finite number
    scale = math.exp(check_temp(np.asarray(temp))) if temp is not None else DEFAULT_TEMPERATURE
    towers = JaxTowers(cfg, params, dtype=JAX_DTYPES[precision], jax_device=_jax_device(str(device)))
    named = model if isinstance(model, str) else cfg.as_dict()
    card = card.replace(backend="jax", embed_dim=cfg.proj_dim, image_size=image_size,
                        context_length=context_length, config={**card.config, "model": named})
    transform = eval_transform({**(preprocess or {"mean": OPENAI_MEAN, "std": OPENAI_STD}), "size": image_size})
    return JaxComparator(card, towers, transform=transform, tokenizer=OpenAITokenizer(context_length=context_length),
                         image_size=image_size, context_length=context_length, logit_scale=scale,
                         device=torch.device(str(device)))
