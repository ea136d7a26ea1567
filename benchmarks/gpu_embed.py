"""Folder of JPEGs -> embeddings on one GPU (issue 22 §5; goal >= 5,000 images/s on one H100/H200 with ViT-B/32).

A generated folder of photo-like JPEGs (``embed_folder.write_photos``: ``--distinct`` distinct 640×480 q90 photos,
repeated under new names up to ``--images``) and ViT-B/32 with random weights, through the library's GPU path
(:mod:`clipzoo.embed.gpu`, what ``clipzoo embed --device cuda`` runs):

- ``cpu_decode``: DataLoader workers decode (:mod:`clipzoo.embed.decode`) and crop to uint8, stacked in shared
  memory, pinned; copied to the GPU a batch ahead on a side stream; normalised there, channels-last; the image
  tower under fp16 / bf16 autocast (``--autocast``) as a CUDA graph for the fixed batch shape (``--graphs``);
- ``gpu_decode``: the files' bytes decoded by nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``), resized /
  cropped / normalised in torch on the GPU, the same tower.

For each: images/s end to end (no synchronisation but the last), then one instrumented pass (synchronised after
each stage) giving the share of time in decode / transfer / model; and the min cosine of its rows against the
fp32 CPU rows of the same images (``Comparator.encode_image`` on PIL's decode). ``model_only`` is the tower alone on
a resident batch (the ceiling). Without CUDA it runs the correctness path on the CPU (``--cpu-images`` images,
bf16 autocast on the CPU if asked): every CUDA part (graphs, pinning, GPU decode) skips with a one-line reason.

    python benchmarks/gpu_embed.py                          # results/gpu_embed.json; <= 4 min on one H100/H200
    python benchmarks/gpu_embed.py --device cpu --cpu-images 8 --model tiny --out /tmp/gpu_embed.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
import warnings
from pathlib import Path

from tables import RESULTS, machine_info, scratch_dir, write_result

warnings.filterwarnings("ignore")
GOAL_IMAGES_PER_S = 5000


def make_folder(root: Path, n: int, distinct: int) -> list[str]:
    from embed_folder import write_photos

    base = write_photos(root / "distinct", min(n, distinct))
    out = root / "jpegs"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = out / f"{i:07d}.jpg"
        if not path.exists():
            shutil.copyfile(base[i % len(base)], path)
        files.append(str(path))
    return files


def load_model(spec: str, root: Path, device: str):
    """``tiny``: clipzoo's tiny random CLIP (tests); an open_clip config name: random weights; else a model spec."""
    import clipzoo

    if spec == "tiny":
        from clipzoo.testing.tiny import write_open_clip_hub_folder

        spec = str(write_open_clip_hub_folder(root / "tiny-model"))
    elif not Path(spec).exists() and "/" not in spec:
        from embed_folder import write_model

        path = root / f"{spec}.safetensors"
        if not path.exists():
            write_model(path, spec)
        spec = str(path)
    return clipzoo.load(spec, device=device), clipzoo.load(spec, device="cpu")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_decode_run(comparator, embedder, files, args, instrumented: bool) -> dict:
    """The library's path (loader -> prefetch -> normalise -> graph); stage seconds when ``instrumented``."""
    from clipzoo.embed.gpu import prefetch
    from clipzoo.embed.handover import Uint8Crop
    from clipzoo.embed.loader import draft_size_for, image_loader

    device = embedder.device
    loader = image_loader(files, Uint8Crop(embedder.split, fast=True), args.batch_size, args.workers,
                          pin_memory=device.type == "cuda", draft_size=draft_size_for(comparator))
    stages, rows = {"decode": 0.0, "transfer": 0.0, "model": 0.0}, []
    t0 = time.perf_counter()
    if not instrumented:
        for _, pixels, _ in prefetch(loader, device, embedder.options.prefetch):
            rows.append(embedder.encode(embedder.pixels(pixels)))
        sync(device)
        return {"wall_s": time.perf_counter() - t0, "rows": rows}
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            _, pixels, _ = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        x = pixels.to(device, non_blocking=True)
        sync(device)
        t2 = time.perf_counter()
        rows.append(embedder.encode(embedder.pixels(x)))
        sync(device)
        stages["decode"] += t1 - t
        stages["transfer"] += t2 - t1
        stages["model"] += time.perf_counter() - t2
    return {"wall_s": time.perf_counter() - t0, "stages_s": stages, "rows": rows}


def gpu_decode_run(comparator, embedder, files, args, instrumented: bool) -> dict:
    """nvJPEG decode + torch resize on the GPU, then the same tower; stage seconds when ``instrumented``."""
    import torch

    from clipzoo.embed.gpu import gpu_decode

    device = embedder.device
    stages, rows = {"read": 0.0, "decode": 0.0, "model": 0.0}, []
    t0 = time.perf_counter()
    for start in range(0, len(files), args.batch_size):
        t = time.perf_counter()
        blobs = [Path(f).read_bytes() for f in files[start:start + args.batch_size]]
        t1 = time.perf_counter()
        images = gpu_decode(blobs, device)
        x = torch.cat([comparator.preprocess01(im[None].float().div(255)) for im in images])
        x = x.contiguous(memory_format=torch.channels_last).to(comparator.dtype)
        if instrumented:
            sync(device)
        t2 = time.perf_counter()
        rows.append(embedder.encode(x))
        if instrumented:
            sync(device)
        stages["read"] += t1 - t
        stages["decode"] += t2 - t1
        stages["model"] += time.perf_counter() - t2
    sync(device)
    return {"wall_s": time.perf_counter() - t0, "stages_s": stages if instrumented else None, "rows": rows}


def model_only(embedder, batch_size: int, repeats: int = 5) -> float:
    """Images/s of the tower alone on a resident batch (graph replay on CUDA)."""
    import torch

    s = embedder.split.size
    x = embedder.pixels(torch.randint(0, 256, (batch_size, s, s, 3), dtype=torch.uint8, device=embedder.device))
    embedder.encode(x)
    sync(embedder.device)
    t = time.perf_counter()
    for _ in range(repeats):
        embedder.encode(x)
    sync(embedder.device)
    return batch_size * repeats / (time.perf_counter() - t)


def min_cosine(rows: list, reference) -> float:
    import torch

    got = torch.cat(rows)[: len(reference)].float().cpu()
    return torch.nn.functional.cosine_similarity(got, reference).min().item()


def summarize(name: str, fast: dict, slow: dict, n: int, reference) -> dict:
    stages = slow["stages_s"]
    total = sum(stages.values())
    return {"path": name, "images_per_s": n / fast["wall_s"], "wall_s": fast["wall_s"],
            "stage_share": {k: v / total for k, v in stages.items()}, "stage_s": stages,
            "min_cosine_vs_cpu_fp32": min_cosine(fast["rows"], reference)}


def run(args) -> dict:
    import torch

    from clipzoo.embed.decode import decoder_name
    from clipzoo.embed.gpu import GpuEmbedder, GpuOptions, cuda_unavailable
    from clipzoo.inputs import open_image

    device = "cuda" if args.device == "auto" and not cuda_unavailable() else ("cpu" if args.device == "auto"
                                                                               else args.device)
    reason = cuda_unavailable(device)
    root = args.workdir or scratch_dir("clipzoo-gpu-embed-")
    n = args.images if reason is None else args.cpu_images
    files = make_folder(root, n, args.distinct)
    comparator, cpu_model = load_model(args.model, root, device)
    with torch.no_grad():
        reference = cpu_model.encode_image([open_image(f) for f in files[: args.check]]).float()
    autocast = None if args.autocast == "none" else args.autocast
    embedder = GpuEmbedder(comparator, GpuOptions(autocast=autocast, channels_last=True, graphs=args.graphs))
    out = {"device": str(embedder.device), "cuda_skipped": reason, "images": n, "decoder": decoder_name()}
    cpu_decode_run(comparator, embedder, files[: args.batch_size * 2], args, False)  # warm-up, graph capture
    out["graph"] = embedder.runner.note
    paths = {"cpu_decode": summarize("cpu_decode", cpu_decode_run(comparator, embedder, files, args, False),
                                     cpu_decode_run(comparator, embedder, files, args, True), n, reference)}
    if reason is None:
        gpu_decode_run(comparator, embedder, files[: args.batch_size], args, False)  # warm-up
        paths["gpu_decode"] = summarize("gpu_decode", gpu_decode_run(comparator, embedder, files, args, False),
                                        gpu_decode_run(comparator, embedder, files, args, True), n, reference)
        out["gpu"] = torch.cuda.get_device_name(embedder.device)
    else:
        out["gpu_decode_skipped"] = f"GPU JPEG decode: skipped, {reason}"
        out["pinned_memory_skipped"] = f"pinned memory and side-stream prefetch: skipped, {reason}"
    out["model_only_images_per_s"] = model_only(embedder, args.batch_size if reason is None else min(8, n))
    out["paths"] = paths
    best = max(p["images_per_s"] for p in paths.values())
    out["goal"] = {"images_per_s": GOAL_IMAGES_PER_S, "best": best,
                   "met": None if reason else best >= GOAL_IMAGES_PER_S}
    return out


def table(result: dict) -> dict:
    rows = []
    for p in result["paths"].values():
        s = p["stage_share"]
        rows.append([f"`{p['path']}`", result["device"], round(p["images_per_s"], 1),
                     " / ".join(f"{k} {v:.0%}" for k, v in s.items()), f"{p['min_cosine_vs_cpu_fp32']:.5f}"])
    rows.append(["model alone (resident batch)", result["device"], round(result["model_only_images_per_s"], 1),
                 result["graph"], None])
    for key in ("gpu_decode_skipped", "pinned_memory_skipped"):
        if key in result:
            rows.append([result[key], None, None, None, None])
    return {"columns": ["path", "device", "images/s", "share of time (instrumented pass)",
                        "min cosine vs CPU fp32"], "rows": rows}


def main(argv: "list[str] | None" = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000, help="JPEGs in the folder (on a GPU)")
    ap.add_argument("--cpu-images", type=int, default=16, help="JPEGs for the CPU correctness path")
    ap.add_argument("--distinct", type=int, default=256, help="distinct photos (the rest are copies)")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip config (random weights), 'tiny', or a spec")
    ap.add_argument("--device", default="auto", help="cuda, cuda:N, cpu [default: cuda when available]")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="decode workers")
    ap.add_argument("--autocast", default="fp16", help="fp16, bf16 or none")
    ap.add_argument("--graphs", default="cuda-graphs", help="cuda-graphs, compile or none")
    ap.add_argument("--check", type=int, default=8, help="images compared with the CPU fp32 rows")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_embed.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    machine = machine_info()
    result = {"benchmark": "gpu_embed", "machine": machine,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    result |= run(args)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = time.perf_counter() - t0
    result["table"] = table(result)
    write_result(args.out, result)
    for row in result["table"]["rows"]:
        print("  ".join("" if c is None else str(c) for c in row))
    if result["cuda_skipped"]:
        print(f"CUDA parts skipped: {result['cuda_skipped']}")
    print(f"{result['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
