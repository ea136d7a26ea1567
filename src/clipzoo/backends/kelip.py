"""KELIP backend (navervision/KELIP): NAVER's Korean–English bilingual CLIP, ViT-B/32.

The publisher's files are a Hugging Face folder (hub repo ``navervision/KELIP``, revision ``vit-b-32``):
``config.json`` (its ``KelipConfig``), the weights of ``KelipModel`` — OpenAI CLIP's layout under ``model.`` —
and its tokenizer files, read with ``AutoTokenizer``. Weights are read safely (safetensors, or a pickle with
``weights_only``); the model is OpenAI's CLIP architecture, built from the tensors' shapes.

KELIP's tokenizer (``Tokenizer.encode`` in its ``model_loader.py``): lower-case, ``[bos] + encode(text) + [eos]``,
padded to 77 with ``[PAD]``, pooled at the highest id (the end-of-text token). Its preprocessing is OpenAI's
(bicubic resize of the short side, centre crop, OpenAI mean/std).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..cards import ModelCard
from ..checkpoints import read_state_dict
from ..comparator import resolve_dtype
from ..constants import DEFAULT_CONTEXT_LENGTH
from ..download import hub_snapshot
from ..errors import CheckpointError, ClipzooError
from ..inputs import text_items, too_long_error
from .open_clip import OpenClipComparator, build, load_weights
from .open_clip_plan import Plan, openai_config
from .source_files import cached_hub_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"]


class KelipTokenizer:
    """KELIP's ``Tokenizer.encode`` over its Hugging Face tokenizer (picklable; ``__call__`` as open_clip's)."""

    def __init__(self, hf_tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.tokenizer = hf_tokenizer
        self.context_length = int(context_length)
        self.pad_id = hf_tokenizer.convert_tokens_to_ids("[PAD]")
        self.sot_id = hf_tokenizer.convert_tokens_to_ids(hf_tokenizer.bos_token)
        self.eot_id = hf_tokenizer.convert_tokens_to_ids(hf_tokenizer.eos_token)

    def ids(self, text: str) -> list[int]:
        """A text's ids as KELIP writes them (lower-cased; the inner ``encode`` adds what its tokenizer adds)."""
        return [self.sot_id, *self.tokenizer.encode(text.lower(), max_length=10000, truncation=True), self.eot_id]

    def __call__(self, texts, truncate: bool = True) -> torch.Tensor:
        texts = text_items(texts)
        n = self.context_length
        out = torch.full((len(texts), n), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.ids(text)
            if len(ids) > n:
                if not truncate:
                    raise too_long_error(text, len(ids), n)
                ids = ids[:n - 1] + [self.eot_id]  # KELIP keeps the first n-2 inner tokens, then end-of-text
            out[i, :len(ids)] = torch.tensor(ids)
        return out


class KelipComparator(OpenClipComparator):
    """OpenAI's CLIP architecture (open_clip's module) with KELIP's tokenizer."""

    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        return self.tokenizer(texts, truncate=truncate)


def kelip_folder(card: ModelCard, cache_dir=None) -> Path:
    src = card.source
    if src.path:
        path = Path(src.path)
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a folder; a KELIP model is a folder with config.json, "
                                  "the weights and the tokenizer files (as navervision/KELIP on the hub)")
        return path
    if src.hf_repo:
        return hub_snapshot(src.hf_repo, cache_dir, revision=card.config.get("revision"), allow_patterns=HUB_PATTERNS)
    raise CheckpointError(f"{card.alias} has no folder or hub repo to load from ({src.describe()})")


def read_weights(folder: Path) -> tuple[dict, str]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            sd, _ = read_state_dict(folder / name)  # unwraps the KelipModel's ``model.`` prefix
            return sd, str(folder / name)
    raise CheckpointError(f"{folder} holds no KELIP weights (looked for {', '.join(WEIGHT_FILES)})")


def load_tokenizer(folder: Path, context_length: int) -> KelipTokenizer:
    from transformers import AutoTokenizer

    try:
        return KelipTokenizer(AutoTokenizer.from_pretrained(str(folder)), context_length)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read KELIP's tokenizer files in {folder} ({str(exc).splitlines()[0]})") from None


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, **kwargs: Any) -> KelipComparator:
    import open_clip

    if kwargs:
        raise ClipzooError(f"unknown option(s) for a KELIP model: {', '.join(sorted(kwargs))}")
    dtype = resolve_dtype(precision)
    folder = kelip_folder(card, cache_dir)
    sd, source = read_weights(folder)
    cfg = openai_config(sd, source)
    model = build(Plan(cfg, {}, sd, source), "fp32")
    load_weights(model, sd, source)
    model = model.to(device=device, dtype=dtype).eval()
    size = cfg["vision_cfg"]["image_size"]
    preprocess = {"size": size, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    transform = open_clip.image_transform(size, is_train=False, mean=preprocess["mean"], std=preprocess["std"],
                                          interpolation="bicubic", resize_mode="shortest")
    tokenizer = load_tokenizer(folder, cfg["text_cfg"]["context_length"])
    return KelipComparator(card, model, transform=transform, tokenizer=tokenizer, precision=precision,
                           model_name=None, model_config=cfg, preprocess_config=preprocess)


def meta_model(card: ModelCard, cache_dir=None):
    """KELIP's architecture from its ``config.json`` (KelipConfig), on the meta device, for ``clipzoo info``."""
    from open_clip import CLIP

    src = card.source
    if src.path:
        config_path = Path(src.path) / "config.json"
    elif src.hf_repo:
        config_path = cached_hub_file(src.hf_repo, "config.json", cache_dir, revision=card.config.get("revision"))
    else:
        return None
    try:
        c = json.loads(Path(config_path).read_text(encoding="utf-8"))
        vision = {"layers": c["vision_layers"], "width": c["vision_width"], "patch_size": c["vision_patch_size"],
                  "image_size": c["image_resolution"]}
        text = {"context_length": c["context_length"], "vocab_size": c["vocab_size"], "width": c["transformer_width"],
                "heads": c["transformer_heads"], "layers": c["transformer_layers"]}
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{config_path} is not a KELIP config.json ({exc})") from None
    with torch.device("meta"):
        return CLIP(c["embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True)

