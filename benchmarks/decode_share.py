"""The decode share of the embedding pipeline's wall time (issue 22 §4: goal <= 25 % at the §1 figure).

The same generated photo-like JPEGs (``embed_folder.write_photos``, 640×480 q90 by default) and the same random
ViT-B/32 weights as ``embed_folder.py``, through the pieces ``clipzoo embed`` runs (``clipzoo.embed``):
decode (:mod:`clipzoo.embed.decode`) + resize/crop to uint8 in DataLoader workers, batches handed over in shared
memory (:mod:`clipzoo.embed.handover`), normalised in the parent, ``encode_image``. Per ``--runtimes`` entry:

- ``decode_ms_per_image``: the worker's work for one image (decode, resize, crop), one thread, in this process;
- ``model_ms_per_image``: ``encode_image`` on already-prepared batches (normalisation included);
- ``in_process``: ``--workers 0`` (decode, then the model, one after the other): the share of wall time spent
  decoding — what decode costs when it does not overlap;
- ``pipelined_threads`` / ``pipelined_processes``: ``--workers N`` (decode overlapping the model) in N threads of
  this process, one batch ahead (:mod:`clipzoo.embed.thread_loader`), and in N DataLoader worker processes, side
  by side; ``pipelined`` is the one ``clipzoo embed`` uses for this runtime
  (:func:`clipzoo.embed.loader.decode_in_threads`: threads beside an engine of its own, ONNX Runtime here;
  processes beside a PyTorch model): the share of wall time the model waited for a batch — the decode share of
  the end-to-end figure;
- ``decode_share_of_work``: decode / (decode + model) per image — the share of CPU work decoding takes.

The goal is met when the pipelined share (the end-to-end figure's) is <= 25 %. The peer is PIL's full decode
(what an open_clip loop does): its in-process share is reported beside ours.

    python benchmarks/decode_share.py                               # results/decode_share.json
    python benchmarks/decode_share.py --images 32 --runtimes eager --out /tmp/decode_share.json
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from tables import RESULTS, machine_info, scratch_dir, write_result

warnings.filterwarnings("ignore")
GOAL_SHARE = 0.25


def prepare(files: list[str], comparator, fast: bool):
    """The dataset, transform pieces and draft size ``clipzoo embed`` uses for ``comparator``."""
    from clipzoo.embed.handover import Uint8Crop, split_transform
    from clipzoo.embed.loader import ImageFiles, draft_size_for

    split = split_transform(comparator.transform)
    if split is None:
        raise SystemExit(f"{comparator.card.alias}'s transform does not split into a uint8 crop")
    return ImageFiles(files, Uint8Crop(split, fast=fast), draft_size_for(comparator) if fast else None), split


def decode_ms(dataset) -> float:
    """CPU milliseconds per image of the worker's work (decode, resize, crop), in this process with one torch
    thread, as a DataLoader worker runs it (the resize is torch's with fast decoding)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[0]
        t = time.process_time()
        for i in range(len(dataset)):
            dataset[i]
        return (time.process_time() - t) * 1e3 / len(dataset)
    finally:
        torch.set_num_threads(threads)


def crop_batches(dataset, batch_size: int) -> list:
    """The dataset's uint8 crops stacked ``batch_size`` at a time, as the loader's workers stack them."""
    import torch

    n = len(dataset)
    return [torch.stack([dataset[i][1] for i in range(s, min(s + batch_size, n))]) for s in range(0, n, batch_size)]


def model_ms(comparator, batches: list, split) -> float:
    import torch

    from clipzoo.embed.handover import normalize_uint8

    with torch.no_grad():
        comparator.encode_image(normalize_uint8(batches[0], split))  # warm-up
        t = time.perf_counter()
        for b in batches:
            comparator.encode_image(normalize_uint8(b, split))
    return (time.perf_counter() - t) * 1e3 / sum(len(b) for b in batches)


def normalise_ms(batches: list, split) -> float:
    """The parent's share of each batch besides the model: ms per image of ``normalize_uint8`` (uint8 crops to the
    model's normalised floats), with the process's threads, as the embedding loop runs it."""
    from clipzoo.embed.handover import normalize_uint8

    normalize_uint8(batches[0], split)
    t = time.perf_counter()
    for b in batches:
        normalize_uint8(b, split)
    return (time.perf_counter() - t) * 1e3 / sum(len(b) for b in batches)


def pipeline(comparator, files: list[str], split, batch_size: int, workers: int, fast: bool,
             threads: bool | None = None) -> dict:
    """Wall seconds of the embedding loop and the seconds it spent waiting for the loader (decode); ``threads``:
    decode in threads (True) or worker processes (False); None: as ``clipzoo embed`` chooses."""
    import torch

    from clipzoo.embed.handover import Uint8Crop, normalize_uint8
    from clipzoo.embed.loader import decode_in_threads, draft_size_for, image_loader

    threads = decode_in_threads(comparator) if threads is None else threads
    loader = image_loader(files, Uint8Crop(split, fast=fast), batch_size, workers,
                          draft_size=draft_size_for(comparator) if fast else None, threads=threads)
    wait = model = 0.0
    t0 = time.perf_counter()
    it = iter(loader)
    with torch.no_grad():
        while True:
            t = time.perf_counter()
            try:
                _, pixels, _ = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            wait += t1 - t
            comparator.encode_image(normalize_uint8(pixels, split))
            model += time.perf_counter() - t1
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "waiting_for_decode_s": wait, "model_s": model, "decode_share": wait / wall,
            "images_per_s": len(files) / wall}


def measure(runtime: str, model_path: Path, files: list[str], args) -> dict:
    import clipzoo
    from clipzoo.embed.loader import decode_in_threads

    comparator = clipzoo.load(str(model_path), runtime=runtime)
    ours, split = prepare(files, comparator, fast=True)
    reference, _ = prepare(files, comparator, fast=False)
    dec, dec_pil = decode_ms(ours), decode_ms(reference)
    batches = crop_batches(ours, args.batch_size)
    mod, norm = model_ms(comparator, batches, split), normalise_ms(batches, split)
    in_proc = pipeline(comparator, files, split, args.batch_size, 0, True)
    threads = pipeline(comparator, files, split, args.batch_size, args.workers, True, threads=True)
    processes = pipeline(comparator, files, split, args.batch_size, args.workers, True, threads=False)
    in_threads = decode_in_threads(comparator)  # what clipzoo embed uses for this comparator
    piped = threads if in_threads else processes
    pil_in_proc = pipeline(comparator, files, split, args.batch_size, 0, False)
    return {"decode_ms_per_image": dec, "pil_full_decode_ms_per_image": dec_pil, "model_ms_per_image": mod,
            "normalise_ms_per_image": norm,
            "decode_share_of_work": dec / (dec + mod), "in_process": in_proc, "pipelined": piped,
            "pipelined_threads": threads, "pipelined_processes": processes,
            "decode_in_threads": in_threads,
            "pil_full_in_process": pil_in_proc, "goal_met": piped["decode_share"] <= GOAL_SHARE}


def normalise_cell(r: dict) -> "float | str":
    return round(r["normalise_ms_per_image"], 2) if "normalise_ms_per_image" in r else ""  # older files: not measured


def table(result: dict) -> dict:
    rows = []
    for runtime, r in result["runtimes"].items():
        rows.append([f"`{runtime}`", round(r["decode_ms_per_image"], 2), round(r["pil_full_decode_ms_per_image"], 2),
                     round(r["model_ms_per_image"], 2), normalise_cell(r), f"{r['decode_share_of_work']:.0%}",
                     f"{r['pil_full_in_process']['decode_share']:.0%}", f"{r['in_process']['decode_share']:.0%}",
                     f"{r['pipelined']['decode_share']:.0%}", round(r["pipelined_threads"]["images_per_s"], 1),
                     round(r["pipelined_processes"]["images_per_s"], 1),
                     "threads" if r["decode_in_threads"] else "processes",
                     "met" if r["goal_met"] else "not met"])
    w = result["settings"]["workers"]
    return {"columns": ["runtime", "decode ms/image (clipzoo)", "decode ms/image (PIL full)", "model ms/image",
                        "of which normalising ms/image",
                        "decode share of work", "decode share, PIL full, in process",
                        "decode share, clipzoo, in process", f"decode share, clipzoo, {w} workers (end to end)",
                        f"images/s, {w} decode threads", f"images/s, {w} worker processes", "clipzoo embed uses",
                        "goal (<= 25 %)"], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--photo-size", default="640x480", help="WxH of the generated photos")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip config name (random weights)")
    ap.add_argument("--runtimes", default="eager", help="comma-separated clipzoo runtimes")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="decode workers of the pipelined run")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "decode_share.json")
    args = ap.parse_args()
    from clipzoo.embed.decode import SCALE_MARGIN, decoder_name
    from embed_folder import write_model, write_photos

    machine = machine_info()
    root = args.workdir or scratch_dir("clipzoo-decode-share-")
    w, h = (int(v) for v in args.photo_size.split("x"))
    files = write_photos(root / "jpegs", args.images, w, h)
    model_path = root / f"{args.model}.safetensors"
    if not model_path.exists():
        write_model(model_path, args.model)
    runtimes = {rt: measure(rt, model_path, files, args) for rt in args.runtimes.split(",")}
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"benchmark": "decode_share", "machine": machine,
              "settings": {"images": len(files), "photo_size": args.photo_size, "model": f"{args.model} (random)",
                           "batch_size": args.batch_size, "workers": args.workers,
                           "decoder": decoder_name(), "dct_scale_margin": SCALE_MARGIN},
              "goal_share": GOAL_SHARE, "runtimes": runtimes}
    result["table"] = table(result)
    write_result(args.out, result)
    for row in result["table"]["rows"]:
        print("  ".join(str(c) for c in row))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
