"""Embedding a folder of JPEGs: clipzoo's runtimes vs a plain open_clip loop and transformers, one run.

All variants embed the same generated JPEGs (640×480 photo-like images, quality 90) with the same
weights (random ViT-B-32 by default: no download), one after another in one process:

- **open_clip loop** — what a script does: ``PIL.Image.open`` → ``preprocess`` → ``model.encode_image``
  in batches of 32, one process, ``torch.no_grad``.
- **transformers** — ``CLIPModel`` on the same weights (converted with ``clipzoo convert --to hf``):
  ``CLIPProcessor`` on PIL images → ``get_image_features``, batches of 32.
- **clipzoo / RUNTIME** — ``clipzoo.embed.embed_to_file``, the code behind ``clipzoo embed``:
  decoding (reduced-size JPEG decode) and preprocessing in DataLoader workers overlapping the model, rows
  streamed to a ``.npy``; for each ``--runtimes`` entry.

Each clipzoo row is checked against the open_clip loop's row of the same image (min cosine). Texts:
the same for ``--texts`` captions (open_clip ``tokenize`` → ``encode_text`` vs clipzoo ``encode_text``).
Prints images/s and the ratio to the open_clip loop, and a markdown table for docs/benchmarks.md.

    python benchmarks/embed_folder.py --images 2000 \\
        --runtimes eager,compile,onnx,onnx-int8,onnx-int8-static,openvino-int8,bf16,auto
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def write_photos(folder: Path, n: int, w: int = 640, h: int = 480) -> list[str]:
    """Smooth photo-like JPEGs (gradients and blobs: realistic JPEG sizes and decode cost, not noise)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        arr = np.stack([np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) + np.cos(5 * y * rng.uniform(0.5, 2))
                        for _ in range(3)], -1)
        for _ in range(5):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.03, 0.2)
            arr += (((x - cx) ** 2 + (y - cy) ** 2) < r * r)[..., None] * rng.uniform(-1.5, 1.5, 3).astype(np.float32)
        arr += rng.normal(0, 0.05, arr.shape).astype(np.float32)
        arr = (arr - arr.min()) / (arr.max() - arr.min()) * 255
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(arr.astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def write_model(path: Path, name: str) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(name)
    meta = {"format": "pt", "open_clip_config": json.dumps({"model_cfg": open_clip.get_model_config(name)})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)


def speed_model(cache_dir: Path, name: str = "ViT-B-32") -> Path:
    """``name`` with random weights (seed 0) at ``cache_dir/NAME-seed0.safetensors``, written on first use: the
    speed model the runtime benchmarks share (runtimes.py, roofline.py, bf16_speed.py, vit_layout.py), their
    exports cached beside it."""
    weights = Path(cache_dir) / f"{name}-seed0.safetensors"
    if not weights.exists():
        weights.parent.mkdir(parents=True, exist_ok=True)
        write_model(weights, name)
    return weights


def open_clip_loop(model, preprocess, paths, batch_size):
    import torch
    from PIL import Image

    rows = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]])
            rows.append(torch.nn.functional.normalize(model.encode_image(batch), dim=-1))
    return torch.cat(rows).numpy()


def transformers_loop(folder, paths, batch_size):
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)

    def run(paths):
        rows = []
        with torch.no_grad():
            for start in range(0, len(paths), batch_size):
                images = [Image.open(p).convert("RGB") for p in paths[start:start + batch_size]]
                inputs = processor(images=images, return_tensors="pt")
                out = model.get_image_features(**inputs)
                out = getattr(out, "pooler_output", out)
                rows.append(torch.nn.functional.normalize(out, dim=-1))
        return torch.cat(rows).numpy()
    return run


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None,
                    help="clipzoo decode workers [default: the pipeline's, CPU count]")
    ap.add_argument("--runtimes", default="eager,onnx,onnx-int8,onnx-int8-static,openvino-int8,torch-int8,bf16,auto")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import numpy as np
    import torch

    import clipzoo
    from clipzoo.embed import DistributedInfo, embed_to_file

    runtimes = [r for r in args.runtimes.split(",") if r]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_photos(tmp / "photos", args.images)
        weights = tmp / "model.safetensors"
        write_model(weights, args.model)
        texts = [f"a photo of {i} {w} things on a {c} background" for i, (w, c) in
                 enumerate(zip(["red", "round", "small", "blue", "tall"] * args.texts, ["dark", "white"] * args.texts))
                 ][:args.texts]
        cache = tmp / "cache"
        base = clipzoo.load(str(weights), device=args.device)
        oc_model, preprocess = base.model, base.transform
        results = []

        # ---- the open_clip loop (warm-up one batch first, as for every variant)
        open_clip_loop(oc_model, preprocess, paths[:args.batch_size], args.batch_size)
        ref, secs = timed(open_clip_loop, oc_model, preprocess, paths, args.batch_size)
        import open_clip

        tok = open_clip.get_tokenizer(args.model)

        def oc_text(texts):
            with torch.no_grad():
                return torch.cat([torch.nn.functional.normalize(oc_model.encode_text(tok(texts[s:s + 256])), dim=-1)
                                  for s in range(0, len(texts), 256)]).numpy()
        oc_text(texts[:64])
        text_ref, text_secs = timed(oc_text, texts)
        base_ips, base_tps = len(paths) / secs, len(texts) / text_secs
        results.append(("open_clip loop (eager fp32)", base_ips, 1.0, None, base_tps, 1.0, None))
        print(f"open_clip loop: {base_ips:.1f} images/s, {base_tps:.1f} texts/s", flush=True)

        # ---- transformers CLIPModel on the same weights
        if not args.no_transformers:
            from clipzoo.convert import convert

            hf_folder = tmp / "hf"
            convert(str(weights), str(hf_folder), to="hf")
            run = transformers_loop(str(hf_folder), paths, args.batch_size)
            run(paths[:args.batch_size])
            rows, secs = timed(run, paths)
            cos = float((rows * ref).sum(1).min())
            results.append(("transformers CLIPModel", len(paths) / secs, len(paths) / secs / base_ips, cos,
                            None, None, None))
            print(f"transformers: {len(paths) / secs:.1f} images/s (min cos {cos:.4f})", flush=True)

        # ---- clipzoo, each runtime, through the embed pipeline
        for runtime in runtimes:
            t0 = time.perf_counter()
            m = clipzoo.load(str(weights), runtime=runtime, cache_dir=str(cache), device=args.device)
            load_s = time.perf_counter() - t0
            label, choice = runtime, getattr(m, "runtime_choice", None)
            if choice is not None:  # runtime="auto": what it chose and why
                print(f"auto {choice.reason}", flush=True)
                label = f"auto → {m.runtime}"
            out = tmp / f"{runtime}.npy"
            warm = embed_to_file(m, tmp / "warm.npy", images=paths[:args.batch_size], batch_size=args.batch_size,
                                 workers=args.workers, info=DistributedInfo())
            m.encode_text(texts[:64])
            _, secs = timed(lambda m=m, out=out: embed_to_file(m, out, images=paths, batch_size=args.batch_size,
                                                               workers=args.workers, info=DistributedInfo()))
            rows = np.load(out)
            text_rows, text_secs = timed(lambda m=m: m.encode_text(texts, batch_size=256).float().numpy())
            cos = float((rows * ref).sum(1).min())
            tcos = float((text_rows * text_ref).sum(1).min())
            ips, tps = len(paths) / secs, len(texts) / text_secs
            results.append((f"clipzoo embed, runtime={label}", ips, ips / base_ips, cos, tps, tps / base_tps, tcos))
            print(f"clipzoo {label}: {ips:.1f} images/s ({ips / base_ips:.2f}x, min cos {cos:.4f}); "
                  f"{tps:.1f} texts/s ({tps / base_tps:.2f}x, min cos {tcos:.5f}); load/export {load_s:.0f} s",
                  flush=True)
            del m, warm

    print(f"\n{args.model} (random weights), {args.images} JPEGs 640×480 / {args.texts} texts, batch "
          f"{args.batch_size}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, clipzoo decode "
          f"workers {args.workers}, load average {Path('/proc/loadavg').read_text().split()[0]}\n")
    print("| variant | images/s | × open_clip | min cosine | texts/s | × open_clip | min cosine |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for name, ips, r, cos, tps, tr, tcos in results:
        print(f"| {name} | {ips:.1f} | {r:.2f} | {fmt(cos, '.4f')} | {fmt(tps, '.1f')} | {fmt(tr, '.2f')} | "
              f"{fmt(tcos, '.5f')} |")


if __name__ == "__main__":
    main()
