"""Zero-shot evaluation: clip_benchmark vs clipzoo on the same model and data, in one run.

Both read the same CLIP_benchmark-layout webdataset folder of generated shapes (written here), with the
same open_clip model (ViT-B-32 random weights by default: no download), the same batch size and the
same number of decode workers. clip_benchmark runs as its CLI does: ``build_wds_dataset`` →
``DataLoader(dataset.batched(bs), num_workers=W)`` → ``zeroshot_classification.evaluate``. clipzoo runs
``Evaluator.zeroshot(open_dataset(folder))``. Prints images/s for each, the ratio, and checks that
both give the same acc1 / acc5 / mean per-class recall.

    python benchmarks/eval_zeroshot.py --n 1000 --model ViT-B-32 --workers 2 --batch-size 64
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def write_cb_layout(root: Path, n: int, image_size: int, shard_size: int = 250) -> None:
    """Generated shapes in CLIP_benchmark's layout: test/{0..}.tar (webp + cls), nshards.txt, class names."""
    import webdataset as wds

    from clipzoo.datasets import TEMPLATES, ShapesDataset, classnames

    ds = ShapesDataset(n, seed=0, image_size=image_size)
    names = classnames("shape")
    (root / "test").mkdir(parents=True)
    with wds.ShardWriter(str(root / "test" / "%d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i in range(n):
            s = ds[i]
            buf = io.BytesIO()
            s.image.save(buf, format="jpeg", quality=90)
            sink.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "cls": str(names.index(s.labels["shape"]))})
    (root / "test" / "nshards.txt").write_text(str(-(-n // shard_size)))
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")


def write_model(path: Path, name: str) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(name)
    cfg = open_clip.get_model_config(name)
    meta = {"format": "pt", "open_clip_config": json.dumps({"model_cfg": cfg})}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)


def run_clip_benchmark(ref, transform, root: Path, batch_size: int, workers: int):
    import open_clip
    import torch
    from clip_benchmark.datasets.builder import build_wds_dataset
    from clip_benchmark.metrics import zeroshot_classification as zsc

    def accuracy(output, target, topk=(1,)):  # clip-benchmark 1.6.2's helper breaks under NumPy >= 2.4
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        n = len(target)
        return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).item()) / n for k in topk]

    zsc.accuracy = accuracy
    t0 = time.perf_counter()
    ds = build_wds_dataset("wds/shapes", transform, split="test", data_dir=str(root))
    loader = torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, num_workers=workers)
    metrics = zsc.evaluate(ref, loader, open_clip.get_tokenizer("ViT-B-32"), ds.classes, ds.templates,
                           device="cpu", amp=False)
    return time.perf_counter() - t0, metrics


def run_clipzoo(model, root: Path, batch_size: int, workers: int):
    from clipzoo.datasets.readers import open_dataset
    from clipzoo.eval.runner import Evaluator

    t0 = time.perf_counter()
    result = Evaluator(model, batch_size=batch_size, workers=workers).zeroshot(open_dataset(root))
    return time.perf_counter() - t0, result.metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--image-size", type=int, default=128, help="side of the generated JPEGs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the two runs this many times")
    args = ap.parse_args()

    import torch

    import clipzoo

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cb_layout(tmp / "data", args.n, args.image_size, shard_size=max(1, -(-args.n // 8)))
        write_model(tmp / "model.safetensors", args.model)
        model = clipzoo.load(str(tmp / "model.safetensors"))
        ref = model.model  # the same open_clip module, weights shared
        ref.eval()
        times = {"clip_benchmark": [], "clipzoo": []}
        for _ in range(args.repeats):
            t_cb, m_cb = run_clip_benchmark(ref, model.transform, tmp / "data", args.batch_size, args.workers)
            t_cz, m_cz = run_clipzoo(model, tmp / "data", args.batch_size, args.workers)
            times["clip_benchmark"].append(t_cb)
            times["clipzoo"].append(t_cz)
        same = all(abs(m_cz[k] - m_cb[k]) < 1e-9 for k in m_cz)
        best = {k: min(v) for k, v in times.items()}
        print(f"zero-shot, {args.model} (random weights), {args.n} images, batch {args.batch_size}, "
              f"{args.workers} workers, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
        for k, t in best.items():
            print(f"  {k:15s} {t:7.2f} s  {args.n / t:7.1f} images/s")
        print(f"  ratio clipzoo / clip_benchmark throughput: {best['clip_benchmark'] / best['clipzoo']:.2f}x")
        print(f"  same metrics: {same}  clipzoo {json.dumps(m_cz)}  clip_benchmark "
              f"{json.dumps({k: m_cb[k] for k in m_cz})}")


if __name__ == "__main__":
    main()
