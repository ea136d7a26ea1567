"""bf16 vs fp32 eager on this CPU, side by side in one process (issue 22 §2).

ViT-B/32 with **random weights** (open_clip, seed 0, kept in ``--cache-dir`` as benchmarks/runtimes.py keeps
it), ``--batch-size`` photo-like 640×480 JPEGs preprocessed once (the model's time only) and ``--texts``
captions encoded in one batch (tokenising included), ``torch.set_num_threads(--threads)``. The variants:

- ``eager``: fp32, as ``clipzoo.load`` builds it (the reference);
- ``bf16``: ``runtime="bf16"`` — activations bf16 throughout (norms without fp32 casts, their weights fp32),
  self-attention through SDPA (clipzoo.runtime.bf16);
- ``bf16-no-sdpa``: the same with open_clip's own attention (``nn.MultiheadAttention``'s fast path);
- ``bf16-open_clip-mixed``: ``precision="bf16"`` alone — open_clip's mixed precision (LayerNorms in fp32),
  what ``runtime="bf16"`` ran before;
- ``autocast``: the fp32 model under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
- ``bf16-compile`` (not run unless named): ``runtime="bf16"`` with its image tower and text transformer through
  ``torch.compile`` (inductor, ``freezing=True``) for the fixed batch shapes; its first call (the compile) is
  ``first_call_s``, apart from the timed rounds.

The variants run interleaved — round after round, each round every variant once (the order reversed every
other round) — so load from other work on shared cores hits all of them alike; a variant's ratio is the median
over rounds of eager's time / its time in that round. Fidelity: min cosine to eager fp32 on the same inputs
(ViT-B/32) and on ``--heldout`` held-out shapes of the embedded, trained ``clipzoo/tiny-shapes``; batch
independence: the same input alone vs inside a batch of 32 (max abs difference of the row). ``--profile``
adds the operators where eager's and bf16's time goes (torch.profiler, self CPU time).

    python benchmarks/bf16_speed.py --rounds 3 --profile --out benchmarks/results/bf16_speed.json

Writes JSON (with the machine's CPU flags, cores and the load average of every round) and prints it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore")

from embed_folder import speed_model, write_photos  # noqa: E402
from tables import machine_info, write_result  # noqa: E402

GOALS = {"bf16_speedup": 1.6, "bf16_min_cosine": 0.999}
VARIANTS = ("eager", "bf16", "bf16-no-sdpa", "bf16-open_clip-mixed", "autocast")
OPTIONAL = ("bf16-compile",)


def build_variants(weights: Path, names: list[str]) -> dict:
    """name -> (comparator, context factory) for each variant named."""
    import torch

    import clipzoo
    from clipzoo.runtime import bf16

    out = {}
    for name in names:
        context = contextlib.nullcontext
        if name == "eager":
            m = clipzoo.load(str(weights))
        elif name in ("bf16", "bf16-compile"):
            m = clipzoo.load(str(weights), runtime="bf16")
            if name == "bf16-compile":
                import torch._inductor.config as inductor

                inductor.freezing = True
                m.model.visual = torch.compile(m.model.visual, dynamic=False)
                m.model.transformer = torch.compile(m.model.transformer, dynamic=False)
        elif name == "autocast":
            m = clipzoo.load(str(weights))
            context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        else:
            m = clipzoo.load(str(weights), precision="bf16")
            if name == "bf16-no-sdpa":
                bf16.to_bf16(m.model)
        out[name] = (m, context)
    return out


def run_once(model, context, pixels, texts: list[str]) -> tuple[float, float, object, object]:
    import torch

    with torch.no_grad(), context():
        t0 = time.perf_counter()
        rows = model.encode_image(pixels, batch_size=len(pixels))
        t1 = time.perf_counter()
        trows = model.encode_text(texts, batch_size=len(texts))
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, rows.float(), trows.float()


def min_cosine(a, b) -> float:
    return round(float((a.float() * b.float()).sum(-1).min()), 6)


def batch_diff(model, context, images, texts: list[str]) -> float:
    """Largest |row alone - the same row inside a batch of 32| over both towers."""
    import torch

    diffs = []
    with torch.no_grad(), context():
        for encode, items in ((model.encode_image, images[:32]), (model.encode_text, texts[:32])):
            alone = encode(items[5:6]).float()
            batch = encode(items, batch_size=32).float()
            diffs.append(float((alone[0] - batch[5]).abs().max()))
    return max(diffs)


def profile_top(model, context, pixels, texts: list[str], rows: int = 10) -> dict:
    """The operators taking the most self CPU time, images and texts apart."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for tower, fn in (("images", lambda: model.encode_image(pixels, batch_size=len(pixels))),
                      ("texts", lambda: model.encode_text(texts, batch_size=len(texts)))):
        with profile(activities=[ProfilerActivity.CPU]) as prof, context():
            fn()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        out[tower] = [{"op": e.key, "calls": e.count, "self_share": round(e.self_cpu_time_total / total, 3)}
                      for e in events[:rows]]
    return out


def speed(args, variants: dict, pixels, texts: list[str]) -> dict:
    """The interleaved rounds: per variant the seconds of every round, images/s, texts/s and the ratios."""
    names = list(variants)
    first = {}
    for name, (m, ctx) in variants.items():  # warm-up at the timed shapes (oneDNN primitives, compiles)
        first[name] = [round(t, 3) for t in run_once(m, ctx, pixels, texts)[:2]]
    times = {n: {"images_s": [], "texts_s": []} for n in names}
    outputs, loads = {}, []
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            m, ctx = variants[name]
            ti, tt, rows, trows = run_once(m, ctx, pixels, texts)
            times[name]["images_s"].append(round(ti, 3))
            times[name]["texts_s"].append(round(tt, 3))
            outputs[name] = (rows, trows)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"round {r + 1}: {json.dumps({n: [t['images_s'][-1], t['texts_s'][-1]] for n, t in times.items()})} "
              f"load {loads[-1]}", flush=True)
    ref_rows, ref_trows = outputs["eager"]
    out = {}
    for name in names:
        t, e = times[name], times["eager"]
        out[name] = {
            "images_per_s": round(len(pixels) / min(t["images_s"]), 2),
            "texts_per_s": round(len(texts) / min(t["texts_s"]), 2),
            "image_ratio_to_eager": round(statistics.median(a / b for a, b in zip(e["images_s"], t["images_s"])), 3),
            "text_ratio_to_eager": round(statistics.median(a / b for a, b in zip(e["texts_s"], t["texts_s"])), 3),
            "image_min_cosine": min_cosine(outputs[name][0], ref_rows),
            "text_min_cosine": min_cosine(outputs[name][1], ref_trows), "first_call_s": first[name], **times[name]}
    return {"variants": out, "load_average_1min_per_round": loads}


def tiny_fidelity(args, tmp: Path) -> dict:
    """The embedded, trained model: bf16's min cosine to eager fp32 on held-out shapes, batch independence."""
    import clipzoo
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.train import recipes

    ref = clipzoo.load("clipzoo/tiny-shapes")
    held = recipes.write_heldout(f"shapes-heldout:{args.heldout}", tmp / "held", ref.image_size)
    records = list(open_dataset(held))
    images, texts = [r.image for r in records], [r.captions[0] for r in records]
    m = clipzoo.load("clipzoo/tiny-shapes", runtime="bf16")
    return {"model": "clipzoo/tiny-shapes", "heldout": len(records), "ran_as": m.runtime,
            "image_min_cosine": min_cosine(m.encode_image(images), ref.encode_image(images)),
            "text_min_cosine": min_cosine(m.encode_text(texts), ref.encode_text(texts)),
            "batch_abs_diff": {"eager": batch_diff(ref, contextlib.nullcontext, images, texts),
                               "bf16": batch_diff(m, contextlib.nullcontext, images, texts)}}


def table(result: dict) -> dict:
    """The docs table (docs/benchmarks.md ``bench:bf16_speed``): one row per variant."""
    rows = []
    for name, v in result["speed"]["variants"].items():
        rows.append([f"`{name}`", v["images_per_s"], v["image_ratio_to_eager"], v["texts_per_s"],
                     v["text_ratio_to_eager"], v["image_min_cosine"], v["text_min_cosine"],
                     result.get("batch_abs_diff", {}).get(name)])
    return {"columns": ["variant (ViT-B/32)", "images/s", "× eager", "texts/s", "× eager", "image min cos",
                        "text min cos", "batch-32 vs alone max abs diff"], "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32, help="images in the one timed image batch")
    ap.add_argument("--texts", type=int, default=256, help="captions in the one timed text batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, of {', '.join(VARIANTS + OPTIONAL)}")
    ap.add_argument("--heldout", type=int, default=128, help="held-out shapes for the tiny-shapes fidelity")
    ap.add_argument("--profile", action="store_true", help="add the top operators of eager and bf16")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "clipzoo" / "bench-runtimes")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bf16_speed.json")
    args = ap.parse_args(argv)
    names = ["eager"] + [v for v in args.variants.split(",") if v and v != "eager"]
    unknown = sorted(set(names) - set(VARIANTS + OPTIONAL))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; use of {', '.join(VARIANTS + OPTIONAL)}")
    import torch

    from clipzoo.runtime.bf16 import check_cpu

    check_cpu()  # a CPU without native bf16: the one-line reason, nothing measured
    torch.set_num_threads(args.threads)
    weights = speed_model(args.cache_dir, args.model)
    start = machine_info()
    texts = [f"a photo of {i} {w} things on a {c} background" for i, (w, c) in
             enumerate(zip(["red", "round", "small", "blue", "tall"] * args.texts, ["dark", "white"] * args.texts))
             ][:args.texts]
    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(weights, names)
        eager, _ = variants["eager"]
        pixels = eager.pixels(write_photos(Path(tmp) / "photos", max(args.batch_size, 32)))
        result = {"benchmark": "bf16_speed", "model": f"{args.model} (random weights, seed 0)",
                  "batch_size": args.batch_size, "texts": args.texts, "rounds": args.rounds,
                  "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "goals": GOALS,
                  "speed": speed(args, variants, pixels[:args.batch_size], texts)}
        result["batch_abs_diff"] = {n: batch_diff(m, ctx, pixels, texts) for n, (m, ctx) in variants.items()
                                    if n in ("eager", "bf16")}
        if args.profile:
            result["profile"] = {n: profile_top(m, ctx, pixels[:args.batch_size], texts)
                                 for n, (m, ctx) in variants.items() if n in ("eager", "bf16")}
        result["tiny_shapes"] = tiny_fidelity(args, Path(tmp))
    result["table"] = table(result)
    result["machine"] = {**machine_info(), "load_average_at_start": start["load_average"]}
    write_result(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=1))
    return result


if __name__ == "__main__":
    main()
