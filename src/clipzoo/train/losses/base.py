"""The common interface of clipzoo's training objectives.

Every objective is an :class:`Objective` (an ``nn.Module``) called as::

    out = loss(image_features, text_features, *, logit_scale=None, logit_bias=None,
               teacher_image_features=None, teacher_text_features=None)

and returns a ``dict[str, Tensor]`` with a scalar ``"loss"`` (what to back-propagate) plus named components
(for logging; they are not re-weighted). Each class's docstring says which arguments it reads; ``Objective.uses``
lists them. Half-precision inputs are cast to fp32 and the computation runs with autocast disabled, so every
reduction is fp32 (fp64 inputs stay fp64); features of mixed precision (an fp64 teacher, an fp32 student) are
computed in the wider one. A feature batch with no rows is a :class:`LossInputError` (its mean was a silent NaN).

Conventions:

* ``logit_scale`` is the *multiplier* (``exp`` of the learnable log-scale, what open_clip models return).
* For distillation objectives the "student" is ``image_features`` (and/or ``text_features``) and the target is
  ``teacher_image_features`` (and/or ``teacher_text_features``) from a frozen teacher; teacher features are
  detached.
* Stateful objectives (memory queues, centers, prototypes) keep their state in registered buffers so it is saved
  in ``state_dict`` checkpoints, and update it consistently on every rank under ``torch.distributed``. A call
  updates that state only while ``update_state`` is true: gradient accumulation clears it for every micro-batch
  but the last, so the state moves once per optimisation step, from the whole batch.
* Options are checked when the objective is built: a temperature, scale or width must be a positive finite
  number, a weight 0 or more, a momentum in [0, 1] (a :class:`LossInputError` naming the option).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

from ...errors import ClipzooError
from ...inputs import real_value

__all__ = ["Objective", "LossInputError", "FeatureQueue", "cast_fp32", "off_diagonal", "check_positive",
           "check_non_negative", "check_count", "check_fraction", "check_modality"]

FEATURES = ("image_features", "text_features", "teacher_image_features", "teacher_text_features")

Tensor = torch.Tensor


class LossInputError(ClipzooError, ValueError):
    """Inputs an objective cannot use: a missing argument it needs, mismatched shapes."""


def cast_fp32(x: Tensor | None) -> Tensor | None:
    if x is None:
        return None
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _real(value) -> bool:
    """A finite real number (:func:`clipzoo.inputs.real_value`: numpy's ``np.float32(0.1)`` from a sweep too), not
    a bool; ``10**400`` is not."""
    number = real_value(value)
    try:
        return number is not None and math.isfinite(number)
    except OverflowError:
        return False


def check_positive(owner: str, **values) -> None:
    """Each value a finite number above 0 (temperatures, scales, eps): 0 divided by zero or gave a NaN loss, and a
    negative temperature silently turned the softmax upside down."""
    for name, value in values.items():
        if not _real(value) or value <= 0:
            raise LossInputError(f"{owner}: {name} must be a positive number, got {value!r}")


def check_non_negative(owner: str, **values) -> None:
    """Each value a finite number of 0 or more (loss weights, coefficients)."""
    for name, value in values.items():
        if not _real(value) or value < 0:
            raise LossInputError(f"{owner}: {name} must be a number of 0 or more, got {value!r}")


def check_count(owner: str, **values) -> None:
    """Each value a whole number of at least 1 (widths, queue sizes, prototypes)."""
    for name, value in values.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or value < 1:
            raise LossInputError(f"{owner}: {name} must be a whole number of at least 1, got {value!r}")


def check_fraction(owner: str, **values) -> None:
    """Each value a number in [0, 1] (EMA momenta: 5 made the centre grow without bound)."""
    for name, value in values.items():
        if not _real(value) or not 0 <= value <= 1:
            raise LossInputError(f"{owner}: {name} must be a number between 0 and 1, got {value!r}")


def check_modality(owner: str, modality) -> None:
    if modality not in ("image", "text"):
        raise LossInputError(f"{owner}: modality must be 'image' or 'text', got {modality!r}")


def _common_dtype(args: dict) -> "torch.dtype | None":
    """The widest floating dtype of the feature arguments (an fp64 teacher with an fp32 student: fp64)."""
    dtypes = [args[k].dtype for k in FEATURES if isinstance(args[k], Tensor) and args[k].is_floating_point()]
    dtype = dtypes[0] if dtypes else None
    for d in dtypes[1:]:
        dtype = torch.promote_types(dtype, d)
    return dtype


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
    #: whether a call may update the objective's state (queues, centres); gradient accumulation sets it for the
    #: last micro-batch only, so every micro-batch reads the state the unaccumulated step reads
    update_state: bool = True

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
        dtype = _common_dtype(args)
        for k in FEATURES:
            if isinstance(args[k], Tensor):
                if args[k].ndim == 0 or args[k].shape[0] == 0:
                    raise LossInputError(f"{type(self).__name__}: {k} holds no rows (shape {tuple(args[k].shape)}); "
                                         "give it a batch of at least one feature vector")
                if args[k].is_floating_point():
                    args[k] = args[k].to(dtype)
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

    def _paired(self, image: Tensor, text: Tensor) -> None:
        """Contrastive pairs line up one to one: as many image as text rows, of one width (else an IndexError or a
        matmul error from deep inside)."""
        if image.ndim != 2 or image.shape != text.shape:
            raise LossInputError(f"{type(self).__name__} pairs image and text features one to one: they need the "
                                 f"same (batch, width) shape, got image {tuple(image.shape)} and text "
                                 f"{tuple(text.shape)}")

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
