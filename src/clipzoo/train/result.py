"""What a training run returns, and how it fails."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClipzooError

__all__ = ["TrainResult", "TrainingError"]


class TrainingError(ClipzooError):
    """Training cannot go on: a non-finite loss, a checkpoint that does not fit."""


@dataclass
class TrainResult:
    output: "Path | str"  # a local folder, or the fsspec URL of a remote one
    model_dir: "Path | str"
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: int = 0
