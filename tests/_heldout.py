"""Zero-shot acc1 of models on the embedded model's held-out shapes (the runtimes' fidelity tests)."""
from __future__ import annotations

from pathlib import Path


def heldout_acc1(models, folder: Path, n: int = 385) -> tuple[list[float], Path]:
    """Each model's zero-shot acc1 on ``n`` held-out shapes written into ``folder`` (sized for the first model),
    and that folder."""
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.eval.runner import Evaluator
    from clipzoo.train import recipes

    held = recipes.write_heldout(f"shapes-heldout:{n}", folder, models[0].image_size)
    return [Evaluator(m, workers=0).zeroshot(open_dataset(held)).metrics["acc1"] for m in models], held
