"""``clipzoo eval mteb --model M --tasks T1,T2 [--output-dir DIR]``.

Thin over :mod:`clipzoo.eval.mteb_model`: the model behind mteb's encoder interface, mteb's own evaluation on
the named tasks (MTEB text tasks, MIEB image and image–text tasks, or custom tasks as ``FILE.py:CLASS``),
the main scores printed as JSON; ``--output-dir`` keeps mteb's result files there plus ``summary.json``.
"""
from __future__ import annotations

import json
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


@user_errors
def mteb(
    model: str = typer.Option(..., "--model", "-m", show_default=False,
                              help="Model spec (any form clipzoo.load takes)."),
    tasks: str = typer.Option(..., "--tasks", show_default=False,
                              help="Comma-separated mteb task names (STS12, CIFAR10ZeroShot, …) or custom tasks "
                                   "as FILE.py:CLASS / module:CLASS (subclasses of mteb's task classes)."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Keep mteb's result files here, and "
                                           "summary.json [default: print only]."),
    mteb_name: str | None = typer.Option(None, "--mteb-name", help="Model name in mteb's results (org/name) "
                                         "[default: the model's display name]."),
    batch_size: int = typer.Option(64, "--batch-size", help="Texts / images per batch."),
    device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32", trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """MTEB (text) and MIEB (image, image–text) tasks through mteb's own evaluation.

    \b
      clipzoo eval mteb -m MODEL --tasks STS12,SciFact --output-dir results/mteb
      clipzoo eval mteb -m MODEL --tasks CIFAR10ZeroShot,Flickr30kI2TRetrieval
      clipzoo eval mteb -m MODEL --tasks my_tasks.py:MyRetrieval
    """
    from clipzoo.extras import require

    require("mteb", "clipzoo eval mteb")
    from clipzoo.eval.mteb_model import resolve_tasks, run_mteb

    if batch_size < 1:
        fail("--batch-size must be at least 1")
    task_objects = resolve_tasks(tasks.split(","))  # check the tasks before loading the model
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    summary = run_mteb(comparator, task_objects, output_dir=output_dir, name=mteb_name, batch_size=batch_size)
    print_json(summary)
    if output_dir is not None:
        path = Path(output_dir) / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        note(f"wrote mteb's results under {output_dir} and {path}")
