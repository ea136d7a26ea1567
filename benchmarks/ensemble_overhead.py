"""Ensemble overhead: ``Ensemble.compare`` vs the same models run separately by hand, in one run.

Issue 6 §6: scoring N images × M texts with an ensemble of 3 models adds at most 5 % over running the 3
models separately. The models are three open_clip CLIPs with random (seeded) weights written offline as
open_clip hub folders — different towers, image sizes (64 / 96 / 128 px) and widths, so each costs a
realistic fraction of a second per call — and, as a second ensemble, the same three plus the embedded
``clipzoo/tiny-shapes`` (its own 24-token tokenizer). Inputs: N generated shapes as PIL images, M captions.

- by hand: for each model ``a = m.encode_image(pils)``, ``b = m.encode_text(texts)``, ``a @ b.T``, summed
  with the normalised weights;
- ensemble: ``clipzoo.Ensemble(models, weights=…).compare(image=pils, text=texts).similarity``.

The two are interleaved (A, B, A, B, …) after a warm-up call of each; medians of the repeats are compared.

    python benchmarks/ensemble_overhead.py --images 64 --texts 32 --repeats 7
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

GOAL = 0.05  # the ensemble may add at most 5 %

_TEXT = {"context_length": 77, "vocab_size": 49408}
# three different towers: a ViT at 64 px, a wider ViT at 96 px, a ModifiedResNet at 128 px
CONFIGS = {
    "vit64": {"embed_dim": 192,
              "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8},
              "text_cfg": {**_TEXT, "width": 192, "heads": 3, "layers": 3}},
    "vit96": {"embed_dim": 256,
              "vision_cfg": {"image_size": 96, "layers": 4, "width": 256, "patch_size": 12},
              "text_cfg": {**_TEXT, "width": 256, "heads": 4, "layers": 3}},
    "rn128": {"embed_dim": 128,
              "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 32},
              "text_cfg": {**_TEXT, "width": 128, "heads": 2, "layers": 3}},
}
WEIGHTS = [2.0, 1.0, 1.0, 0.5]


def build_models(root: Path):
    """The three random-weight models, written as open_clip hub folders and loaded through clipzoo."""
    import clipzoo
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    models = []
    for seed, (name, cfg) in enumerate(CONFIGS.items()):
        folder = write_open_clip_hub_folder(root / name, seed=seed, config=copy.deepcopy(cfg))
        models.append((name, clipzoo.load(str(folder))))
    return models


def by_hand(models, weights, images, texts):

    total = sum(weights)
    out = None
    for m, w in zip(models, weights):
        a = m.encode_image(images)
        b = m.encode_text(texts)
        part = (w / total) * (a @ b.T)
        out = part if out is None else out + part
    return out


def via_ensemble(ensemble, images, texts):
    return ensemble.compare(image=images, text=texts).similarity


def measure(fn_a, fn_b, repeats: int):
    """(wall, CPU) timings (s) of two zero-argument callables, after one warm-up call of each, interleaved in pairs
    whose order alternates (A B, B A, A B, …) so that a drift in the machine's load hits both alike."""
    ref_a, ref_b = fn_a(), fn_b()
    ta, tb = [], []

    def timed(fn, into):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        into.append((time.perf_counter() - t0, time.process_time() - c0))

    for r in range(repeats):
        if r % 2 == 0:
            timed(fn_a, ta), timed(fn_b, tb)
        else:
            timed(fn_b, tb), timed(fn_a, ta)
    return ref_a, ref_b, ta, tb


def outside_models(models, ensemble, images, texts, repeats: int = 3):
    """Median time (s) per call spent outside the models' encoders — the part each variant adds itself:
    (call time − time inside ``encode_image`` / ``encode_text``) by hand, (call time − time inside the
    members' ``encode``) for the ensemble. Independent of how loaded the machine is, unlike the call time."""
    inside = [0.0]

    def timed(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inside[0] += time.perf_counter() - t0
        return wrapper

    def run(call, patch):
        out = []
        for _ in range(repeats):
            for m in models:
                for name in patch:
                    object.__setattr__(m, name, timed(getattr(type(m), name).__get__(m)))
            inside[0] = 0.0
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0 - inside[0])
            for m in models:
                for name in patch:
                    del m.__dict__[name]
        return statistics.median(out)

    weights = WEIGHTS[:len(models)]
    hand = run(lambda: by_hand(models, weights, images, texts), ("encode_image", "encode_text"))
    ens = run(lambda: via_ensemble(ensemble, images, texts), ("encode",))
    return hand, ens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timed calls of each variant")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import torch

    import clipzoo
    from clipzoo.datasets import ShapesDataset

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = ShapesDataset(max(args.images, args.texts), seed=0, image_size=128)
    images = [ds[i].image for i in range(args.images)]
    texts = [ds[i].captions[0] for i in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp:
        random_models = build_models(Path(tmp))
        shapes = ("tiny-shapes", clipzoo.load("clipzoo/tiny-shapes"))
        load = os.getloadavg()
        print(f"{args.images} images (PIL, 128 px) x {args.texts} texts; {torch.get_num_threads()} torch threads, "
              f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        # per-model cost, for the record
        for name, m in random_models + [shapes]:
            ti, tt = [], []
            for _ in range(3):
                t0 = time.perf_counter()
                m.encode_image(images)
                t1 = time.perf_counter()
                m.encode_text(texts)
                ti.append(t1 - t0)
                tt.append(time.perf_counter() - t1)
            print(f"  {name:12s} {sum(p.numel() for p in m.parameters()) / 1e6:6.1f} M params: encode_image "
                  f"{1000 * statistics.median(ti):6.1f} ms, encode_text {1000 * statistics.median(tt):6.1f} ms "
                  f"(median of 3)")
        rows = []
        for label, members in (("3 models", random_models), ("3 models + tiny-shapes", random_models + [shapes])):
            models = [m for _, m in members]
            weights = WEIGHTS[:len(models)]
            ensemble = clipzoo.Ensemble(models, weights=weights)
            ref_h, ref_e, th, te = measure(functools.partial(by_hand, models, weights, images, texts),
                                           functools.partial(via_ensemble, ensemble, images, texts), args.repeats)
            diff = float((ref_h - ref_e).abs().max())
            wh, we = [t[0] for t in th], [t[0] for t in te]
            ch, ce = [t[1] for t in th], [t[1] for t in te]
            mh, me = statistics.median(wh), statistics.median(we)
            # the overhead: median over the adjacent pairs of ensemble / by-hand (robust to load swings
            # that last longer than a pair); the ratio of the medians and the CPU-time ratio are printed too
            over = statistics.median(e / h for h, e in zip(wh, we)) - 1
            over_cpu = statistics.median(e / h for h, e in zip(ch, ce)) - 1
            ok = over <= GOAL and diff <= 1e-5
            rows.append((label, mh, me, over, me / mh - 1, over_cpu, diff, ok))
            print(f"{label}: by hand {1000 * mh:.1f} ms, ensemble {1000 * me:.1f} ms (wall, medians of "
                  f"{args.repeats}); overhead (median of pair ratios) {100 * over:+.2f} %, ratio of medians "
                  f"{100 * (me / mh - 1):+.2f} %, CPU time (median of pair ratios) {100 * over_cpu:+.2f} %; "
                  f"max |diff| {diff:.2e} -> {'PASS' if ok else 'FAIL'} (goal <= {100 * GOAL:.0f} %, diff <= 1e-5)")
            own_h, own_e = outside_models(models, ensemble, images, texts)
            print(f"  time outside the models' encoders per call: by hand {1000 * own_h:.3f} ms, ensemble "
                  f"{1000 * own_e:.3f} ms -> the ensemble's own work adds {1000 * (own_e - own_h):+.3f} ms "
                  f"= {100 * (own_e - own_h) / mh:+.4f} % of the by-hand call")
            print(f"  by hand  wall ms: {' '.join(f'{1000 * t:.0f}' for t in wh)}   CPU ms: "
                  f"{' '.join(f'{1000 * t:.0f}' for t in ch)}")
            print(f"  ensemble wall ms: {' '.join(f'{1000 * t:.0f}' for t in we)}   CPU ms: "
                  f"{' '.join(f'{1000 * t:.0f}' for t in ce)}")
        load = os.getloadavg()
        print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print("\n| date | ensemble | images × texts | by hand (median) | Ensemble.compare (median) | overhead "
              "(median pair ratio) | ratio of medians | CPU-time overhead | max abs diff | goal ≤ 5 % |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|:---:|")
        for label, mh, me, over, over_m, over_cpu, diff, ok in rows:
            print(f"| {time.strftime('%Y-%m-%d')} | {label} | {args.images} × {args.texts} | {1000 * mh:.0f} ms | "
                  f"{1000 * me:.0f} ms | {100 * over:+.1f} % | {100 * over_m:+.1f} % | "
                  f"{100 * over_cpu:+.1f} % | {diff:.1e} | "
                  f"{'PASS' if ok else 'FAIL'} |")


if __name__ == "__main__":
    main()
