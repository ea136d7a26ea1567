"""Distillation: a frozen teacher's features for the student's batch, fed to the objective.

``TrainConfig.teacher`` is anything ``clipzoo.load`` takes (a registry spec, a hub id, a checkpoint or a
trained folder). The teacher runs in eval mode under ``no_grad`` with its parameters frozen; it is never
in the optimizer or the checkpoints.

The teacher may see images at another size and normalisation, and may tokenise differently:

- pixels: the student's batch is un-normalised (student mean / std), resized to the teacher's size (bicubic,
  antialiased) and normalised with the teacher's mean / std — the same images, no second decode;
- texts: the data re-tokenises each caption with the teacher's tokenizer (``MemoryData`` / ``StreamData``
  carry teacher tokens as a third batch element once :func:`attach_teacher` was called).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..api import load
from ..comparator import Comparator
from ..constants import OPENAI_MEAN, OPENAI_STD
from ..models.spec import ConfigError
from .checks import NEEDS_TEACHER, check_teacher, loss_key
from .losses import LOSSES

__all__ = ["Teacher", "NEEDS_TEACHER", "check_teacher", "load_teacher", "attach_teacher", "teacher_targets",
           "fill_loss_options", "student_dim", "SAME_WIDTH"]


#: objectives that pair each student feature with its teacher's, dimension by dimension (or in one space: one queue,
#: one set of prototypes): with a teacher of another width they failed at step 1, some with a raw size mismatch
SAME_WIDTH = ("simreg", "simreg-l1", "simreg-smoothl1", "compress-1q", "seed", "dino", "protocpc", "vicreg",
              "barlow-twins")


def _normalize_of(comparator) -> "tuple[Sequence[float], Sequence[float]]":
    """The mean / std the teacher's preprocessing normalises with."""
    cfg = getattr(comparator, "preprocess_config", None)
    if isinstance(cfg, dict) and cfg.get("mean") is not None:
        return cfg["mean"], cfg["std"]
    transform = getattr(comparator, "transform", None)
    for t in getattr(transform, "transforms", []) or []:
        if type(t).__name__ == "Normalize":
            return t.mean, t.std
    processor = getattr(transform, "processor", None) or getattr(comparator, "image_processor", None)
    if processor is not None and getattr(processor, "image_mean", None) is not None:
        return processor.image_mean, processor.image_std
    return OPENAI_MEAN, OPENAI_STD


class Teacher:
    """A frozen Comparator that gives raw image / text features for a student batch."""

    def __init__(self, comparator, student_mean: Sequence[float], student_std: Sequence[float],
                 device: "torch.device | str" = "cpu", modalities: Sequence[str] = ("image", "text")):
        self.comparator = comparator.to(device).eval()
        for p in self.comparator.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.modalities = tuple(m for m in modalities if m in comparator.modalities)
        mean, std = _normalize_of(comparator)
        self.s_mean = torch.tensor(list(student_mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.s_std = torch.tensor(list(student_std), dtype=torch.float32).view(1, 3, 1, 1)
        self.t_mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.t_std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
        size = comparator.image_size
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)

    @property
    def embed_dim(self) -> int:
        return int(self.comparator.embed_dim)

    def tokenize(self, texts: "list[str]") -> torch.Tensor:
        return self.comparator.tokenize(list(texts), truncate=True)

    def pixels(self, student_pixels: torch.Tensor) -> torch.Tensor:
        """Student-preprocessed pixels -> the teacher's input (its size and normalisation)."""
        x = student_pixels.float()
        dev = x.device
        x = x * self.s_std.to(dev) + self.s_mean.to(dev)
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        return (x - self.t_mean.to(dev)) / self.t_std.to(dev)

    @torch.no_grad()
    def features(self, student_pixels: torch.Tensor, teacher_tokens: "torch.Tensor | None"
                 ) -> "tuple[torch.Tensor | None, torch.Tensor | None]":
        c = self.comparator
        img = txt = None
        if "image" in self.modalities:
            img = c.encode_pixels(self.pixels(student_pixels).to(self.device, c.dtype)).float()
        if "text" in self.modalities and teacher_tokens is not None:
            txt = c.encode_tokens(teacher_tokens.to(self.device)).float()
        return img, txt

    def fingerprint(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.comparator.state_dict().items()}


def load_teacher(spec: Any, student_mean, student_std, device) -> Teacher:
    """``spec``: a loaded Comparator, a :class:`Teacher`, or anything ``clipzoo.load`` takes."""
    if isinstance(spec, Teacher):
        return spec
    comparator = spec if isinstance(spec, Comparator) else load(str(spec), device=str(device))
    return Teacher(comparator, student_mean, student_std, device)


def attach_teacher(data, teacher: Teacher) -> None:
    """Make ``data`` yield teacher tokens as the third element of every batch."""
    attach = getattr(data, "set_teacher_tokenizer", None)
    if attach is None:
        raise ConfigError(f"distillation needs the captions re-tokenised for the teacher, but "
                          f"{type(data).__name__} data cannot do that (use MemoryData or StreamData)")
    attach(teacher.tokenize)


def teacher_targets(teacher: "Teacher | None", images: torch.Tensor, batch: tuple) -> dict[str, Any]:
    """The objective's teacher inputs for a batch: the frozen teacher's features of the same images (and of the
    captions tokenised for it, the batch's third element); none without a teacher."""
    if teacher is None:
        return {}
    t_img, t_txt = teacher.features(images, batch[2] if len(batch) > 2 else None)
    return {"teacher_image_features": t_img, "teacher_text_features": t_txt}


def fill_loss_options(name: str, options: dict[str, Any], student_dim: "int | None", teacher_dim: "int | None"
                      ) -> dict[str, Any]:
    """Fill the widths a stateful objective needs (``dim``, ``student_dim``, ``teacher_dim``) when not given; a
    :class:`ConfigError` when the objective needs one width (:data:`SAME_WIDTH`) and the two differ."""
    key = loss_key(name)
    cls = LOSSES.get("infonce" if key in ("clip", "clip-loss") else key)
    if cls is None:
        return options
    if key in SAME_WIDTH and student_dim and teacher_dim and student_dim != teacher_dim:
        raise ConfigError(f"loss {name!r} compares the student's features with the teacher's dimension by dimension, "
                          f"but the student's width (embed_dim) is {student_dim} and the teacher's {teacher_dim}: give "
                          f"the student embed_dim {teacher_dim}, or distil with rkd or compress-2q, which take two "
                          "widths")
    params = inspect.signature(cls.__init__).parameters
    out = dict(options)
    if key == "protoclip":  # prototypes live in the student's space; texts are grouped in the teacher's
        if student_dim:
            out.setdefault("dim", student_dim)
        if teacher_dim:
            out.setdefault("text_group_dim", teacher_dim)
        return out
    if "student_dim" in params and student_dim:
        out.setdefault("student_dim", student_dim)
    if "teacher_dim" in params and teacher_dim:
        out.setdefault("teacher_dim", teacher_dim)
    if "dim" in params and "dim" not in out:
        width = teacher_dim or student_dim
        if width:
            out["dim"] = width
    return out


def student_dim(module: torch.nn.Module, model_cfg: "dict | None") -> "int | None":
    dim = getattr(module, "embed_dim", None)
    if isinstance(dim, int):
        return dim
    if model_cfg and model_cfg.get("embed_dim"):
        return int(model_cfg["embed_dim"])
    return None
