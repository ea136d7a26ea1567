"""CLIP-fa backend (SajjadAyoubi/clip-farsi): a Persian CLIP made of two Hugging Face models.

The image tower is a ``CLIPVisionModel`` (hub ``SajjadAyoubi/clip-fa-vision``, with its CLIP image processor),
the text tower a ``RobertaModel`` (hub ``SajjadAyoubi/clip-fa-text``, with its tokenizer); both features are
the towers' ``pooler_output`` (768-d, no projection), as the publisher's README computes them. One card gives
one Comparator over both. A local copy is a folder with ``vision/`` and ``text/`` save_pretrained folders.

The publisher releases no logit scale (training wrapped the towers in a ``CLIPModel`` whose scale was not
saved), so logits use ``CLIPConfig``'s initial scale, 1/0.07.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cards import ModelCard
from ..checkpoints import read_json
from ..comparator import Comparator, resolve_dtype
from ..errors import ArchitectureMismatchError, CheckpointError, ClipzooError
from ..models.tokenize import tokenize_with
from .source_files import cached_hub_file
from .transformers import (
    HFImageTransform,
    hub_model_folder,
    image_size_of,
    load_hf_model,
    load_tokenizer,
    trim_padding,
)

LOGIT_SCALE = 1 / 0.07  # transformers' CLIPConfig.logit_scale_init_value = log(1/0.07)


class ClipFaTowers(nn.Module):
    """The two towers under the names ``clipzoo info`` counts by (``vision_model`` image, ``text_model`` text)."""

    def __init__(self, vision_model: nn.Module, text_model: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.text_model = text_model


class ClipFaComparator(Comparator):
    def __init__(self, card: ModelCard, towers: ClipFaTowers, *, tokenizer, image_processor, context_length: int):
        transform = HFImageTransform(image_processor)
        super().__init__(card, towers, transform=transform, embed_dim=towers.vision_model.config.hidden_size,
                         image_size=image_size_of(transform), context_length=context_length)
        self.hf_tokenizer = tokenizer
        self.image_processor = image_processor

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels).pooler_output

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        mask = (tokens != self.hf_tokenizer.pad_token_id).long()
        tokens, mask = trim_padding(tokens, mask, self.hf_tokenizer.padding_side)
        return self.model.text_model(input_ids=tokens, attention_mask=mask).pooler_output

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        return tokenize_with(self.hf_tokenizer, texts, self.context_length, truncate)

    def logit_params(self):
        return torch.tensor(LOGIT_SCALE), None


def tower_folders(card: ModelCard, cache_dir=None) -> tuple[Path, Path]:
    """(vision folder, text folder): ``path/vision`` and ``path/text``, or the two hub repos."""
    src = card.source
    if src.path:
        root = Path(src.path)
        folders = (root / "vision", root / "text")
        if not all((f / "config.json").is_file() for f in folders):
            raise CheckpointError(f"{root} is not a CLIP-fa folder: it needs vision/ (CLIPVisionModel) and text/ "
                                  "(RobertaModel) save_pretrained folders")
        return folders
    text_repo = card.config.get("text_repo")
    if not (src.hf_repo and text_repo):
        raise CheckpointError(f"{card.alias} names no vision and text repos (source.hf_repo, config.text_repo)")
    return hub_model_folder(src.hf_repo, cache_dir), hub_model_folder(text_repo, cache_dir)


def context_length_of(text_model, tokenizer) -> int:
    """RoBERTa's positions start after the pad id: 514 positions give 512 tokens."""
    cfg = text_model.config
    positions = cfg.max_position_embeddings - (cfg.pad_token_id or 0) - 1
    max_len = getattr(tokenizer, "model_max_length", None)
    return int(min(positions, max_len)) if max_len and max_len < 100_000 else int(positions)


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, **kwargs: Any) -> ClipFaComparator:
    if kwargs:
        raise ClipzooError(f"unknown option(s) for a CLIP-fa model: {', '.join(sorted(kwargs))}")
    dtype = resolve_dtype(precision)
    vision_dir, text_dir = tower_folders(card, cache_dir)
    vision = load_hf_model(vision_dir, "CLIPVisionModel", dtype)
    text = load_hf_model(text_dir, "RobertaModel", dtype)
    if vision.config.hidden_size != text.config.hidden_size:
        raise ArchitectureMismatchError(f"{card.alias}: the image tower gives {vision.config.hidden_size}-d "
                                        f"features and the text tower {text.config.hidden_size}-d; they must match")
    image_processor = image_processor_of(vision_dir)
    tokenizer = load_tokenizer(text_dir)
    towers = ClipFaTowers(vision, text).to(device).eval()
    return ClipFaComparator(card, towers, tokenizer=tokenizer, image_processor=image_processor,
                            context_length=context_length_of(text, tokenizer))


def image_processor_of(vision_dir: Path):
    """The image processor of the vision folder (CLIP's, as the publisher's README loads it)."""
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(str(vision_dir))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{vision_dir} has no usable image processor ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None


def meta_model(card: ModelCard, cache_dir=None) -> ClipFaTowers | None:
    """Both towers from their config.json files, on the meta device (``clipzoo info``)."""
    import transformers

    src = card.source
    if src.path:
        configs = [Path(src.path) / "vision" / "config.json", Path(src.path) / "text" / "config.json"]
    elif src.hf_repo and card.config.get("text_repo"):
        configs = [cached_hub_file(src.hf_repo, "config.json", cache_dir),
                   cached_hub_file(card.config["text_repo"], "config.json", cache_dir)]
    else:
        return None
    vision_cfg = transformers.CLIPVisionConfig(**_vision_config(read_json(configs[0])))
    text_cfg = transformers.RobertaConfig(**read_json(configs[1]))
    with torch.device("meta"):
        return ClipFaTowers(transformers.CLIPVisionModel(vision_cfg), transformers.RobertaModel(text_cfg))


def _vision_config(raw: dict) -> dict:
    return raw.get("vision_config", raw) if raw.get("model_type") == "clip" else raw

