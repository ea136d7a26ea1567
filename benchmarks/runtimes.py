"""The runtimes side by side in one run (issue 22 §1–§3): speed on ViT-B/32, fidelity on the embedded model.

Speed — ViT-B/32 with **random weights** (no download; fixed seed, kept in ``--cache-dir`` so exports and
calibrations are reused), ``--images`` generated photo-like 640×480 JPEGs and ``--texts`` captions:

- **peer**: what a user writes with open_clip — ``create_model_and_transforms(name, pretrained=FILE)``, a
  ``torch.utils.data.DataLoader`` over the paths (PIL open → ``preprocess``, ``num_workers`` = CPU count,
  batch ``--batch-size``) → ``encode_image`` under ``torch.no_grad``; texts: ``tokenizer`` → ``encode_text``.
- **clipzoo RUNTIME**: ``clipzoo.embed.embed_to_file`` (the code behind ``clipzoo embed``) for each of
  ``--runtimes``; texts through ``encode_text``. Every runtime is loaded and warmed first (its load time
  recorded); then ``--rounds`` rounds run the peer and each runtime in turn, and a ratio is the **median over
  rounds of the runtime's rate / the peer's rate in the same round** (this host's speed moves by a fifth or more
  from minute to minute: a ratio between minutes apart measured that, not the runtimes); each rate is the median
  of its rounds, each round's in the JSON. The cosine is each row's to the peer's row of the same image (random
  weights: a speed check, not a fidelity one).

Fidelity — the embedded, trained ``clipzoo/tiny-shapes`` (ModifiedResNet; random ViT weights have activation
statistics no trained model has): each runtime's min cosine to eager fp32 on ``--heldout`` held-out shapes
and their captions, zero-shot acc1 on them, and batch independence (the same input alone vs inside a batch
of 32: max abs difference of the row). ``runtime="auto"``: what it chooses for each model and why.

    python benchmarks/runtimes.py --images 128 --texts 256 --out benchmarks/results/runtimes.json

Writes JSON (with the machine's CPU flags, cores and load average) and prints it.
"""
from __future__ import annotations

import argparse
import json
import os
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

GOALS = {"image_speedup": 4.0, "text_speedup": 4.0, "int8_min_cosine": 0.995, "acc1_points": 0.5,
         "batch_abs_diff": 1e-6, "bf16_speedup": 1.6, "bf16_min_cosine": 0.999}


def peer_images(name: str, weights: Path, paths: list[str], batch_size: int):
    """The open_clip loop as a user writes it: create_model_and_transforms + a DataLoader."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(weights))
    model.eval()

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return preprocess(Image.open(paths[i]).convert("RGB"))

    def run(n=None):
        loader = torch.utils.data.DataLoader(Files(), batch_size=batch_size, num_workers=os.cpu_count())
        rows = []
        with torch.no_grad():
            for i, batch in enumerate(loader):
                rows.append(torch.nn.functional.normalize(model.encode_image(batch), dim=-1))
                if n is not None and i + 1 >= n:
                    break
        return torch.cat(rows).numpy()

    return model, run


def peer_texts(name: str, model, texts: list[str], batch_size: int):
    import open_clip
    import torch

    tok = open_clip.get_tokenizer(name)
    with torch.no_grad():
        return torch.cat([torch.nn.functional.normalize(model.encode_text(tok(texts[s:s + batch_size])), dim=-1)
                          for s in range(0, len(texts), batch_size)]).numpy()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def batch_diff(model, images: list, texts: list[str]) -> float:
    """Largest |row alone - the same row inside a batch of 32| over both towers."""
    diffs = []
    for encode, items in ((model.encode_image, images[:32]), (model.encode_text, texts[:32])):
        alone = encode(items[5:6]).float()
        batch = encode(items, batch_size=32).float()
        diffs.append(float((alone[0] - batch[5]).abs().max()))
    return max(diffs)


def speed(args, tmp: Path, cache: Path) -> dict:
    """Folder -> embeddings and texts on ViT-B/32 (random weights): every runtime loaded first, then ``--rounds``
    rounds of the peer and each runtime in turn; a ratio is the median over rounds of the runtime's rate / the
    peer's in the same round."""
    import numpy as np

    import clipzoo
    from clipzoo.embed import DistributedInfo, embed_to_file

    weights = speed_model(cache, args.model)
    paths = write_photos(tmp / "photos", args.images)
    texts = [f"a photo of {i} {w} things on a {c} background" for i, (w, c) in
             enumerate(zip(["red", "round", "small", "blue", "tall"] * args.texts, ["dark", "white"] * args.texts))
             ][:args.texts]
    model, run = peer_images(args.model, weights, paths, args.batch_size)
    run(1)
    peer_texts(args.model, model, texts[:64], args.text_batch)
    loaded = {}
    for runtime in args.runtimes:
        m, load_s = timed(lambda r=runtime: clipzoo.load(str(weights), runtime=r, cache_dir=str(cache)))
        embed_to_file(m, tmp / "warm.npy", images=paths[:args.batch_size], batch_size=args.batch_size,
                      info=DistributedInfo())
        m.encode_text(texts)  # every text length group's shape once
        loaded[runtime] = (m, load_s)
        print(f"loaded {runtime} as {m.runtime} in {load_s:.1f} s", flush=True)

    def images(m):
        return embed_to_file(m, tmp / "rows.npy", images=paths, batch_size=args.batch_size, info=DistributedInfo())

    rounds: list[dict] = []
    loads: list[float] = []  # each round's 1-minute load average, as bf16_speed.py records it
    rows: dict = {}
    for r in range(args.rounds):
        (ref, secs), (text_ref, tsecs) = timed(run), timed(lambda: peer_texts(args.model, model, texts,
                                                                              args.text_batch))
        this = {"peer": (len(paths) / secs, len(texts) / tsecs)}
        for runtime, (m, _) in loaded.items():
            isecs = timed(lambda m=m: images(m))[1]
            trows, tsecs = timed(lambda m=m: m.encode_text(texts, batch_size=args.text_batch).float().numpy())
            this[runtime] = (len(paths) / isecs, len(texts) / tsecs)
            rows[runtime] = (np.load(tmp / "rows.npy"), trows)
        rounds.append(this)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"round {r + 1}: " + json.dumps({k: [round(x, 2) for x in v] for k, v in this.items()}), flush=True)
    return {**summarise(rounds, loaded, rows, ref, text_ref), "load_average_1min_per_round": loads}


def summarise(rounds: list[dict], loaded: dict, rows: dict, ref, text_ref) -> dict:
    """The per-round rates as medians and per-round ratios to the peer (the JSON's ``speed``)."""
    import numpy as np

    def median(values) -> float:
        return round(float(np.median(values)), 3)

    peer = [r["peer"] for r in rounds]
    out = {"rounds": len(rounds), "peer": {"images_per_s": median([p[0] for p in peer]),
                                           "texts_per_s": median([p[1] for p in peer]),
                                           "images_per_s_runs": [round(p[0], 2) for p in peer],
                                           "texts_per_s_runs": [round(p[1], 2) for p in peer]},
           "runtimes": {}}
    for runtime, (m, load_s) in loaded.items():
        got = [r[runtime] for r in rounds]
        image_rows, text_rows = rows[runtime]
        entry = {"ran_as": m.runtime, "load_s": round(load_s, 1),
                 "images_per_s": median([g[0] for g in got]), "texts_per_s": median([g[1] for g in got]),
                 "images_per_s_runs": [round(g[0], 2) for g in got], "texts_per_s_runs": [round(g[1], 2) for g in got],
                 "image_speedup": median([g[0] / p[0] for g, p in zip(got, peer)]),
                 "text_speedup": median([g[1] / p[1] for g, p in zip(got, peer)]),
                 "image_speedup_runs": [round(g[0] / p[0], 3) for g, p in zip(got, peer)],
                 "image_min_cosine_to_peer": float((image_rows * ref).sum(1).min()),
                 "text_min_cosine_to_peer": float((text_rows * text_ref).sum(1).min())}
        if getattr(m, "runtime_choice", None) is not None:
            entry["auto_reason"] = m.runtime_choice.reason
        out["runtimes"][runtime] = entry
    return out


def fidelity(args, tmp: Path, cache: Path) -> dict:
    """The embedded model: min cosine to eager fp32, zero-shot acc1, batch independence, per runtime."""
    import torch

    import clipzoo
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.eval.runner import Evaluator
    from clipzoo.train import recipes

    ref = clipzoo.load(args.fidelity_model)
    held = recipes.write_heldout(f"shapes-heldout:{args.heldout}", tmp / "held", ref.image_size)
    ds = open_dataset(held)
    records = list(ds)[:128]
    images = [r.image for r in records]
    texts = [r.captions[0] for r in records]

    def acc1(model) -> float:
        return float(Evaluator(model, workers=0).zeroshot(open_dataset(held)).metrics["acc1"])

    base = acc1(ref)
    ref_i, ref_t = ref.encode_image(images), ref.encode_text(texts)
    out = {"model": args.fidelity_model, "heldout": args.heldout, "acc1_fp32": round(base, 4),
           "eager_batch_abs_diff": batch_diff(ref, images, texts), "runtimes": {}}
    for runtime in args.runtimes:
        m = clipzoo.load(args.fidelity_model, runtime=runtime, cache_dir=str(cache))
        with torch.no_grad():
            ci = float((m.encode_image(images).float() * ref_i).sum(-1).min())
            ct = float((m.encode_text(texts).float() * ref_t).sum(-1).min())
        a = acc1(m)
        out["runtimes"][runtime] = {"ran_as": m.runtime, "image_min_cosine": round(ci, 6),
                                    "text_min_cosine": round(ct, 6), "acc1": round(a, 4),
                                    "acc1_delta_points": round(100 * (a - base), 2),
                                    "batch_abs_diff": batch_diff(m, images, texts)}
        print(args.fidelity_model, runtime, json.dumps(out["runtimes"][runtime]), flush=True)
    return out


def table(speed_: dict, fid: dict) -> dict:
    rows = [["open_clip loop (peer)", speed_["peer"]["images_per_s"], 1.0, speed_["peer"]["texts_per_s"], 1.0,
             None, None, None, None, fid.get("eager_batch_abs_diff")]]
    for r, s in speed_["runtimes"].items():
        f = fid["runtimes"].get(r, {})
        name = f"clipzoo `{r}`" + (f" → `{s['ran_as']}`" if s["ran_as"] != r else "")
        rows.append([name, s["images_per_s"], s["image_speedup"], s["texts_per_s"], s["text_speedup"],
                     f.get("image_min_cosine"), f.get("text_min_cosine"), f.get("acc1_delta_points"),
                     f.get("ran_as"), f.get("batch_abs_diff")])
    return {"columns": ["variant", "images/s (ViT-B/32)", "× peer", "texts/s (ViT-B/32)", "× peer",
                        "image min cos (tiny-shapes)", "text min cos (tiny-shapes)", "Δ acc1 points (tiny-shapes)",
                        "tiny-shapes ran as", "batch-32 vs alone max abs diff (tiny-shapes)"], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--text-batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the peer and every runtime in turn (medians)")
    ap.add_argument("--runtimes", default="eager,onnx,onnx-int8,onnx-int8-static,openvino-int8,bf16,auto")
    ap.add_argument("--fidelity-model", default="clipzoo/tiny-shapes")
    ap.add_argument("--heldout", type=int, default=385)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "clipzoo" / "bench-runtimes")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "runtimes.json")
    args = ap.parse_args()
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    import torch

    start = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        fid = fidelity(args, Path(tmp), args.cache_dir)
        spd = speed(args, Path(tmp), args.cache_dir)
    result = {"benchmark": "runtimes", "speed_model": f"{args.model} (random weights, seed 0)",
              "fidelity_model": f"{args.fidelity_model} (embedded, trained)", "images": args.images,
              "texts": args.texts, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
              "goals": GOALS, "speed": spd, "fidelity": fid, "table": table(spd, fid),
              "machine": {**machine_info(), "load_average_at_start": start["load_average"]}}
    write_result(args.out, result)
    print(json.dumps(result["table"], indent=1))


if __name__ == "__main__":
    main()
