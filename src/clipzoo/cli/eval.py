"""``clipzoo eval TASK --model M --dataset D [--output FILE]``, ``eval all`` and ``eval report``.

Thin over :mod:`clipzoo.eval`: open the data set, load the model, run an :class:`Evaluator` task, print
the CLIP_benchmark-style JSON record on stdout and, with ``--output``, write it and its plots.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ClipzooError, one_line
from ..files import check_output_file, inside
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
from .eval_elevater import elevater
from .eval_mteb import mteb
from .eval_multilabel import voc2007_multilabel
from .eval_senteval import senteval

eval_app = typer.Typer(help="Evaluate a model: zero-shot, retrieval, linear probe, kNN, clustering, text tasks.",
                       no_args_is_help=True, rich_markup_mode=None)

ModelOpt = Annotated[str, typer.Option("--model", "-m", show_default=False,
                                       help="Model spec (any form clipzoo.load takes).")]
DatasetOpt = Annotated[str, typer.Option(
    "--dataset", "-d", show_default=False,
    help="Image folder, .csv/.tsv, .tar shards (brace patterns ok), .tfrecord files, a CLIP_benchmark "
         "webdataset folder or a `clipzoo data shapes` folder; local or s3:// gs:// https:// (fsspec).")]
TrainOpt = Annotated[str | None, typer.Option(
    "--train-dataset", help="Training data for linear-probe / knn [default: the 'train' split when the "
                            "data set has one, else a seeded stratified split of --dataset].")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split folder to read when the data set has several.")]
ImgKeyOpt = Annotated[str | None, typer.Option(
    "--img-key", help="CSV column / webdataset member / TFRecord key of the image.")]
CaptionKeyOpt = Annotated[str | None, typer.Option(
    "--caption-key", help="CSV column / member / key of the caption(s).")]
LabelKeyOpt = Annotated[str | None, typer.Option(
    "--label-key", help="CSV column / member / JSON field / key of the class label.")]
SeparatorOpt = Annotated[str | None, typer.Option(
    "--separator", help="CSV separator [default: tab for .tsv, comma for .csv].")]
ClassnamesOpt = Annotated[str | None, typer.Option(
    "--classnames", help="Class names: a .txt (one per line), a .json keyed by data set name (CLIP_benchmark's), "
                         "or built in: imagenet1k, cifar10, cifar100 [default: classnames.txt of the data set].")]
TemplatesOpt = Annotated[str | None, typer.Option(
    "--templates", help="Prompt templates with {c}: a .txt, a .json keyed by data set, or built in: openai_imagenet, "
                        "simple_imagenet, cifar10 [default: the data set's templates, else 'a photo of a {c}.'].")]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="Write the result JSON here (and its plots beside it).")]
PlotsOpt = Annotated[bool, typer.Option("--plots/--no-plots", help="With --output: write the plots too.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Decode processes [default: CPU count, at most 8].")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Fail on the first unreadable image instead of counting and skipping it.")]
FeaturesOpt = Annotated[Path | None, typer.Option(
    "--features-cache", help="Keep image features here and reuse them in later runs.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for splits, few-shot sampling and k-means.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")]
TrainFractionOpt = Annotated[float, typer.Option(
    "--train-fraction", help="Share of --dataset used for training when there is no train data.")]


def _open(dataset, split, img_key, caption_key, label_key, separator, classnames, templates):
    from clipzoo.datasets.readers import open_dataset

    return open_dataset(dataset, split, img_key=img_key, caption_key=caption_key, label_key=label_key,
                        separator=separator, classnames=classnames, templates=templates)


def _train_data(dataset, train_dataset, split, keys):
    """The explicit train data set, or the data set's own 'train' split when it has one."""
    from clipzoo.datasets.locations import isdir, join_url

    if train_dataset:
        return _open(train_dataset, "train", *keys)
    if split != "train" and isdir(dataset) and isdir(join_url(dataset, "train")):
        return _open(dataset, "train", *keys)
    return None


def _evaluator(model, device, precision, trust_pickle, model_name, cache_dir, batch_size, workers, strict,
               features_cache, progress, seed):
    from clipzoo.eval.runner import Evaluator

    if batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        fail(f"--workers must be 0 or more, got {workers}")
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    return Evaluator(comparator, batch_size=batch_size, workers=workers, strict=strict, cache_dir=features_cache,
                     progress=progress, seed=seed)


def _finish(result, output: Path | None, plots: bool) -> None:
    from clipzoo.eval.outputs import save_task_result

    record = result.record
    if record.get("skipped_images"):
        first = record["skipped"][0]
        note(f"skipped {record['skipped_images']} unreadable image(s) (listed in the result), first: "
             f"{first['input']}: {first['error']}")
    print_json(record)
    if output is not None:
        written = save_task_result(result, output, plots=plots, note=lambda m: note(f"note: {m}"))
        note("wrote " + ", ".join(str(p) for p in written))


def _data_guard(cli_inputs: list, *sources) -> tuple[list, list]:
    """(inputs, folders): what the run reads — the paths given, and each data set's own files (its sidecars,
    shards, listed images) — and the data set folders, which no output may go into."""
    from clipzoo.eval.outputs import data_folders, data_inputs

    inputs, folders = list(cli_inputs), []
    for source in sources:
        if source is not None:
            inputs += data_inputs(source)
            folders += data_folders(source)
    return inputs, folders


def _image_task(task: str, kw: dict) -> None:
    from clipzoo.eval.outputs import check_outputs, plot_paths

    keys = (kw["img_key"], kw["caption_key"], kw["label_key"], kw["separator"], kw["classnames"], kw["templates"])
    given = [kw["dataset"], kw.get("train_dataset"), kw["classnames"], kw["templates"], kw["features_cache"]]
    check_output_file(kw["output"], given, "--output", ClipzooError)  # before any work
    data = _open(kw["dataset"], kw["split"], *keys)  # check the data before loading the model
    train = _train_data(kw["dataset"], kw.get("train_dataset"), kw["split"], keys) \
        if task in ("knn", "linear-probe") else None
    if kw["output"] is not None:  # nor onto a file the data set reads, nor into its folder; plots included
        plots = list(plot_paths(kw["output"]).values()) if kw["plots"] else []
        check_outputs([kw["output"], *plots], *_data_guard(given, data, train), "--output", ClipzooError)
    ev = _evaluator(kw["model"], kw["device"], kw["precision"], kw["trust_pickle"], kw["model_name"],
                    kw["cache_dir"], kw["batch_size"], kw["workers"], kw["strict"], kw["features_cache"],
                    kw["progress"], kw["seed"])
    options = {k: v for k, v in kw.items()
               if k in ("k", "temperature", "fewshot_k", "train_fraction", "val_fraction", "regularization")}
    if task == "zeroshot":
        result = ev.zeroshot(data)  # class names / templates were given to open_dataset
    elif task in ("knn", "linear-probe"):
        result = getattr(ev, task.replace("-", "_"))(data, train_data=train, **options)
    else:
        result = getattr(ev, task)(data)
    _finish(result, kw["output"], kw["plots"])


# one signature for every image task; typer reads the options from it
def _make_image_command(task: str, doc: str, extra: str = ""):
    def command(
        model: ModelOpt, dataset: DatasetOpt, split: SplitOpt = "test", img_key: ImgKeyOpt = None,
        caption_key: CaptionKeyOpt = None, label_key: LabelKeyOpt = None, separator: SeparatorOpt = None,
        classnames: ClassnamesOpt = None, templates: TemplatesOpt = None, output: OutputOpt = None,
        plots: PlotsOpt = True, batch_size: BatchOpt = 64, workers: WorkersOpt = None, strict: StrictOpt = False,
        features_cache: FeaturesOpt = None, seed: SeedOpt = 0, progress: ProgressOpt = True,
        device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32", trust_pickle: TrustPickleOpt = False,
        model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
    ) -> None:
        options = dict(locals())
        options.pop("task", None)
        _image_task(task, options)

    command.__doc__ = doc
    command.__name__ = task.replace("-", "_")
    return user_errors(command)


zeroshot = _make_image_command("zeroshot", """Zero-shot classification: acc1, acc5 (≥ 5 classes), mean per-class recall.

    \b
      clipzoo eval zeroshot -m MODEL -d shapes/ -o results/zeroshot.json
      clipzoo eval zeroshot -m MODEL -d imagenet_val/ --classnames imagenet1k --templates openai_imagenet
    """)
retrieval = _make_image_command("retrieval", """Image↔text retrieval recall@1/5/10 (several captions per image).

    \b
      clipzoo eval retrieval -m MODEL -d captions.csv --img-key filepath --caption-key caption
    """)
cluster = _make_image_command("cluster", """k-means on image features (k = number of classes): NMI, AMI, ARI.""")


@user_errors
def knn(
    model: ModelOpt, dataset: DatasetOpt, train_dataset: TrainOpt = None, split: SplitOpt = "test",
    k: int = typer.Option(20, "-k", help="Neighbours that vote."),
    temperature: float = typer.Option(0.07, "--temperature", help="Votes weigh exp(similarity / T)."),
    train_fraction: TrainFractionOpt = 0.5, img_key: ImgKeyOpt = None, caption_key: CaptionKeyOpt = None,
    label_key: LabelKeyOpt = None, separator: SeparatorOpt = None, classnames: ClassnamesOpt = None,
    templates: TemplatesOpt = None, output: OutputOpt = None, plots: PlotsOpt = True, batch_size: BatchOpt = 64,
    workers: WorkersOpt = None, strict: StrictOpt = False, features_cache: FeaturesOpt = None, seed: SeedOpt = 0,
    progress: ProgressOpt = True, device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False, model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """Weighted k-NN classification on frozen image features (cosine; votes exp(sim / T)): top-1, top-5."""
    if k < 1:
        fail(f"-k must be at least 1, got {k}")
    if not temperature > 0:  # votes are exp(similarity / T): T <= 0 gave every class the same or reversed votes
        fail(f"--temperature must be above 0, got {temperature:g}")
    _image_task("knn", dict(locals()))


@user_errors
def linear_probe(
    model: ModelOpt, dataset: DatasetOpt, train_dataset: TrainOpt = None, split: SplitOpt = "test",
    fewshot_k: int | None = typer.Option(None, "--fewshot-k", help="Train on k examples per class."),
    val_fraction: float = typer.Option(0.2, "--val-fraction",
                                       help="Share of the training data that picks the regularisation."),
    regularization: float | None = typer.Option(
        None, "--regularization", help="Inverse L2 strength C of the logistic regression: no validation split, no "
                                       "search (what a 1-shot probe needs) [default: searched on --val-fraction]."),
    train_fraction: TrainFractionOpt = 0.5, img_key: ImgKeyOpt = None, caption_key: CaptionKeyOpt = None,
    label_key: LabelKeyOpt = None, separator: SeparatorOpt = None, classnames: ClassnamesOpt = None,
    templates: TemplatesOpt = None, output: OutputOpt = None, plots: PlotsOpt = True, batch_size: BatchOpt = 64,
    workers: WorkersOpt = None, strict: StrictOpt = False, features_cache: FeaturesOpt = None, seed: SeedOpt = 0,
    progress: ProgressOpt = True, device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False, model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """Logistic regression on frozen image features, regularisation swept on a validation split (or fixed by
    --regularization): lp_acc1, lp_acc5, lp_mean_per_class_recall and the regularisation used."""
    if fewshot_k is not None and fewshot_k < 1:
        fail(f"--fewshot-k must be at least 1, got {fewshot_k}")
    if regularization is not None and not regularization > 0:
        fail(f"--regularization must be above 0, got {regularization:g}")
    _image_task("linear-probe", dict(locals()))


def _text_task(task: str, model, dataset, output, device, precision, trust_pickle, model_name, cache_dir, **kw):
    from clipzoo.eval.runner import Evaluator

    check_output_file(output, [dataset], "--output", ClipzooError)
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    ev = Evaluator(comparator, workers=0)
    result = getattr(ev, task.replace("-", "_"))(dataset, **kw)
    _finish(result, output, False)


@user_errors
def text_retrieval(
    model: ModelOpt,
    dataset: str = typer.Option(..., "--dataset", "-d", show_default=False,
                                help="Folder with queries.tsv, collection.tsv and qrels (MS MARCO / BEIR style), "
                                     "or a Wiki Sections triplets .csv (or its folder)."),
    output: OutputOpt = None, device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False, model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """Query → passage retrieval with the text tower: MRR@10 and recall@k."""
    _text_task("text-retrieval", model, dataset, output, device, precision, trust_pickle, model_name, cache_dir)


@user_errors
def similarity(
    model: ModelOpt,
    dataset: str = typer.Option(..., "--dataset", "-d", show_default=False,
                                help="Scored text pairs: STS-style .tsv, RG65, SimLex-999 or WordSim-353 file."),
    format: str = typer.Option("auto", "--format", help="auto, sts, rg65, simlex, wordsim or pairs."),
    output: OutputOpt = None, device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False, model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """Spearman correlation between the model's cosine similarity and human scores of text pairs."""
    _text_task("similarity", model, dataset, output, device, precision, trust_pickle, model_name, cache_dir,
               format=format)


@user_errors
def all_tasks(
    model: ModelOpt, dataset: DatasetOpt, train_dataset: TrainOpt = None, split: SplitOpt = "test",
    tasks: list[str] | None = typer.Option(
        None, "--task", "-t", help="Tasks to run (repeatable) [default: every image task the data supports]."),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", help="Write each result JSON, plots and report.csv / report.md here."),
    plots: PlotsOpt = True, train_fraction: TrainFractionOpt = 0.5, img_key: ImgKeyOpt = None,
    caption_key: CaptionKeyOpt = None, label_key: LabelKeyOpt = None, separator: SeparatorOpt = None,
    classnames: ClassnamesOpt = None, templates: TemplatesOpt = None, batch_size: BatchOpt = 64,
    workers: WorkersOpt = None, strict: StrictOpt = False, features_cache: FeaturesOpt = None, seed: SeedOpt = 0,
    progress: ProgressOpt = True, device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False, model_name: ModelNameOpt = None, cache_dir: CacheDirOpt = None,
) -> None:
    """Every image task on one data set, embedding it once. A task the data cannot serve is skipped with one
    line; the exit status is 2 when none ran, or when a task named with -t could not run.

    \b
      clipzoo eval all -m MODEL -d shapes/ --output-dir results/
    """
    from clipzoo.eval.runner import IMAGE_TASKS, supported_tasks

    keys = (img_key, caption_key, label_key, separator, classnames, templates)
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        fail(f"--output-dir {str(output_dir)!r} is a file; pass a folder (new, or one to add the results to)")
    unknown = [t for t in tasks or () if t not in IMAGE_TASKS]
    if unknown:
        fail(f"unknown task {unknown[0]!r}: choose from {', '.join(IMAGE_TASKS)}")
    data = _open(dataset, split, *keys)
    train = _train_data(dataset, train_dataset, split, keys)
    guard = _data_guard([dataset, train_dataset, classnames, templates, features_cache], data, train)
    if output_dir is not None:
        _check_output_dir(output_dir, guard)
    ev = _evaluator(model, device, precision, trust_pickle, model_name, cache_dir, batch_size, workers, strict,
                    features_cache, progress, seed)
    if output_dir is not None:  # the files it will write, now that the model's name is known
        _check_result_files(output_dir, ev, data, tasks or IMAGE_TASKS, plots, guard)
    chosen = list(tasks) if tasks else supported_tasks(ev, data)
    results, failed = _run_each(ev, chosen, data, train, train_fraction, asked=bool(tasks))
    records = [r.record for r in results.values()]
    if records and records[0].get("skipped_images"):
        first = records[0]["skipped"][0]
        note(f"skipped {records[0]['skipped_images']} unreadable image(s), first: {first['input']}: {first['error']}")
    if not results:
        fail(f"none of the tasks ({', '.join(chosen)}) could run on data set {data.name!r}")
    print_json(records)
    if output_dir is not None:
        _write_all(results, output_dir, plots)
    if failed and tasks:
        raise typer.Exit(2)


def _check_output_dir(output_dir: Path, guard: tuple[list, list]) -> None:
    """--output-dir may not lie in a data set folder (its plots became images of a class), nor where no folder
    can be made (a file in the way, a read-only place)."""
    inputs, folders = guard
    real = os.path.realpath(os.path.expanduser(str(output_dir)))
    for folder in folders:
        if inside(real, os.path.realpath(folder)):
            fail(f"--output-dir {str(output_dir)!r} is inside the data set folder {folder!r}: files written there "
                 "become part of the data; choose a folder outside it")
    for name in ("report.csv", "report.md"):
        check_output_file(output_dir / name, inputs, "--output-dir", ClipzooError)


def _check_result_files(output_dir: Path, ev, data, tasks, plots: bool, guard: tuple[list, list]) -> None:
    from clipzoo.eval.outputs import check_outputs, plot_paths
    from clipzoo.eval.results import result_file_name
    from clipzoo.eval.runner import model_fields

    model, pretrained = model_fields(ev.model)
    record = {"dataset": data.name, "model": model, "pretrained": pretrained, "language": "en"}
    for task in tasks:
        path = output_dir / result_file_name(record, task)
        check_outputs([path, *(plot_paths(path).values() if plots else ())], *guard, "--output-dir", ClipzooError)


def _run_each(ev, chosen: list[str], data, train, train_fraction: float, asked: bool) -> tuple[dict, list[str]]:
    """Each task on its own: one that cannot run on this data (a single class for the linear probe, too few
    images to split) is said in one line and the others still run (it lost every result)."""
    results, failed = {}, []
    for task in chosen:
        try:
            results.update(ev.run([task], data, train_data=train, train_fraction=train_fraction))
        except ClipzooError as exc:
            failed.append(task)
            said = one_line(getattr(exc, "cli_message", None) or exc)
            note(f"error: task {task}: {said}" if asked else f"skipped {task}: {said}")
    return results, failed


def _write_all(results: dict, output_dir: Path, plots: bool) -> None:
    """Each result (CLIP_benchmark's file name, pretrained and language in it) and its plots, then report.csv /
    report.md over every result file in the folder — this run's and those it already held."""
    from clipzoo.eval.outputs import save_task_result
    from clipzoo.eval.report import write_report
    from clipzoo.eval.results import read_result, result_file_name

    written = []
    for task, result in results.items():
        path = output_dir / result_file_name(result.record, task)
        written.append(save_task_result(result, path, plots=plots, note=lambda m: note(f"note: {m}"))[0])
    held = []
    for path in sorted(output_dir.glob("*.json")):
        try:
            read_result(path)
        except ClipzooError:  # another kind of JSON file: not a result, not in the report
            continue
        held.append(str(path))
    report = write_report(held, str(output_dir / "report"))
    note(f"wrote {len(written)} result file(s) and {', '.join(str(p) for p in report.values())} in {output_dir}")


@user_errors
def report(
    results: list[str] = typer.Argument(
        ..., metavar="RESULTS...", help="Result JSON files, folders or globs (ours or CLIP_benchmark's)."),
    out: str = typer.Option("report", "--out", "-o", help="Output prefix: writes PREFIX.csv and PREFIX.md; a "
                            "folder (ending in /, or existing): the side-by-side leaderboard (md, html, csv, plots)."),
    plots: PlotsOpt = True,
    confusion_model: str | None = typer.Option(
        None, "--confusion-model", help="With -o FOLDER/: copy this model's per-class confusion matrices in."),
) -> None:
    """Merge result files into one CSV and a markdown table (printed too); with -o FOLDER/, several models
    side by side (best in bold, averages) as markdown, HTML, bar charts and open_clip's results CSV.

    \b
      clipzoo eval report results/ -o report/
    """
    from clipzoo.eval.report import write_report

    folder = out.endswith("/") or Path(out).is_dir()
    for name in ("leaderboard.md",) if folder else (out + ".csv", out + ".md"):  # a file in the way: said now
        check_output_file(Path(out) / name if folder else name, results, "--out", ClipzooError,
                          read_whole_folders=False)
    if folder:
        from clipzoo.eval.leaderboard import write_leaderboard

        written = write_leaderboard(results, out, plots=plots, confusion_model=confusion_model)
        typer.echo(written["md"].read_text(), nl=False)
        note("wrote " + ", ".join(str(p) for p in written.values()))
        return
    written = write_report(results, out)
    typer.echo(Path(written["md"]).read_text(), nl=False)
    note("wrote " + ", ".join(str(p) for p in written.values()))


def register(app: typer.Typer) -> None:
    for name, fn in (("zeroshot", zeroshot), ("retrieval", retrieval), ("linear-probe", linear_probe), ("knn", knn),
                     ("cluster", cluster), ("text-retrieval", text_retrieval), ("similarity", similarity),
                     ("all", all_tasks), ("report", report), ("elevater", elevater),
                     ("senteval", senteval), ("voc2007-multilabel", voc2007_multilabel),
                     ("mteb", mteb)):
        eval_app.command(name)(fn)
    app.add_typer(eval_app, name="eval")
