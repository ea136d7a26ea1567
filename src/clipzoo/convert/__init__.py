"""Checkpoint conversion between OpenAI, open_clip, HF transformers, safetensors and ONNX, and the parity
report that proves a conversion (see ``docs/conversion.md``)."""
from __future__ import annotations

from .targets import TARGETS, OpenClipForm, convert, open_clip_form

__all__ = ["TARGETS", "OpenClipForm", "convert", "open_clip_form"]
