"""``clipzoo eval elevater --data-root DIR --mode zeroshot|linear|fewshot|finetune [--shots 5] --model M``.

Thin over :mod:`clipzoo.eval.elevater`: every ELEVATER data set found under ``--data-root`` (vision-datasets'
format), a table per data set plus the ELEVATER average, printed as JSON; ``--output PREFIX`` writes
``PREFIX.json`` and ``PREFIX.md``.
"""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import (
    CacheDirOpt,
    DeviceOpt,
    ModelNameOpt,
    PrecisionOpt,
    TrustPickleOpt,
    fail,
    load_model,
    note,
    print_json,
    user_errors,
)


def _numbers(text: str, flag: str, kind=int) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{flag} takes comma-separated numbers, got {text!r}")


@user_errors
def elevater(
    model: str = typer.Option(..., "--model", "-m", show_default=False,
                              help="Model spec (any form clipzoo.load takes)."),
    data_root: Path = typer.Option(..., "--data-root", show_default=False,
                                   help="Folder with the ELEVATER data sets (vision-datasets format)."),
    mode: str = typer.Option("zeroshot", "--mode", help="zeroshot, linear, fewshot or finetune."),
    shots: int | None = typer.Option(None, "--shots", help="Shots per class (ELEVATER: 5, 20, 50) "
                                     "[default: 5 for fewshot; the full train split for finetune]."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Few-shot sampling seeds (ELEVATER's: 0,1,2)."),
    datasets: str | None = typer.Option(None, "--datasets", help="Comma-separated data set names "
                                        "[default: every one found under --data-root]."),
    epochs: int = typer.Option(10, "--epochs", help="linear, fewshot, finetune: epochs per training run."),
    lrs: str | None = typer.Option(None, "--lrs", help="linear, fewshot, finetune: learning rates to search "
                                   "[default: ELEVATER's 1e-6 … 1e-1]."),
    wds: str | None = typer.Option(None, "--wds", help="linear, fewshot, finetune: weight decays to search "
                                   "[default: ELEVATER's coarse-to-fine search over 1e-6 … 1e6]."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per batch."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write PREFIX.json and PREFIX.md."),
    device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32", trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """ELEVATER's image-classification protocol: a score per data set and the ELEVATER average.

    \b
      clipzoo eval elevater --data-root elevater/ --mode zeroshot -m MODEL -o results/elevater_zeroshot
      clipzoo eval elevater --data-root elevater/ --mode fewshot --shots 5 -m MODEL
      clipzoo eval elevater --data-root elevater/ --mode finetune --shots 5 -m MODEL
    """
    from clipzoo.eval.elevater import MODES, run_elevater, write_elevater
    from clipzoo.eval.elevater_data import open_sets
    from clipzoo.eval.elevater_finetune import FinetuneConfig

    if mode not in MODES:
        fail(f"unknown --mode {mode!r}: choose from {', '.join(MODES)}")
    if batch_size < 1 or epochs < 1:
        fail("--batch-size and --epochs must be at least 1")
    names = [n.strip() for n in datasets.split(",") if n.strip()] if datasets else None
    open_sets(data_root, names)  # check the data before loading the model
    cfg = FinetuneConfig(epochs=epochs, batch_size=batch_size)
    if lrs:
        cfg.lrs = _numbers(lrs, "--lrs", float)
    if wds:
        cfg.wds = _numbers(wds, "--wds", float)
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    result = run_elevater(comparator, data_root, mode, datasets=names, shots=shots, seeds=_numbers(seeds, "--seeds"),
                          batch_size=batch_size, finetune_config=cfg, model_name=model_name or model)
    print_json(result)
    if output is not None:
        note("wrote " + ", ".join(write_elevater(result, output).values()))
