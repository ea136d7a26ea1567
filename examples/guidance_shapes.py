"""Ensemble-guided optimisation of an image with the tiny trained model ``clipzoo/tiny-shapes``.

Starts from random noise and runs Adam on the pixels (through a sigmoid, so they stay in [0, 1]) to
minimise ``Ensemble.loss`` toward "a red circle" and away from "a blue square"; writes
docs/img/guidance_before.png and docs/img/guidance_after.png and prints the cosines.

    python examples/guidance_shapes.py [--steps 60]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import clipzoo


def save(x01: torch.Tensor, path: Path, scale: int = 2) -> None:
    arr = (x01[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    im = Image.fromarray(arr)
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "img"))
    args = ap.parse_args()
    torch.manual_seed(0)

    # two views of the same 64 px model: the whole image, and 4 augmented cutouts of it
    model = clipzoo.load("clipzoo/tiny-shapes")
    ensemble = clipzoo.Ensemble([model]).freeze()
    prompts = [("a red circle", 1.0), ("a blue square", -0.3)]
    text = model.encode_text(["a red circle", "a blue square"])

    start = torch.rand(1, 3, 96, 96)  # any size: each model resizes / crops it in torch
    param = torch.logit(start.clamp(0.01, 0.99)).clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        opt.zero_grad()
        x = torch.sigmoid(param)
        loss = ensemble.loss(x, prompts) + ensemble.loss(x, prompts, cutouts=4, augment=True, generator=gen)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    end = torch.sigmoid(param).detach()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save(start, out / "guidance_before.png")
    save(end, out / "guidance_after.png")
    with torch.no_grad():
        for name, x in (("before", start), ("after", end)):
            cos = (model.encode_image01(x) @ text.T)[0]
            print(f"{name:6s}  cos('a red circle') = {float(cos[0]):+.3f}   "
                  f"cos('a blue square') = {float(cos[1]):+.3f}")
    print(f"wrote {out / 'guidance_before.png'} and {out / 'guidance_after.png'}")


if __name__ == "__main__":
    main()
