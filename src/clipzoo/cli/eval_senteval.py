"""``clipzoo eval senteval --data-root DIR --tasks MR,TREC --model M``: SentEval's transfer tasks (thin over
:mod:`clipzoo.eval.senteval`); prints the JSON record, ``--output FILE`` writes it."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import ClipzooError
from ..files import atomic_write_text, check_output_file
from ._common import (
    CacheDirOpt,
    DeviceOpt,
    ModelNameOpt,
    PrecisionOpt,
    TrustPickleOpt,
    load_model,
    note,
    print_json,
    user_errors,
)


@user_errors
def senteval(
    model: str = typer.Option(..., "--model", "-m", show_default=False,
                              help="Model spec (any form clipzoo.load takes)."),
    data_root: Path = typer.Option(..., "--data-root", show_default=False,
                                   help="SentEval's data folder (holding downstream/MR, …, or MR, … directly)."),
    tasks: str = typer.Option("MR,CR,SUBJ,MPQA,SST2,TREC,MRPC", "--tasks", help="Comma-separated tasks."),
    kfold: int = typer.Option(5, "--kfold", help="Folds of SentEval's cross-validation (its default: 5)."),
    seed: int = typer.Option(1111, "--seed", help="SentEval's seed."),
    batch_size: int = typer.Option(128, "--batch-size", help="Sentences per batch."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the result JSON here."),
    device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32", trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """SentEval transfer tasks: logistic regression on sentence embeddings, SentEval's k-fold protocol.

    \b
      clipzoo eval senteval --data-root SentEval/data --tasks MR,CR,TREC -m MODEL -o results/senteval.json
    """
    from clipzoo.eval.senteval import load_senteval_task, senteval_evaluate

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    check_output_file(output, [data_root], "--output", ClipzooError)
    for name in names:  # check the files before loading the model
        load_senteval_task(data_root, name)
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    result = senteval_evaluate(comparator, data_root, names, kfold=kfold, seed=seed, batch_size=batch_size,
                               model_name=model_name or model)
    print_json(result)
    if output is not None:
        atomic_write_text(output, json.dumps(result, indent=2) + "\n")
        note(f"wrote {output}")
