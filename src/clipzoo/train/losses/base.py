"""The common interface of clipzoo's training objectives.

Every objective is an :class:`Objective` (an ``nn.Module``) called as::

    out = loss(image_features, text_features, *, logit_scale=None, logit_bias=None,
               teacher_image_features=None, teacher_text_features=None)

and returns a ``dict[str, Tensor]`` with a scalar ``"loss"`` (what to back-propagate) plus named components
(for logging; they are not re-weighted). Each class's docstring says which arguments it reads; ``Objective.uses``
lists them. Half-precision inputs are cast to fp32 and the computation runs with autocast disabled, so every
reduction is fp32 (fp64 inputs stay fp64).

Conventions:

* ``logit_scale`` is the *multiplier* (``exp`` of the learnable log-scale, what open_clip models return).
* For distillation objectives the "student" is ``image_features`` (and/or ``text_features``) and the target is
  ``teacher_image_features`` (and/or ``teacher_text_features``) from a frozen teacher; teacher features are
  detached.
* Stateful objectives (memory queues, centers, prototypes) keep their state in registered buffers so it is saved
  in ``state_dict`` checkpoints, and update it consistently on every rank under ``torch.distributed``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import ClipzooError

__all__ = ["Objective", "LossInputError", "FeatureQueue", "cast_fp32", "off_diagonal"]

Tensor = torch.Tensor


class LossInputError(ClipzooError, ValueError):
    """Inputs an objective cannot use: a missing argument it needs, mismatched shapes."""


def cast_fp32(x: Tensor | None) -> Tensor | None:
    if x is None:
        return None
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class Objective(nn.Module):
    """Base class: fp32 casting, autocast off, argument checks. Subclasses implement :meth:`compute`."""

    #: names of the forward arguments this objective reads
    uses: tuple[str, ...] = ()
    #: True for objectives over prototype scores (DINO-style heads): the trainer then gives them a DINO
    #: head's raw output instead of the L2-normalised embedding
    head_scores: bool = False

    def forward(self, image_features: Tensor | None = None, text_features: Tensor | None = None, *,
                logit_scale=None, logit_bias=None, teacher_image_features: Tensor | None = None,
                teacher_text_features: Tensor | None = None) -> dict[str, Tensor]:
        args = dict(image_features=image_features, text_features=text_features, logit_scale=logit_scale,
                    logit_bias=logit_bias, teacher_image_features=teacher_image_features,
                    teacher_text_features=teacher_text_features)
        for k, v in args.items():
            if isinstance(v, Tensor):
                args[k] = cast_fp32(v)
            elif v is not None and k in ("logit_scale", "logit_bias"):
                args[k] = torch.as_tensor(float(v))
        for k in ("teacher_image_features", "teacher_text_features"):
            if args[k] is not None:
                args[k] = args[k].detach()
        ref = next((v for v in args.values() if isinstance(v, Tensor)), None)
        device_type = ref.device.type if ref is not None else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return self.compute(**args)

    def compute(self, **kwargs) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _need(self, name: str, value):
        if value is None:
            raise LossInputError(f"{type(self).__name__} needs `{name}`; it reads {', '.join(self.uses)}.")
        return value

    def _pair(self, modality: str, image, text, teacher_image, teacher_text) -> tuple[Tensor, Tensor]:
        """(student, teacher) features of one modality for single-pair distillation objectives."""
        if modality == "image":
            return self._need("image_features", image), self._need("teacher_image_features", teacher_image)
        if modality == "text":
            return self._need("text_features", text), self._need("teacher_text_features", teacher_text)
        raise LossInputError(f"modality must be 'image' or 'text', got {modality!r}")

    def _pairs(self, image, text, teacher_image, teacher_text, *, cross_modal: bool = False):
        """All available (name, student, target) pairs for stateless distillation objectives.

        (image_features, teacher_image_features) and (text_features, teacher_text_features), whichever are given;
        with ``cross_modal=True`` and no teacher features at all, the pair (image_features, text_features).
        """
        pairs = []
        if image is not None and teacher_image is not None:
            pairs.append(("image", image, teacher_image))
        if text is not None and teacher_text is not None:
            pairs.append(("text", text, teacher_text))
        if not pairs and cross_modal and image is not None and text is not None:
            pairs.append(("image_text", image, text))
        if not pairs:
            what = "a (features, teacher features) pair" + (" or image and text features" if cross_modal else "")
            raise LossInputError(f"{type(self).__name__} needs {what}; it reads {', '.join(self.uses)}.")
        return pairs

    @staticmethod
    def _combine(per_pair: list[tuple[str, dict[str, Tensor]]]) -> dict[str, Tensor]:
        """Average pair results: ``loss`` and every component are means over pairs; ``loss_<pair>`` per pair."""
        out: dict[str, Tensor] = {}
        keys = per_pair[0][1].keys()
        for k in keys:
            out[k] = sum(d[k] for _, d in per_pair) / len(per_pair)
        if len(per_pair) > 1:
            for name, d in per_pair:
                out[f"loss_{name}"] = d["loss"]
        return out


class FeatureQueue(nn.Module):
    """A FIFO memory queue of feature rows in a registered buffer ``queue`` (size × dim) with pointer ``ptr``.

    Initialised with L2-normalised Gaussian rows from a seeded generator, so every rank starts identical.
    :meth:`enqueue` writes rows starting at ``ptr`` and wraps around (``ptr = (ptr + n) % size``); a batch longer
    than the queue keeps only its last ``size`` rows.
    """

    def __init__(self, size: int, dim: int, *, seed: int = 0, normalize: bool = True):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise LossInputError(f"queue size and dim must be positive, got size={size}, dim={dim}")
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(size, dim, generator=g)
        if normalize:
            q = nn.functional.normalize(q, dim=1)
        self.register_buffer("queue", q)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    @torch.no_grad()
    def enqueue(self, rows: Tensor) -> None:
        rows = rows.detach().to(self.queue.dtype)
        n = rows.shape[0]
        if n >= self.size:
            rows, n = rows[-self.size:], self.size
            # the oldest slot after this write is ptr + n (mod size); keep FIFO order starting at ptr
        p = int(self.ptr)
        idx = (torch.arange(n, device=self.queue.device) + p) % self.size
        self.queue[idx] = rows
        self.ptr.fill_((p + n) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.queue.shape[1]}"


def clamp_scale(log_scale: Tensor, max_scale: float = 100.0) -> Tensor:
    return log_scale.clamp(max=math.log(max_scale)).exp()
