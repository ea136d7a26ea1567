"""Image and text embedding, MindSpore (PyNative and Graph) vs torch eager, fp32 on the CPU (issue 19 §7).

One run, the same weights: open_clip's random initialisation of each model (``ViT-B-32``, ``RN50``) in torch,
renamed into clipzoo's MindSpore CLIP (:mod:`clipzoo.models.mindspore_names`). Each encoder is checked first (max
abs diff of the features against torch's), then gets one warm-up call (Graph: the ``mindspore.jit`` compilation,
timed separately) and ``--repeats`` timed calls on the same batch; images/s and texts/s are batch × repeats / time
(MindSpore timed until ``asnumpy``; torch under ``inference_mode``). Ratios are MindSpore over torch in the same
run; the load average is recorded before and after (``tables.machine_info``). Needs the ``mindspore`` extra (its
own venv: see docs/mindspore.md).

    .venv-ms/bin/python benchmarks/mindspore_embed.py --quick --out benchmarks/results/mindspore_embed.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tables import machine_info

QUICK = {"image_batch": 2, "text_batch": 8, "repeats": 2}


def _rate(fn, n: int, repeats: int) -> tuple[float, float]:
    """(items per second over ``repeats`` calls, seconds of the warm-up call)."""
    t = time.perf_counter()
    fn()
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n * repeats / (time.perf_counter() - t), warm


def bench_model(name: str, image_batch: int, text_batch: int, repeats: int) -> dict:
    import mindspore as ms
    import numpy as np
    import open_clip
    import torch

    from clipzoo.models.mindspore_clip import build_model, load_params
    from clipzoo.models.mindspore_config import get_config
    from clipzoo.models.mindspore_names import torch_to_mindspore

    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    net = load_params(build_model(get_config(name)), torch_to_mindspore(model.state_dict()))
    rng = np.random.default_rng(0)
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    pixels = rng.normal(size=(image_batch, 3, size, size)).astype(np.float32)
    tokens = rng.integers(1, 49000, size=(text_batch, 77)).astype(np.int32)
    tokens[:, 0], tokens[:, 20], tokens[:, 21:] = 49406, 49407, 0
    t_pixels, t_tokens = torch.from_numpy(pixels), torch.from_numpy(tokens).long()
    m_pixels, m_tokens = ms.Tensor(pixels), ms.Tensor(tokens)
    out: dict = {"model": name, "image_size": size, "image_batch": image_batch, "text_batch": text_batch,
                 "repeats": repeats}
    with torch.inference_mode():
        ref_image, ref_text = model.encode_image(t_pixels).numpy(), model.encode_text(t_tokens).numpy()
        images_s, _ = _rate(lambda: model.encode_image(t_pixels), image_batch, repeats)
        texts_s, _ = _rate(lambda: model.encode_text(t_tokens), text_batch, repeats)
    out["torch_eager"] = {"images_per_s": images_s, "texts_per_s": texts_s}
    for mode in ("pynative", "graph"):
        print(f"{name}: mindspore {mode} …", file=sys.stderr, flush=True)
        image_fn, text_fn = net.encode_image, net.encode_text
        if mode == "graph":
            image_fn, text_fn = ms.jit(net.encode_image), ms.jit(net.encode_text)
        images_s, image_warm = _rate(lambda f=image_fn: f(m_pixels).asnumpy(), image_batch, repeats)
        texts_s, text_warm = _rate(lambda f=text_fn: f(m_tokens).asnumpy(), text_batch, repeats)
        out[f"mindspore_{mode}"] = {
            "images_per_s": images_s, "texts_per_s": texts_s, "first_call_s": {"image": image_warm, "text": text_warm},
            "max_abs_diff": {"image": float(np.abs(image_fn(m_pixels).asnumpy() - ref_image).max()),
                             "text": float(np.abs(text_fn(m_tokens).asnumpy() - ref_text).max())},
            "ratio_vs_torch": {"images": images_s / out["torch_eager"]["images_per_s"],
                               "texts": texts_s / out["torch_eager"]["texts_per_s"]}}
    return out


def main(argv: "list[str] | None" = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="ViT-B-32,RN50", help="comma-separated open_clip config names")
    ap.add_argument("--image-batch", type=int, default=16)
    ap.add_argument("--text-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes: 2 images, 8 texts, 2 repeats")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else {"image_batch": args.image_batch, "text_batch": args.text_batch,
                                      "repeats": args.repeats}
    import mindspore
    import torch

    before = machine_info()
    summary = {"benchmark": "mindspore_embed", "torch": torch.__version__, "mindspore": mindspore.__version__,
               "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "quick": args.quick,
               "load_average_before": before["load_average"], "machine": before, "results": []}
    for name in args.models.split(","):  # the file is rewritten after each model: a stopped run keeps its rows
        summary["results"].append(bench_model(name, **sizes))
        summary["load_average_after"] = machine_info()["load_average"]
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
