"""``clipzoo eval voc2007-multilabel --data-root DIR --model M [--split test] [--output FILE]``.

Thin over :mod:`clipzoo.eval.multilabel`: zero-shot multi-label classification of PASCAL VOC 2007 as
CLIP_benchmark's ``voc2007_multilabel`` runs it (mean average precision over the 20 classes), printed as a
CLIP_benchmark-style JSON record; ``--output FILE`` writes it.
"""
from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ClipzooError
from ..files import check_output_file
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
def voc2007_multilabel(
    model: str = typer.Option(..., "--model", "-m", show_default=False,
                              help="Model spec (any form clipzoo.load takes)."),
    data_root: Path = typer.Option(..., "--data-root", show_default=False,
                                   help="Folder holding VOCdevkit/VOC2007 (PASCAL VOC 2007's layout)."),
    split: str = typer.Option("test", "--split", help="VOC split: train, val, trainval or test."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per batch."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the result JSON here."),
    device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32", trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """Zero-shot multi-label VOC 2007 (CLIP_benchmark's voc2007_multilabel): mean average precision.

    \b
      clipzoo eval voc2007-multilabel --data-root VOC/ -m MODEL -o results/voc2007_multilabel.json
    """
    from clipzoo.eval.multilabel import VOC2007_TEMPLATES, read_voc2007, zeroshot_multilabel
    from clipzoo.eval.results import make_result, write_result
    from clipzoo.eval.runner import model_fields

    if batch_size < 1:
        fail("--batch-size must be at least 1")
    check_output_file(output, [data_root], "--output", ClipzooError)
    data = read_voc2007(data_root, split)  # check the data before loading the model
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    metrics = zeroshot_multilabel(comparator, data.paths, data.labels, data.classes, list(VOC2007_TEMPLATES),
                                  batch_size=batch_size)
    arch, pretrained = model_fields(comparator)
    record = make_result(data.name, model_name or arch, pretrained, "zeroshot", metrics,
                         classnames=data.classes, templates=list(VOC2007_TEMPLATES), split=split)
    print_json(record)
    if output is not None:
        note(f"wrote {write_result(output, record)}")
