"""What the drop-in's modules share: TensorFlow-shaped outputs and open_clip_jax's ValueError."""
from __future__ import annotations

import numpy as np

from ....errors import ClipzooError


class Tensor(np.ndarray):
    """A numpy array that also answers ``_numpy()`` / ``numpy()`` as the ``tf.Tensor`` open_clip_jax returns
    from its transforms and tokenizer does, so code written for it (``tokenize(texts)._numpy()``) runs as is.
    Anything else is numpy's."""

    def _numpy(self) -> np.ndarray:
        return np.asarray(self)

    def numpy(self) -> np.ndarray:
        return np.asarray(self)


def as_tensor(array) -> Tensor:
    return np.asarray(array).view(Tensor)


class OpenClipJaxValueError(ClipzooError, ValueError):
    """open_clip_jax raises ValueError (with these very messages); this is both that and clipzoo's error."""
