"""Small PNG folders for the index tests: noise images split over partitions ``a`` and ``b``."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def png(seed: int) -> bytes:
    """A 16×16 noise PNG, the same bytes for the same seed."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def photo_folder(root: Path, n: int) -> Path:
    """``root/a/000.png``, ``root/b/001.png``, … (``n`` images, even seeds in ``a``, odd in ``b``)."""
    for i in range(n):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        (root / "ab"[i % 2] / f"{i:03d}.png").write_bytes(png(i))
    return root
