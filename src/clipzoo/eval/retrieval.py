"""Image–text retrieval: recall@k in both directions, several captions per image."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .metrics import EvalInputError, retrieval_metrics, retrieval_metrics_from_scores

__all__ = ["retrieval_metrics", "retrieval_metrics_from_scores", "flatten_captions", "retrieval_evaluate"]


def flatten_captions(captions: Sequence[str | Sequence[str]]) -> tuple[list[str], list[int]]:
    """Per-image captions -> (all texts, image index of each text)."""
    texts, index = [], []
    for i, caps in enumerate(captions):
        caps = [caps] if isinstance(caps, str) else list(caps)
        texts.extend(caps)
        index.extend([i] * len(caps))
    return texts, index


def retrieval_evaluate(model, images: Any, captions: Sequence[str | Sequence[str]],
                       recall_k: Sequence[int] = (1, 5, 10), batch_size: int = 64) -> dict[str, float]:
    """Encode images and their captions (one string or several per image) and compute recall@k."""
    if len(captions) == 0:
        raise EvalInputError("no images/captions to evaluate: the data set is empty")
    texts, index = flatten_captions(captions)
    if not texts:
        raise EvalInputError("no captions given")
    img = model.encode_image(images, batch_size=batch_size)
    if img.shape[0] != len(captions):
        raise EvalInputError(f"{img.shape[0]} images but captions for {len(captions)}")
    txt = model.encode_text(texts, truncate=True)
    return retrieval_metrics(img, txt, torch.tensor(index), recall_k)
