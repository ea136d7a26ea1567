"""HF transformers backend: CLIPModel, SiglipModel (SigLIP 1 and 2), Siglip2Model (NaFlex),
ChineseCLIPModel and AltCLIPModel, each fed the way it was trained.

What differs between the families is only how text is padded and masked:

- CLIP pads after ``<|endoftext|>`` and pools at it; its causal mask makes padding irrelevant, and
  its pad id may be a real token ("!" in LAION's conversions), so the attention mask is derived from
  the first EOS, not from the pad id;
- SigLIP pads every text to the full context (64 for the real models) and attends to the padding,
  with no mask, as big_vision and open_clip do (it pools the last position);
- Chinese-CLIP (BERT) and AltCLIP (XLM-R) attend bidirectionally and need a mask from the pad id.

Images go through the checkpoint's own HF image processor (see :class:`HFImageTransform`), so
preprocessing matches transformers exactly.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..cards import IMAGE, TEXT, ModelCard
from ..checkpoints import read_json, refuse_special_files, show_keys
from ..comparator import Comparator, resolve_dtype
from ..download import hub_snapshot
from ..errors import ArchitectureMismatchError, CheckpointError, UnsupportedError, one_line
from ..models.tokenize import tokenize_with
from .source_files import cached_hub_file
from .transformers_checks import (
    IMAGE_TEXT,
    check_config_fits,
    check_image_fits,
    model_class,
    pickle_refusal,
    processor_source,
    transformers_module,
)


@dataclass(frozen=True)
class Family:
    """How one HF model class is fed. ``mask``: "eos" (mask after the first EOS), "pad" (mask the pad
    id) or None (no mask: the model attends to padding, as it was trained). ``naflex``: the vision tower
    takes patches + spatial shapes (Siglip2Model)."""

    hf_class: str
    mask: str | None
    naflex: bool = False


FAMILIES = {
    "clip": Family("CLIPModel", mask="eos"),
    "siglip": Family("SiglipModel", mask=None),
    "siglip2": Family("Siglip2Model", mask=None, naflex=True),
    "chinese_clip": Family("ChineseCLIPModel", mask="pad"),
    "altclip": Family("AltCLIPModel", mask="pad"),
}
BY_CLASS = {f.hf_class: f for f in FAMILIES.values()}


# ------------------------------------------------------------------------------------ shared helpers
def model_folder(card: ModelCard, cache_dir: "str | os.PathLike | None" = None) -> Path:
    """The local folder holding a card's files: its ``source.path``, or a hub snapshot (offline once cached;
    :class:`~clipzoo.errors.ModelNotCachedError` naming the repo otherwise)."""
    src = card.source
    if src.path:
        path = Path(src.path)
        if not path.exists():
            raise CheckpointError(f"model folder {str(path)!r} does not exist; check the path")
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file, but {card.backend} models load from a folder written by "
                                  "save_pretrained (config.json + weights + tokenizer files); pass the folder")
        return path
    if src.hf_repo:
        return hub_model_folder(src.hf_repo, cache_dir)
    raise CheckpointError(f"{card.alias} has no local path or hub repo to load from ({src.describe()})")


# configs, tokenizer files (vocab.json, merges.txt, vocab.txt, spiece.model, …), safetensors weights, and
# the .bin weights of sentence-transformers submodules (2_Dense/…); never TF / Flax / ONNX copies
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*/*.bin"]


def hub_model_folder(repo: str, cache_dir=None) -> Path:
    """A hub repo's snapshot with only the files PyTorch loading needs; ``*.bin`` weights are fetched
    only for a model folder that has no safetensors (older repos)."""
    folder = hub_snapshot(repo, cache_dir, allow_patterns=HUB_PATTERNS)
    model_dirs = [d for d in (folder, *folder.iterdir()) if d.is_dir() and (d / "config.json").exists()]
    if any(not any(d.glob("*.safetensors")) and not any(d.glob("*.bin")) for d in model_dirs):
        folder = hub_snapshot(repo, cache_dir, allow_patterns=HUB_PATTERNS + ["*.bin"])
    return folder


def features_of(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4.x and a ``BaseModelOutputWithPooling``
    (projected features in ``pooler_output``) in 5.x."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise UnsupportedError(f"cannot read features from a {type(output).__name__} (no pooler_output)")
    return pooled


def attention_mask(tokens: torch.Tensor, kind: str | None, pad_id: int | None, eos_id: int | None):
    """The mask a tokenizer would have returned for right- or left-padded ``tokens``."""
    if kind is None:
        return None
    if kind == "eos" and eos_id is not None:
        is_eos = tokens == eos_id
        before = is_eos.long().cumsum(1) - is_eos.long()  # EOS tokens strictly before each position
        return (before == 0).long()
    if pad_id is None:
        return torch.ones_like(tokens)
    return (tokens != pad_id).long()


def trim_padding(tokens: torch.Tensor, mask: torch.Tensor | None, padding_side: str):
    """Drop trailing columns that are padding in every row (same result with a mask, less compute)."""
    if mask is None or padding_side != "right" or tokens.shape[1] == 0:
        return tokens, mask
    length = max(int(mask.sum(1).max()), 1)
    return tokens[:, :length], mask[:, :length]


class HFImageTransform:
    """PIL image -> (3, H, W) float tensor, computed by the checkpoint's own HF image processor, so it
    matches transformers exactly (resize, crop, rescale and normalise as configured)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image) -> torch.Tensor:
        if getattr(image, "mode", "RGB") != "RGB":
            image = image.convert("RGB")
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"HFImageTransform({type(self.image_processor).__name__})"


class NaFlexSquareTransform:
    """SigLIP 2 NaFlex at a fixed square grid: PIL -> (3, g·p, g·p) with g = ⌊√max_num_patches⌋.

    NaFlex keeps each image's aspect ratio and a variable patch grid; a Comparator takes batched
    (N, 3, H, W) pixels, so images are used at the square grid NaFlex gives a square image. For a square
    image this is exactly the processor's output; other images are squashed to the square.
    """

    def __init__(self, image_processor, patch_size: int, max_num_patches: int):
        self.image_processor = image_processor
        self.patch_size = patch_size
        self.max_num_patches = max_num_patches
        self.grid = math.isqrt(max_num_patches)

    def __call__(self, image) -> torch.Tensor:
        if getattr(image, "mode", "RGB") != "RGB":
            image = image.convert("RGB")
        out = self.image_processor(images=image, return_tensors="pt", patch_size=self.patch_size,
                                   max_num_patches=self.max_num_patches)
        h, w = (int(v) for v in out["spatial_shapes"][0])
        p = self.patch_size
        patches = out["pixel_values"][0, : h * w]  # (h*w, p*p*3), as convert_image_to_patches lays them out
        pixels = patches.reshape(h, w, p, p, 3).permute(4, 0, 2, 1, 3).reshape(3, h * p, w * p)
        side = self.grid * p
        if (h * p, w * p) != (side, side):
            pixels = torch.nn.functional.interpolate(pixels[None], size=(side, side), mode="bilinear",
                                                     antialias=True, align_corners=False)[0]
        return pixels

    def __repr__(self) -> str:
        return f"NaFlexSquareTransform(patch_size={self.patch_size}, grid={self.grid}x{self.grid})"


def to_patches(pixels: torch.Tensor, patch_size: int, max_num_patches: int):
    """(N, 3, H, W) -> NaFlex inputs: patches (N, max_num_patches, p·p·3), mask, spatial shapes."""
    n, c, height, width = pixels.shape
    p = patch_size
    h, w = height // p, width // p
    patches = pixels.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, p * p * c)
    mask = torch.ones(n, max(max_num_patches, h * w), dtype=torch.int32, device=pixels.device)
    if h * w < max_num_patches:
        patches = torch.nn.functional.pad(patches, (0, 0, 0, max_num_patches - h * w))
        mask[:, h * w:] = 0
    shapes = torch.tensor([[h, w]] * n, dtype=torch.long, device=pixels.device)
    return patches, mask, shapes


# ------------------------------------------------------------------------------------ the Comparator
class HFComparator(Comparator):
    """A transformers CLIP-family model. ``model`` is the HF model; ``hf_tokenizer`` and
    ``image_processor`` are the checkpoint's own."""

    def __init__(self, card: ModelCard, model, *, tokenizer, image_processor, family: Family, transform,
                 embed_dim: int, image_size, context_length: int, naflex: tuple[int, int] | None = None):
        super().__init__(card, model, transform=transform, embed_dim=embed_dim, image_size=image_size,
                         context_length=context_length, modalities=(IMAGE, TEXT))
        self.hf_tokenizer = tokenizer
        self.image_processor = image_processor
        self.family = family
        self._naflex = naflex  # (patch_size, max_num_patches) for Siglip2Model
        self.probability = "sigmoid" if getattr(model, "logit_bias", None) is not None else "softmax"

    @property
    def pad_id(self) -> int | None:
        return self.hf_tokenizer.pad_token_id

    @property
    def eos_id(self) -> int | None:
        return self.hf_tokenizer.eos_token_id

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._naflex is not None:
            patches, mask, shapes = to_patches(pixels, *self._naflex)
            return features_of(self.model.get_image_features(pixel_values=patches, pixel_attention_mask=mask,
                                                             spatial_shapes=shapes))
        return features_of(self.model.get_image_features(pixel_values=pixels))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        mask = attention_mask(tokens, self.family.mask, self.pad_id, self.eos_id)
        tokens, mask = trim_padding(tokens, mask, self.hf_tokenizer.padding_side)
        return features_of(self.model.get_text_features(input_ids=tokens, attention_mask=mask))

    def tokenize(self, texts: str | list[str], truncate: bool = False) -> torch.Tensor:
        return tokenize_with(self.hf_tokenizer, texts, self.context_length, truncate)

    def logit_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = getattr(self.model, "logit_bias", None)
        return self.model.logit_scale.exp().reshape(()), (None if bias is None else bias.reshape(()))


# ------------------------------------------------------------------------------------ loading
def pick_family(config: dict, hf_class: str | None, folder) -> Family:
    """The family from ``hf_class`` when given (an unlisted class is fed like BERT: masked at the pad id),
    else from config.json ``model_type``."""
    model_type = config.get("model_type")
    if hf_class:
        return BY_CLASS.get(hf_class, Family(hf_class, mask="pad"))
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise UnsupportedError(
        f"{folder} holds a {model_type!r} model (config.json model_type), which the transformers backend "
        f"does not load as an image-text model; it loads model_type {', '.join(sorted(FAMILIES))}. "
        "If it is a CLIP-like model with get_image_features/get_text_features, pass hf_class='ItsModelClass'")


def load_hf_model(folder: Path, class_name: str, dtype: torch.dtype, needs: tuple[str, ...] = ()):
    """``from_pretrained`` with an error that names missing / mismatched weights instead of random init. First the
    checks of :mod:`.transformers_checks`: the class (with the methods in ``needs``), no fifo among the files, the
    weights' headers, and a config that builds what the weights hold (on the meta device)."""
    cls = model_class(class_name, needs)
    transformers = transformers_module()
    refuse_special_files(folder)
    check_config_fits(folder, cls)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kwargs = {"output_loading_info": True, dtype_kw: dtype}
    with _quiet_loading(transformers):
        return _load_checked(cls, folder, class_name, kwargs)


def hub_meta_model(card: ModelCard, cache_dir, pick):
    """The card's hub model on the meta device from its cached config.json, downloading nothing (``clipzoo
    info``); ``pick(config, hf_class, folder)`` gives the row whose ``hf_class`` is built."""
    config_file = cached_hub_file(card.source.hf_repo, "config.json", cache_dir)
    row = pick(read_json(config_file), card.config.get("hf_class"), config_file.parent)
    cls = model_class(row.hf_class)
    config = transformers_module().AutoConfig.from_pretrained(str(config_file.parent))
    with torch.device("meta"):
        return cls._from_config(config)


@contextlib.contextmanager
def _quiet_loading(transformers):
    """No per-tensor progress bar while loading: clipzoo reports problems as errors itself."""
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _load_checked(cls, folder: Path, class_name: str, kwargs: dict):
    try:
        try:
            model, info = cls.from_pretrained(str(folder), **kwargs)
        except (ValueError, RuntimeError) as exc:
            if "mismatched" not in str(exc):
                raise
            # load again tolerating the mismatch, only to learn which tensors have another shape
            model, info = cls.from_pretrained(str(folder), ignore_mismatched_sizes=True, **kwargs)
    except pickle.UnpicklingError as exc:  # torch's weights-only load of pytorch_model.bin refused it
        raise pickle_refusal(folder, exc, "transformers") from None
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load {folder} as {class_name} ({first})") from None
    ignore = ("position_ids",)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith(ignore))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.endswith(ignore))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise ArchitectureMismatchError(
            f"{folder} does not fit {class_name}: {len(missing)} missing key(s) {show_keys(missing)}, "
            f"{len(unexpected)} unexpected key(s) {show_keys(unexpected)}, {len(mismatched)} with another shape "
            f"{show_keys(mismatched)}; check config.json against the weights, or pass the right hf_class")
    return model.eval()


def from_folder(auto_class: str, folder: Path, what: str):
    """``transformers.<auto_class>.from_pretrained(folder)``; CheckpointError naming ``what`` when it fails (and
    before, when a fifo among the folder's files would hang it)."""
    refuse_special_files(folder)
    try:
        return getattr(transformers_module(), auto_class).from_pretrained(str(folder))
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CheckpointError(f"{folder} has no usable {what} ({type(exc).__name__}: {str(exc)[:200]}); "
                              "save it with the model (processor.save_pretrained(folder))") from None


def load_tokenizer(folder: Path):
    """The folder's tokenizer (``AutoTokenizer``); a missing or vocabulary-less one raises CheckpointError, and so
    does a vocabulary file that is a folder (a fifo is refused before the tokenizer is read)."""
    folder = Path(folder)
    tokenizer = from_folder("AutoTokenizer", folder, "tokenizer")
    # transformers 5 builds an empty tokenizer (a handful of special tokens) when no vocabulary file exists, or when
    # tokenizer.json is a folder: every text then had one embedding
    vocab_files = getattr(tokenizer, "vocab_files_names", {}) or {}
    for path in (folder / name for name in vocab_files.values()):
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder, not a tokenizer file; save the tokenizer with the model "
                                  "(processor.save_pretrained(folder))")
    if vocab_files and not any((folder / name).is_file() for name in vocab_files.values()):
        raise CheckpointError(f"{folder} has no tokenizer vocabulary (none of {', '.join(vocab_files.values())}); "
                              "save the tokenizer with the model (processor.save_pretrained(folder))")
    return tokenizer


def load_processors(folder: Path):
    tokenizer = load_tokenizer(folder)
    return tokenizer, from_folder("AutoImageProcessor", folder, "image processor")


def text_context(model_config, tokenizer, card: ModelCard, override: int | None, family: Family | None) -> int:
    """Context length: explicit > card > tokenizer's model_max_length, capped by the position table."""
    text_cfg = getattr(model_config, "text_config", model_config)
    positions = getattr(text_cfg, "max_position_embeddings", None)
    if positions and family is not None and family.hf_class == "AltCLIPModel":  # XLM-R positions start after the pad id
        positions -= (getattr(text_cfg, "pad_token_id", 1) or 1) + 1
    ctx = override or card.context_length
    if not ctx:
        max_len = getattr(tokenizer, "model_max_length", None)
        ctx = max_len if max_len and max_len < 100_000 else positions
    if not ctx:
        raise CheckpointError(f"cannot tell the context length of {card.alias}; pass context_length=…")
    return int(min(ctx, positions)) if positions else int(ctx)


def load_keywords(card: ModelCard, kwargs: dict, backend: str) -> tuple[str | None, int | None]:
    """``hf_class`` (default: the card's) and ``context_length`` taken from a load's ``kwargs``; any other
    keyword is a TypeError naming ``backend``."""
    hf_class = kwargs.pop("hf_class", None) or card.config.get("hf_class")
    context_override = kwargs.pop("context_length", None)
    if kwargs:
        raise TypeError(f"unexpected keyword(s) for the {backend} backend: {', '.join(sorted(kwargs))}")
    return hf_class, context_override


def pretrained_config(card: ModelCard, cache_dir) -> tuple[Path, dict]:
    """The card's save_pretrained folder (local or the hub cache) and its config.json; a fifo among the folder's
    files is refused before any of them is read."""
    folder = model_folder(card, cache_dir)
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder} has no config.json, so it is not a transformers save_pretrained folder")
    refuse_special_files(folder)
    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):  # a list was an unhashable-type traceback
        raise CheckpointError(f"{folder}: its config.json cannot be built (model_type is {model_type!r:.80}, "
                              "not a name such as 'clip'); check the config's values")
    return folder, config


def embed_dim_of(model_config) -> int:
    dim = getattr(model_config, "projection_dim", None)
    if dim:
        return int(dim)
    return int(model_config.vision_config.hidden_size)  # SigLIP: both heads output the hidden width


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, **kwargs: Any) -> HFComparator:
    """Load a transformers save_pretrained folder (local or from the hub cache) as a Comparator.

    Keywords: ``hf_class`` (a transformers class name, default from config.json ``model_type``),
    ``context_length`` (override the text context). ``trust_pickle`` is unused: transformers reads
    safetensors, and ``.bin`` weights only with ``weights_only=True``.
    """
    hf_class, context_override = load_keywords(card, kwargs, "transformers")
    folder, config = pretrained_config(card, cache_dir)
    family = pick_family(config, hf_class, folder)
    dtype = resolve_dtype(precision)
    model = load_hf_model(folder, family.hf_class, dtype, needs=IMAGE_TEXT).to(device)
    tokenizer, image_processor = load_processors(folder)

    naflex = None
    if family.naflex:
        patch = int(getattr(image_processor, "patch_size", model.config.vision_config.patch_size))
        max_patches = int(getattr(image_processor, "max_num_patches", 256))
        naflex = (patch, max_patches)
        transform = NaFlexSquareTransform(image_processor, patch, max_patches)
    else:
        transform = HFImageTransform(image_processor)
    source = processor_source(folder)
    image_size = image_size_of(transform, source)
    if not family.naflex:
        check_image_fits(image_size, source, model.config)
    return HFComparator(card, model, tokenizer=tokenizer, image_processor=image_processor, family=family,
                        transform=transform, embed_dim=embed_dim_of(model.config), image_size=image_size,
                        context_length=text_context(model.config, tokenizer, card, context_override, family),
                        naflex=naflex)


def image_size_of(transform, source: str = "the image processor") -> int | tuple[int, int]:
    """The pixel size the transform produces (run once on a blank non-square image); a CheckpointError naming
    ``source`` (the processor file) when it cannot make one (a size of 0 or -5 was a raw error from deep inside)."""
    from PIL import Image

    try:
        h, w = transform(Image.new("RGB", (97, 61))).shape[-2:]
    except (ValueError, RuntimeError, TypeError, KeyError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{source} cannot preprocess an image ({type(exc).__name__}: {one_line(exc, 200)}); "
                              "check its size settings, or save the image processor that came with the model") from None
    return int(h) if h == w else (int(h), int(w))
