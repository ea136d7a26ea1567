"""Index build throughput: ``clipzoo index build`` vs a plain open_clip loop, same model, one run.

The folder holds generated JPEGs (captioned shapes). The plain loop is what a script would do:
``PIL.Image.open`` → ``preprocess`` → ``model.encode_image`` in batches of 32, one process.
``build_index`` walks the folder, hashes and decodes in DataLoader workers, embeds in batches, writes
shards + SQLite and builds the FAISS index. Both use the same open_clip module (random ViT-B-32 weights
by default: no download). Prints images/s for each and the ratio.

    python benchmarks/index_build.py --n 512 --model ViT-B-32 --workers 2
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def write_jpegs(folder: Path, n: int, size: int) -> None:
    from clipzoo.datasets import ShapesDataset

    ds = ShapesDataset(n, seed=0, image_size=size)
    for i in range(n):
        s = ds[i]
        sub = folder / s.labels["shape"]
        sub.mkdir(parents=True, exist_ok=True)
        s.image.save(sub / f"{i:06d}.jpg", quality=90)
        (sub / f"{i:06d}.txt").write_text(s.caption)


def write_model(path: Path, name: str) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(name)
    meta = {"format": "pt", "open_clip_config": json.dumps({"model_cfg": open_clip.get_model_config(name)})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)


def plain_loop(model, preprocess, paths, batch_size: int = 32) -> float:
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]])
            model.encode_image(batch)
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import torch

    import clipzoo
    from clipzoo.index import build_index

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "images", args.n, args.image_size)
        write_model(tmp / "model.safetensors", args.model)
        model = clipzoo.load(str(tmp / "model.safetensors"))
        paths = sorted(str(p) for p in (tmp / "images").rglob("*.jpg"))
        plain_loop(model.model, model.transform, paths[:args.batch_size])  # warm-up
        plain = plain_loop(model.model, model.transform, paths, args.batch_size)
        t0 = time.perf_counter()
        report = build_index(tmp / "images", tmp / "ix", model=model, batch_size=args.batch_size,
                             workers=args.workers)
        total = time.perf_counter() - t0
        end_to_end = report.added / total
        print(f"index build, {args.model} (random weights), {args.n} JPEGs {args.image_size}px, batch "
              f"{args.batch_size}, {args.workers} decode workers, torch threads {torch.get_num_threads()}")
        print(f"  plain open_clip loop (PIL open -> preprocess -> encode_image): {plain:8.1f} images/s")
        print(f"  clipzoo index build, embedding phase:                          {report.images_per_s:8.1f} images/s")
        print(f"  clipzoo index build, end to end (walk, hash, shards, SQLite, FAISS): {end_to_end:8.1f} images/s")
        print(f"  ratio clipzoo/plain: {report.images_per_s / plain:.2f}x (embedding), {end_to_end / plain:.2f}x "
              f"(end to end); index {report.index_kind}, {report.total} items, {len(report.skipped)} skipped")


if __name__ == "__main__":
    main()
