"""Backend ``hf_video``: transformers' video–text models, one mechanism over the table of
:mod:`clipzoo.backends.hf_video_families` — X-CLIP, Perception Encoder video (``pe_video``), VideoPrism, and the
video–text pair of Perception Encoder audio-visual (``pe_audio_video``, Meta's ``facebook/pe-av-*``).

A video (a file or a list of frames) is sampled to exactly the number of frames the model was trained on
(``config.vision_config.num_frames``, or the video processor's ``num_frames``), uniformly as
:func:`clipzoo.video.uniform_indices` does, then preprocessed by the checkpoint's own processor (X-CLIP: its
image processor on each frame; PE video and VideoPrism: their video processor, with its own frame sampling
off) and encoded by the video tower. PE audio-visual samples as its processor does: its ``-16-frame``
checkpoints take ``num_frames`` frames at ``int(i * (T - 1) / (num_frames - 1))`` (the card's
``config.num_frames``, else the video processor's); the others take every frame, at most
:data:`~clipzoo.constants.MAX_ALL_FRAMES` (more are sampled the same way to that many).
Text goes through the checkpoint's tokenizer. These models have no image
modality: their cards say ``modalities = ["video", "text"]``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cards import TEXT, ModelCard
from ..comparator import Comparator, resolve_dtype
from ..constants import MAX_ALL_FRAMES
from ..errors import CheckpointError, ClipzooError, UnsupportedError
from ..modalities import VIDEO
from ..models.tokenize import tokenize_with
from ..pixels import processor_preprocess
from ..video import load_video, probe, read_frames, video_items
from .hf_video_families import VIDEO_TABLE, VideoFamilySpec
from .transformers import (
    attention_mask,
    features_of,
    from_folder,
    hub_meta_model,
    load_hf_model,
    load_keywords,
    pretrained_config,
    text_context,
)


def _no_image_transform(image) -> torch.Tensor:
    raise UnsupportedError("a video model has no image transform; pass videos (encode_video) instead")


class VideoComparator(Comparator):
    """A transformers video–text model: ``encode_video`` and ``encode_text``."""

    def __init__(self, card: ModelCard, model, *, spec: VideoFamilySpec, tokenizer, processor, num_frames: int | None,
                 embed_dim: int, context_length: int, frame_size):
        super().__init__(card, model, transform=_no_image_transform, embed_dim=embed_dim, image_size=frame_size,
                         context_length=context_length, modalities=(VIDEO, TEXT))
        self.spec = spec
        self.hf_tokenizer = tokenizer
        self.processor = processor
        self.num_frames = int(num_frames) if num_frames else None  # None: every frame (PE-AV's all-frames ones)
        self.probability = "sigmoid" if spec.logit == "pe" else "softmax"

    # ------------------------------------------------------------ video
    def video_pixels(self, clips: list[list]) -> dict[str, torch.Tensor]:
        """Frame lists (each exactly :attr:`num_frames` RGB PIL frames) -> the model's video inputs."""
        if self.spec.hf_class == "XCLIPModel":
            out = self.processor.image_processor(images=clips, return_tensors="pt")
            return {"pixel_values": out["pixel_values"]}
        arrays = [np.stack([np.asarray(f) for f in clip]) for clip in clips]
        out = self.processor.video_processor(videos=arrays, do_sample_frames=False, return_tensors="pt")
        return {k: v for k, v in out.items() if k in ("pixel_values_videos", "padding_mask_videos")}

    @property
    def pe_tower(self):
        """PE's video–text model: the model itself (PE video) or PE audio-visual's ``video_model``."""
        return self.model.video_model if self.spec.features == "pe_av" else self.model

    def encode_video_pixels(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in inputs.items()}
        if self.spec.pe_heads:
            pooled = self.pe_tower.video_encoder(**inputs).pooler_output
            return self.pe_tower.video_head(pooled)
        feats = features_of(self.model.get_video_features(**inputs))
        return feats.reshape(feats.shape[0], -1)  # VideoPrism pools to (N, 1, D); its forward reshapes the same way

    def encode_video(self, videos: Any, normalize: bool = True, batch_size: int = 8,
                     num_frames: int | None = None) -> torch.Tensor:
        """Videos (paths, frame lists, (T, H, W, C) arrays) -> features (N, D) from the video tower; every video
        is sampled uniformly to the model's own number of frames (``num_frames``, if given, must equal it). A model
        that takes every frame (PE-AV's all-frames checkpoints) takes ``num_frames`` evenly spaced ones if given."""
        if num_frames is not None and self.num_frames is not None and int(num_frames) != self.num_frames:
            raise ClipzooError(f"{self.card.alias} takes exactly {self.num_frames} frames per video, not {num_frames}; "
                               "leave num_frames unset")
        frames = int(num_frames) if num_frames is not None else self.num_frames
        items = video_items(videos)
        out = []
        with torch.no_grad():
            for start in range(0, len(items), max(1, int(batch_size))):
                clips = [self.clip(item, frames, start + i) for i, item in enumerate(items[start:start + batch_size])]
                out.append(self._finish(self.encode_video_pixels(self.video_pixels(clips)), normalize))
        return torch.cat(out)

    def clip(self, item: Any, frames: int | None, index: int) -> list:
        """One video item -> the frames the model is given: PE-AV samples as its own processor does."""
        if self.spec.features == "pe_av":
            return pe_av_clip(item, frames, index)
        return load_video(item, frames, exact=True, index=index)

    # ------------------------------------------------------------ text
    def tokenize(self, texts: "str | list[str]", truncate: bool = False) -> torch.Tensor:
        return tokenize_with(self.hf_tokenizer, texts, self.context_length, truncate)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long().to(self.device)
        mask = attention_mask(tokens, self.spec.mask, self.hf_tokenizer.pad_token_id, self.hf_tokenizer.eos_token_id)
        if self.spec.pe_heads:  # PE-AV: its shared text tower, the video–text head
            out = self.model.text_model(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
            return self.pe_tower.text_video_head(out.hidden_states[-1][:, 0])
        return features_of(self.model.get_text_features(input_ids=tokens, attention_mask=mask))

    def logit_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.spec.logit == "unit":
            return torch.ones((), device=self.device), None
        if self.spec.logit == "pe":
            tower = self.pe_tower
            return tower.text_video_logit_scale.reshape(()), tower.text_video_logit_bias.reshape(())
        return self.model.logit_scale.exp().reshape(()), None


def pe_frame_indices(total: int, n: int) -> list[int]:
    """PE's processor sampling: ``n`` frames evenly spaced over ``[0, total - 1]``, both ends included."""
    if n < 1:
        raise ClipzooError(f"cannot sample {n} frames; pass num_frames of 1 or more")
    return [0] * n if n == 1 or total <= 1 else [int(i * (total - 1) / (n - 1)) for i in range(n)]


def pe_av_clip(item: Any, frames: int | None, index: int) -> list:
    """One video item -> PE-AV's frames: ``frames`` at :func:`pe_frame_indices`, or (None) every frame, at most
    :data:`MAX_ALL_FRAMES` (a longer video is sampled to that many the same way)."""
    if isinstance(item, (str, os.PathLike)):
        total = probe(item).frames
        every = None
    else:
        every = load_video(item, len(item), exact=True, index=index)  # every frame, in order, as RGB PIL images
        total = len(every)
    if frames is None and total <= MAX_ALL_FRAMES:
        indices = list(range(total))
    else:
        indices = pe_frame_indices(total, MAX_ALL_FRAMES if frames is None else frames)
    return [every[i] for i in indices] if every is not None else read_frames(item, indices)


def pick_video_spec(config: dict, hf_class: str | None, folder) -> VideoFamilySpec:
    """The family row from ``hf_class`` when given, else from config.json ``model_type``."""
    return VIDEO_TABLE.pick(config, hf_class, folder)


def load_processor(folder: Path):
    return from_folder("AutoProcessor", folder, "processor")


def frames_of(model_config, processor) -> int:
    """How many frames the video tower takes: its config's ``num_frames``, else the video processor's."""
    for cfg in (getattr(model_config, "vision_config", None), model_config):
        n = getattr(cfg, "num_frames", None)
        if n:
            return int(n)
    n = getattr(getattr(processor, "video_processor", None), "num_frames", None)
    if not n:
        raise CheckpointError("cannot tell how many frames this video model takes (no num_frames in config.json "
                              "or the video processor)")
    return int(n)


def pe_av_frames_of(card: ModelCard, processor) -> "int | None":
    """PE-AV's frames per video: the card's ``config.num_frames`` (``16`` for the ``-16-frame`` checkpoints,
    ``"all"`` for the others), else the video processor's ``num_frames``; None means every frame."""
    n = card.config.get("num_frames")
    if n is None:
        n = getattr(getattr(processor, "video_processor", None), "num_frames", None)
    return None if n in (None, "all", 0) else int(n)


def frame_size_of(processor) -> "int | None":
    """The side of the frames the processor hands the model (its centre crop where it crops, else its resize)."""
    proc = getattr(processor, "video_processor", None) or getattr(processor, "image_processor", None)
    size = processor_preprocess(proc).get("size") if proc is not None else None
    return int(size[0]) if size else None


def context_of(model, tokenizer, card: ModelCard, override: int | None) -> int:
    """Context length as for the image–text families (:func:`~clipzoo.backends.transformers.text_context`)."""
    return text_context(model.config, tokenizer, card, override, None)


def embed_dim_of(model, spec: VideoFamilySpec) -> int:
    cfg = model.config
    if spec.pe_heads:
        return int(cfg.text_config.hidden_size)
    dim = getattr(cfg, "projection_dim", None)
    return int(dim or cfg.text_config.hidden_size)


def load(card: ModelCard, *, device: str = "cpu", precision: str = "fp32", cache_dir=None,
         trust_pickle: bool = False, **kwargs: Any) -> VideoComparator:
    """Load an X-CLIP, PE video or VideoPrism save_pretrained folder (local or from the hub cache).

    Keywords: ``hf_class`` (default from config.json ``model_type``), ``context_length``. ``trust_pickle`` is
    unused: weights are safetensors, or ``.bin`` read by transformers with ``weights_only=True``.
    """
    hf_class, context_override = load_keywords(card, kwargs, "hf_video")
    folder, config = pretrained_config(card, cache_dir)
    spec = pick_video_spec(config, hf_class, folder)
    model = load_hf_model(folder, spec.hf_class, resolve_dtype(precision)).to(device)
    processor = load_processor(folder)
    tokenizer = processor.tokenizer
    return VideoComparator(card, model, spec=spec, tokenizer=tokenizer, processor=processor,
                           num_frames=pe_av_frames_of(card, processor) if spec.features == "pe_av" else
                           frames_of(model.config, processor), embed_dim=embed_dim_of(model, spec),
                           context_length=context_of(model, tokenizer, card, context_override),
                           frame_size=frame_size_of(processor))


def meta_model(card: ModelCard, cache_dir=None):
    """The card's model on the meta device from its cached config.json, downloading nothing (``clipzoo info``);
    None for a local folder (summarised as any save_pretrained folder)."""
    src = card.source
    if src.path or not src.hf_repo:
        return None
    return hub_meta_model(card, cache_dir, pick_video_spec)
