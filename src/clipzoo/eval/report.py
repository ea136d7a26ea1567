"""Merge result files (ours or CLIP_benchmark's) into one CSV and a markdown summary.

The CSV is what CLIP_benchmark's ``clip_benchmark build`` writes, with a fixed column order: one row
per result file (:func:`~clipzoo.eval.results.flatten`), columns ``dataset, model, pretrained, task,
language``, then every metric (first-seen order), then ``model_fullname`` and any other keys of the
records (``k``, ``skipped_images``…). A metric a record lacks is an empty cell; NaN is written ``nan``.

Rows are sorted by task (``zeroshot_classification``, ``zeroshot_retrieval``, ``linear_probe``,
``knn``, ``cluster``, then others alphabetically), dataset, model, pretrained and language, so that a
report does not depend on the order in which files were found.

The markdown report has one table per task (a ``## task`` heading each)::

    ## zeroshot_classification

    | model | pretrained | cifar10 / acc1 | imagenet1k / acc1 |
    |---|---|---|---|
    | ViT-B-32 | openai | 0.8983 | 0.6332 |

rows are the models (model + pretrained, plus a ``language`` column when a task has several
languages), columns are data set × metric. By default each task shows its main metric(s)
(:data:`MAIN_METRICS`; the first metric seen for a task not listed there); ``metrics=[...]`` picks
others. Numbers have ``digits`` decimals; a missing value, ``None`` or NaN is shown as ``–``. When
several files give the same cell, the last one (in sorted order) wins.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import EvalInputError
from ..files import atomic_write_text
from .results import flatten, is_missing, read_result

__all__ = ["summary_records", "SUMMARY_TASKS",
           "collect_results", "results_table", "write_csv", "csv_text", "markdown_table", "write_report",
           "spreadsheet_safe",
           "META_COLUMNS", "MAIN_METRICS", "MISSING"]

META_COLUMNS = ("dataset", "model", "pretrained", "task", "language")
TASK_ORDER = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "knn", "cluster")
# the metric(s) each task shows in the markdown report by default
MAIN_METRICS: dict[str, tuple[str, ...]] = {
    "zeroshot_classification": ("acc1",),
    "zeroshot_retrieval": ("image_retrieval_recall@5", "text_retrieval_recall@5"),
    "linear_probe": ("lp_acc1",),
    "knn": ("knn_acc1",),
    "cluster": ("nmi",),
    "senteval": ("acc",),
}
MISSING = "–"
_GLOB_CHARS = set("*?[")


# ------------------------------------------------------------------ reading
def _files_for(path: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*.json") if f.is_file())
    if _GLOB_CHARS & set(str(path)):
        out: list[Path] = []
        for match in sorted(glob.glob(str(path), recursive=True)):
            out.extend(_files_for(match))
        return out
    return []


def collect_results(paths: "str | os.PathLike | Iterable[str | os.PathLike]") -> list[dict[str, Any]]:
    """Read result records from JSON files, folders (every ``*.json`` inside, recursively, sorted) or globs.

    Every file found must be a result (:func:`~clipzoo.eval.results.read_result`): a file that is not
    raises :class:`EvalInputError` naming it. So does a path that matches no file. A file reached
    twice is read once.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise EvalInputError("no result files given: name JSON files, folders or globs")
    files: list[Path] = []
    seen: set[Path] = set()
    unmatched: list[str] = []
    for path in paths:
        found = _files_for(path)
        if not found:
            unmatched.append(path)
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    if unmatched:
        raise EvalInputError("no result files found for " + ", ".join(repr(p) for p in unmatched)
                             + " (give JSON files, folders holding *.json files, or globs)")
    records: list[dict[str, Any]] = []
    for f in files:
        summary = _summary(f)
        records.extend(summary_records(summary) if summary is not None else [read_result(f)])
    return records


def _summary(path: Path) -> dict[str, Any] | None:
    """The file's JSON when it is a benchmark summary (``clipzoo eval elevater`` / ``senteval``), else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # read_result gives the one-line error
    return data if isinstance(data, dict) and data.get("benchmark") in SUMMARY_TASKS else None


SUMMARY_TASKS = {"elevater": ("datasets", "score"), "senteval": ("tasks", "acc")}


def summary_records(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An ELEVATER or SentEval summary as result records: one per data set / task, task ``elevater_MODE`` or
    ``senteval``, metric ``score`` (ELEVATER's metric) or ``acc`` (SentEval's accuracy, as a fraction)."""
    rows_key, metric = SUMMARY_TASKS[summary["benchmark"]]
    task = f"elevater_{summary.get('mode', '')}" if summary["benchmark"] == "elevater" else "senteval"
    out = []
    for name, row in summary.get(rows_key, {}).items():
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if summary["benchmark"] == "senteval":  # SentEval prints percent; reports hold fractions
            metrics = {k: v / 100 if k in ("acc", "devacc", "f1") else v for k, v in metrics.items()}
        out.append({"dataset": str(name), "model": str(summary.get("model", "")), "pretrained": "", "task": task,
                    "metrics": {metric: metrics.pop(metric, None), **metrics}, "language": "en"})
    return out


# ------------------------------------------------------------------ the table
def _task_rank(task: Any) -> tuple[int, str]:
    task = str(task)
    return (TASK_ORDER.index(task), "") if task in TASK_ORDER else (len(TASK_ORDER), task)


def _sort_key(record: Mapping[str, Any]) -> tuple:
    return (_task_rank(record["task"]), str(record["dataset"]), str(record["model"]), str(record["pretrained"]),
            str(record["language"]))


def _sorted(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(records, key=_sort_key)  # stable: equal keys keep their input order


def results_table(records: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)``: one row (a dict, via :func:`flatten`) per record, sorted as described above.

    Columns: :data:`META_COLUMNS`, then the metrics in first-seen order, then the other keys
    (``model_fullname``, extra fields) in first-seen order. A row lacks the keys its record lacks.
    """
    records = _sorted(records)
    metrics: dict[str, None] = {}
    extra: dict[str, None] = {"model_fullname": None} if records else {}
    rows = []
    for record in records:
        for name in record["metrics"]:
            metrics.setdefault(str(name), None)
        row = flatten(record)
        for key in row:
            if key not in META_COLUMNS and key not in record["metrics"]:
                extra.setdefault(key, None)
        rows.append(row)
    columns = list(META_COLUMNS) + list(metrics) + [k for k in extra if k not in metrics]
    return columns, rows


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, (list, dict)):
        return spreadsheet_safe(json.dumps(value, separators=(",", ":")))
    return str(value) if isinstance(value, int) else spreadsheet_safe(str(value))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet reads as a formula at the start of a cell (OWASP's CSV injection list)."""


def spreadsheet_safe(text: str) -> str:
    """``text`` for a CSV cell, with a ``'`` in front when it starts like a formula: a data set or model named
    ``=cmd|' /C calc'!A0`` was written as it is, and a spreadsheet opening the report runs it."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_text(records: Iterable[Mapping[str, Any]]) -> str:
    """The CSV (header + one line per record) as a string; floats are written exactly (``repr``)."""
    columns, rows = results_table(records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([spreadsheet_safe(c) for c in columns])
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def write_csv(records: Iterable[Mapping[str, Any]], path: "str | os.PathLike") -> Path:
    """Write :func:`csv_text` to ``path`` atomically (temporary file + ``os.replace``)."""
    return atomic_write_text(path, csv_text(records))


# ------------------------------------------------------------------ markdown
def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_cell(value: Any, digits: int) -> str:
    if is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _md_escape(value)


def _task_metrics(task: str, records: Sequence[Mapping[str, Any]], wanted: Sequence[str] | None) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        for name in r["metrics"]:
            seen.setdefault(str(name), None)
    if wanted is not None:
        return [m for m in wanted if m in seen]
    main = [m for m in MAIN_METRICS.get(task, ()) if m in seen]
    return main or list(seen)[:1]


def markdown_table(records: Iterable[Mapping[str, Any]], metrics: Sequence[str] | None = None,
                   digits: int = 4) -> str:
    """Markdown summary: one table per task, rows = model + pretrained, columns = data set × metric.

    ``metrics`` picks the metric(s) shown (each task shows those it has; a task with none of them is
    left out); by default :data:`MAIN_METRICS`. See the module docstring for the layout.
    """
    records = _sorted(records)
    if not records:
        raise EvalInputError("no results to report")
    if isinstance(metrics, str):
        metrics = [metrics]
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_task.setdefault(str(r["task"]), []).append(r)
    sections = []
    for task, recs in by_task.items():
        shown = _task_metrics(task, recs, metrics)
        if not shown:
            continue
        datasets = list(dict.fromkeys(str(r["dataset"]) for r in recs))
        languages = list(dict.fromkeys(str(r["language"]) for r in recs))
        with_language = len(languages) > 1
        cells: dict[tuple, dict[tuple[str, str], Any]] = {}
        for r in recs:
            key = (str(r["model"]), str(r["pretrained"])) + ((str(r["language"]),) if with_language else ())
            row = cells.setdefault(key, {})
            for m in shown:
                if m in r["metrics"]:
                    row[(str(r["dataset"]), m)] = r["metrics"][m]
        head = ["model", "pretrained"] + (["language"] if with_language else [])
        columns = [(d, m) for d in datasets for m in shown]
        lines = [f"## {_md_escape(task)}", "",
                 "| " + " | ".join(head + [f"{_md_escape(d)} / {_md_escape(m)}" for d, m in columns]) + " |",
                 "|" + "---|" * (len(head) + len(columns))]
        for key in sorted(cells):
            values = [_md_cell(cells[key].get(c), digits) for c in columns]
            lines.append("| " + " | ".join([_md_escape(k) for k in key] + values) + " |")
        sections.append("\n".join(lines) + "\n")
    if not sections:
        available = sorted({str(m) for r in records for m in r["metrics"]})
        raise EvalInputError(f"none of the metrics {', '.join(metrics or [])} is in the results; "
                             f"available: {', '.join(available)}")
    return "\n".join(sections)


def write_report(paths: "str | os.PathLike | Iterable[str | os.PathLike]", out_prefix: "str | os.PathLike",
                 metrics: Sequence[str] | None = None, digits: int = 4) -> dict[str, Path]:
    """Read results (:func:`collect_results`) and write ``<prefix>.csv`` and ``<prefix>.md`` atomically.

    Returns ``{"csv": path, "md": path}``. Both texts are built before anything is written.
    """
    records = collect_results(paths)
    csv_out, md_out = csv_text(records), markdown_table(records, metrics=metrics, digits=digits)
    prefix = os.fspath(out_prefix)
    return {"csv": atomic_write_text(prefix + ".csv", csv_out),
            "md": atomic_write_text(prefix + ".md", md_out)}
