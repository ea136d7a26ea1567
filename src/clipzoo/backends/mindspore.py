"""MindSpore backend: OpenAI / open_clip CLIPs (ModifiedResNet or ViT) run in MindSpore.

Three ways in, one Comparator (:class:`MindSporeComparator`):

- a MindSpore ``.ckpt`` in MindSpore-CLIP's names — ``clipzoo.load("model.ckpt", model="ViT-B-32")``; ``model``
  names a config of :mod:`clipzoo.models.mindspore_config` (open_clip's or OpenAI's name) or is an open_clip
  model config dict; without it the config is read from the shapes as MindSpore-CLIP's ``build_model`` does
  (OpenAI's models: QuickGELU, 64-wide heads);
- a catalogued card (``mindspore:ViT-B-32/openai``, ``catalog/mindspore.toml``): MindSpore-CLIP's download;
- any OpenAI / open_clip model clipzoo loads, with ``engine="mindspore"``: loaded in torch, then its weights
  are renamed into the MindSpore model (nothing written to disk).

Encoders run in PyNative mode by default; ``mode="graph"`` compiles each encoder with ``mindspore.jit``.
Features come back as torch tensors (float32, on the CPU), so similarity, ensembles, evaluation, indices and
the service work as with any backend; gradients do not flow back from MindSpore into torch.
"""
from __future__ import annotations

import os
from typing import Any

import mindspore as ms
import numpy as np
import torch

from ..cards import IMAGE, TEXT, ModelCard
from ..comparator import ForeignComparator
from ..download import download_url, sha256_of
from ..errors import CheckpointError, ClipzooError, DownloadError, UnsupportedError
from ..models.mindspore_clip import CLIP, build_model, load_params
from ..models.mindspore_config import PREPROCESS_KEY, check_config, config_of, tower_sizes
from ..models.mindspore_names import read_ckpt_entries, torch_to_mindspore
from ..models.open_clip_parts import eval_transform
from ..models.tokenize import tokenize_checked
from ..tokenizers import OpenAITokenizer

__all__ = ["MindSporeComparator", "build", "load", "NEEDS_LOADER", "MODES"]

NEEDS_LOADER = True  # engine="mindspore" on a torch model: it is loaded through clipzoo.load first
MODES = ("pynative", "graph")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
FP32 = ("fp32", "float32")


class MindSporeTowers(torch.nn.Module):
    """The MindSpore CLIP cell and its two encoders (PyNative calls, or ``mindspore.jit`` graphs)."""

    def __init__(self, net: CLIP, mode: str = "pynative"):
        super().__init__()
        self.net, self.mode = net, mode
        self.image, self.text = net.encode_image, net.encode_text
        if mode == "graph":
            self.image, self.text = ms.jit(net.encode_image), ms.jit(net.encode_text)

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return self.image(ms.Tensor(pixels)).asnumpy()

    def encode_text(self, tokens: np.ndarray) -> np.ndarray:
        return self.text(ms.Tensor(tokens)).asnumpy()

    def extra_repr(self) -> str:
        return f"mindspore {ms.__version__}, {self.mode} mode"


class MindSporeComparator(ForeignComparator):
    """A Comparator whose encoders run in MindSpore. ``model`` is the :class:`MindSporeTowers`; ``net`` the cell."""

    ENGINE = "mindspore"
    NO_GRAD = ("runs in MindSpore, which hands torch no gradients; load it with the torch engine to "
               "backpropagate")

    def __init__(self, card: ModelCard, towers: MindSporeTowers, *, transform, model_config: dict,
                 logit_scale: float, device: torch.device):
        sizes = tower_sizes(model_config)
        super().__init__(card, towers, transform=transform, embed_dim=sizes["embed_dim"],
                         image_size=sizes["image_size"], context_length=sizes["context_length"],
                         modalities=(IMAGE, TEXT), device=device)
        self.tokenizer = OpenAITokenizer(context_length=sizes["context_length"])
        self.model_config = model_config
        self._scale = torch.tensor(float(logit_scale))
        self.runtime = f"mindspore-{towers.mode}"

    @property
    def net(self) -> CLIP:
        return self.model.net

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.model.encode_image(x)).to(self.device)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = tokens.detach().cpu().numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= self.net.vocab_size):  # torch's embedding lookup raises this
            # IndexError, which encode_text turns into its BadTextError; MindSpore's Gather fails with a C++ trace
            raise IndexError(f"token id {int(ids.max())} is out of the vocabulary ({self.net.vocab_size} ids)")
        return torch.from_numpy(self.model.encode_text(ids.astype(np.int32))).to(self.device)


    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        return tokenize_checked(self.tokenizer, texts, self.context_length, truncate).long()

    def logit_params(self):
        return self._scale, None



def _check_device(device: str) -> None:
    kind = torch.device(device).type
    if kind != "cpu":
        raise UnsupportedError(f"device {device!r}: clipzoo's MindSpore engine runs on the CPU (MindSpore's "
                               "CPU wheel); use device='cpu'")


def ckpt_path(card: ModelCard, cache_dir) -> str:
    """The local ``.ckpt`` of a card: its path, or MindSpore-CLIP's download (verified against the SHA-256
    prefix its file names end with, ``NAME-<hex>.ckpt``)."""
    src = card.source
    if src.path:
        return src.path
    if not src.url:
        raise CheckpointError(f"{card.alias}: the mindspore backend loads a local .ckpt or a download URL")
    path = download_url(src.url, src.sha256, None if cache_dir is None else os.path.join(str(cache_dir), "mindspore"))
    prefix = os.path.splitext(os.path.basename(src.url))[0].rsplit("-", 1)[-1].lower()
    if not src.sha256 and len(prefix) >= 8 and all(c in "0123456789abcdef" for c in prefix) \
            and not sha256_of(path).startswith(prefix):
        os.remove(path)
        raise DownloadError(f"checksum mismatch for {src.url}: its SHA-256 does not start with {prefix}; "
                            "the download was removed, try again")
    return str(path)


def _from_torch(card: ModelCard, loader, options: dict[str, Any], kwargs: dict[str, Any]):
    """(config, params, transform) of a model loaded in torch (engine="mindspore")."""
    if loader is None:
        raise ClipzooError(f"{card.alias}: engine='mindspore' on a torch model needs clipzoo.load's loader")
    config = {k: v for k, v in card.config.items() if k != "torch_backend"}
    torch_model = loader(card.replace(backend=card.config["torch_backend"], config=config), device="cpu",
                         precision="fp32", **options, **kwargs)
    model_cfg = getattr(torch_model, "model_config", None)
    if not model_cfg:
        raise UnsupportedError(f"{card.alias} ({card.config['torch_backend']} backend) is not an OpenAI / open_clip "
                               "CLIP: the MindSpore engine runs those only")
    return check_config(model_cfg), torch_to_mindspore(torch_model.model.state_dict()), torch_model.transform


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, model: "str | dict | None" = None, mode: str = "pynative", loader=None,
         **kwargs: Any) -> MindSporeComparator:
    """Load a CLIP into MindSpore (see the module's docstring for the three sources)."""
    if precision not in FP32:
        raise UnsupportedError(f"precision {precision!r}: clipzoo's MindSpore engine runs fp32 only")
    if mode not in MODES:
        raise ClipzooError(f"unknown MindSpore mode {mode!r}; use one of: {', '.join(MODES)}")
    _check_device(str(device))
    if card.config.get("torch_backend"):
        cfg, params, transform = _from_torch(card, loader, {"cache_dir": cache_dir, "trust_pickle": trust_pickle},
                                             {**kwargs, **({"model_name": model} if isinstance(model, str) else {})})
    else:
        if kwargs:
            raise ClipzooError(f"unknown option(s) for a MindSpore model: {', '.join(sorted(kwargs))}")
        path = ckpt_path(card, cache_dir)
        params = read_ckpt_entries(path)  # the weights and the config clipzoo stored
        model = model if model is not None else card.config.get("model")
        cfg = config_of(params, str(path), model, openai=bool(card.config.get("openai")))
        transform = None
    card = card.replace(config={**card.config, "model": model if isinstance(model, str) else cfg})
    return build(card, params, cfg, transform=transform, mode=mode)


def build(card: ModelCard, params: dict[str, Any], model_config: dict[str, Any], *, transform=None,
          mode: str = "pynative") -> MindSporeComparator:
    """The Comparator of weights ``params`` (MindSpore-CLIP's names) in the MindSpore CLIP of ``model_config``
    (``transform``: when None, the preprocessing recorded in ``model_config``, else OpenAI's, at its image size)."""
    cfg = check_config(model_config)
    net = load_params(build_model(cfg), params)
    scale = float(np.exp(np.asarray(params["logit_scale"], np.float64)))
    sizes = tower_sizes(cfg)
    if transform is None:  # the preprocessing a conversion recorded in the .ckpt, else MindSpore-CLIP's (OpenAI's)
        recorded = model_config.get(PREPROCESS_KEY) or {"mean": OPENAI_MEAN, "std": OPENAI_STD}
        transform = eval_transform({**recorded, "size": sizes["image_size"]})
    card = card.replace(backend="mindspore", embed_dim=sizes["embed_dim"], image_size=sizes["image_size"],
                        context_length=sizes["context_length"])
    return MindSporeComparator(card, MindSporeTowers(net, mode), transform=transform, model_config=cfg,
                               logit_scale=scale, device=torch.device("cpu"))
