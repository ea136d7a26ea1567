"""Several models side by side: rows = (task, data set), columns = models, the best of each row in bold, average
rows; as markdown, HTML, bar charts, and open_clip's ``openclip_results.csv`` layout.

Records come from :func:`clipzoo.eval.report.collect_results` (our result JSON, CLIP_benchmark's, and the
ELEVATER / SentEval summaries). Each (task, data set) shows one number per model, its main metric:
``acc1`` (zero-shot classification), the mean of image and text retrieval recall@5 (zero-shot retrieval),
``lp_acc1``, ``knn_acc1``, ``nmi``, ELEVATER's ``score``, SentEval's ``acc``; otherwise the first metric.
A model is ``model pretrained`` (or ``model`` alone). ``average (TASK)`` is each model's mean over every data set
of that task, ``average`` its mean over every row: a model without a result on one of them has no average there
(``–``, never bold) — a mean over fewer data sets is another benchmark, and ranked a model with one easy data set
above one with all of them. CLIP_benchmark's leaderboard compares models on the data sets they all have (its
``pivot(...).dropna()``); the missing cells show as ``–`` (empty in the CSVs).

The open_clip export has open_clip's columns: ``name, pretrained, Average perf. on N datasets``, then one
column per data set with open_clip's display names (``ImageNet 1k``, ``Caltech-101``, …; CLIP_benchmark's keys
``imagenet1k``, ``vtab/caltech101``, … map to them; other data sets keep their own names, after them), rows
sorted by the average, best first; only zero-shot classification and retrieval enter it. The average is over
all N data sets: a model without all N has an empty average and comes after those with one (by name).
"""
from __future__ import annotations

import csv
import html
import io
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import EvalInputError, MissingExtraError
from ..files import atomic_write, atomic_write_text
from .plots import literal
from .report import collect_results, csv_text, spreadsheet_safe
from .results import read_result

__all__ = ["OPENCLIP_COLUMNS", "leaderboard", "leaderboard_markdown", "leaderboard_html", "openclip_csv",
           "plot_leaderboard", "write_leaderboard", "main_value", "bar_chart", "confusion_plots"]

_MAIN = {"zeroshot_classification": "acc1", "linear_probe": "lp_acc1", "knn": "knn_acc1", "cluster": "nmi",
         "senteval": "acc"}
_RETRIEVAL = ("image_retrieval_recall@5", "text_retrieval_recall@5")
# open_clip's docs/openclip_results.csv columns, keyed by CLIP_benchmark's data set names
OPENCLIP_COLUMNS: dict[str, str] = {
    "imagenet1k": "ImageNet 1k", "vtab/caltech101": "Caltech-101", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
    "vtab/clevr_count_all": "CLEVR Counts", "vtab/clevr_closest_object_distance": "CLEVR Distance",
    "country211": "Country211", "vtab/dtd": "Describable Textures", "vtab/eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVC Aircraft", "food101": "Food-101", "gtsrb": "GTSRB", "imagenet_sketch": "ImageNet Sketch",
    "imagenetv2": "ImageNet v2", "imagenet-a": "ImageNet-A", "imagenet-o": "ImageNet-O", "imagenet-r": "ImageNet-R",
    "vtab/kitti_closest_vehicle_distance": "KITTI Vehicle Distance", "mnist": "MNIST", "objectnet": "ObjectNet",
    "vtab/flowers": "Oxford Flowers-102", "vtab/pets": "Oxford-IIIT Pet", "voc2007": "Pascal VOC 2007",
    "vtab/pcam": "PatchCamelyon", "renderedsst2": "Rendered SST2", "vtab/resisc45": "RESISC45",
    "cars": "Stanford Cars", "stl10": "STL-10", "sun397": "SUN397", "vtab/svhn": "SVHN", "flickr30k": "Flickr",
    "mscoco_captions": "MSCOCO", "winogavil": "WinoGAViL", "wilds/iwildcam": "iWildCam",
    "wilds/camelyon17": "Camelyon17", "wilds/fmow": "FMoW", "dollar_street": "Dollar Street", "geode": "GeoDE",
}
_OPENCLIP_TASKS = ("zeroshot_classification", "zeroshot_retrieval")


def _key(dataset: str) -> str:
    """CLIP_benchmark's key for a data set name as written in files (``wds_vtab-caltech101`` → ``vtab/caltech101``)."""
    name = dataset.removeprefix("wds_").replace("-", "/", 1) if dataset.startswith("wds_") else dataset
    return name if name in OPENCLIP_COLUMNS else dataset


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def main_value(record: Mapping[str, Any]) -> tuple[str, float | None]:
    """(metric name, value) shown for one record."""
    metrics, task = record["metrics"], str(record["task"])
    if task == "zeroshot_retrieval" and all(m in metrics for m in _RETRIEVAL):
        values = [_number(metrics[m]) for m in _RETRIEVAL]
        return "mean recall@5", None if None in values else sum(values) / 2
    name = _MAIN.get(task) or ("score" if task.startswith("elevater") else next(iter(metrics), ""))
    return name, _number(metrics.get(name))


def _model(record: Mapping[str, Any]) -> str:
    return f"{record['model']} {record.get('pretrained') or ''}".strip()


def leaderboard(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"models", "rows": [(task, dataset, metric)], "values": {row_index: {model: value}}, "averages"}``."""
    records = list(records)
    if not records:
        raise EvalInputError("no results to report")
    models = list(dict.fromkeys(_model(r) for r in records))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        metric, value = main_value(r)
        row = rows.setdefault((str(r["task"]), str(r["dataset"])), {"metric": metric, "values": {}})
        if value is not None:
            row["values"][_model(r)] = value  # a later file wins
    ordered = sorted(rows, key=lambda k: (k[0], k[1]))
    tasks = list(dict.fromkeys(t for t, _ in ordered))
    averages: list[tuple[str, dict[str, float]]] = []
    for task in tasks + [None]:
        keys = [k for k in ordered if task is None or k[0] == task]
        if task is not None and len(keys) < 2:
            continue
        means = {}
        for m in models:
            vals = [rows[k]["values"][m] for k in keys if m in rows[k]["values"]]
            if len(vals) == len(keys):  # over every data set, or none: a partial mean is not comparable
                means[m] = sum(vals) / len(vals)
        averages.append(("average" if task is None else f"average ({task})", means))
    return {"models": models, "rows": [(t, d, rows[(t, d)]["metric"]) for t, d in ordered],
            "values": [rows[k]["values"] for k in ordered], "averages": averages}


def _best(values: Mapping[str, float]) -> set[str]:
    top = max(values.values(), default=None)
    return {m for m, v in values.items() if top is not None and math.isclose(v, top, rel_tol=0, abs_tol=1e-12)}


def _cells(board: dict[str, Any], digits: int) -> list[tuple[list[str], list[tuple[str, bool]]]]:
    out = []
    lines = [([t, d, m], v) for (t, d, m), v in zip(board["rows"], board["values"])]
    lines += [([name, "", ""], v) for name, v in board["averages"]]
    for head, values in lines:
        best = _best(values) if len(board["models"]) > 1 else set()
        out.append((head, [("–" if m not in values else f"{values[m]:.{digits}f}", m in best)
                           for m in board["models"]]))
    return out


def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|")


def leaderboard_markdown(board: dict[str, Any], digits: int = 4) -> str:
    """The table, best of each row in **bold**."""
    lines = ["| task | data set | metric | " + " | ".join(_esc(m) for m in board["models"]) + " |",
             "|---|---|---|" + "---:|" * len(board["models"])]
    for head, cells in _cells(board, digits):
        shown = [f"**{c}**" if bold else c for c, bold in cells]
        lines.append("| " + " | ".join([_esc(h) for h in head] + shown) + " |")
    return "\n".join(lines) + "\n"


def leaderboard_html(board: dict[str, Any], digits: int = 4) -> str:
    """A standalone HTML page with the same table (best in ``<b>``)."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in ["task", "data set", "metric", *board["models"]])
    body = []
    for head, cells in _cells(board, digits):
        tds = [f"<td>{html.escape(h)}</td>" for h in head]
        tds += [f"<td class=\"num\">{'<b>' + c + '</b>' if bold else c}</td>" for c, bold in cells]
        body.append("<tr>" + "".join(tds) + "</tr>")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>clipzoo leaderboard</title>\n"
            "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
            ".num{text-align:right}</style></head><body>\n<table>\n<tr>" + th + "</tr>\n" + "\n".join(body)
            + "\n</table>\n</body></html>\n")


def openclip_csv(records: Iterable[Mapping[str, Any]]) -> str:
    """open_clip's ``openclip_results.csv`` layout (see the module docstring)."""
    table: dict[tuple[str, str], dict[str, float]] = {}
    for r in records:
        if str(r["task"]) not in _OPENCLIP_TASKS:
            continue
        value = main_value(r)[1]
        if value is not None:
            table.setdefault((str(r["model"]), str(r.get("pretrained") or "")), {})[_key(str(r["dataset"]))] = value
    if not table:
        raise EvalInputError("no zero-shot classification or retrieval results for the open_clip table")
    seen = {k for row in table.values() for k in row}
    columns = [k for k in OPENCLIP_COLUMNS if k in seen] + sorted(seen - set(OPENCLIP_COLUMNS))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "pretrained", f"Average perf. on {len(columns)} datasets",
                     *[spreadsheet_safe(OPENCLIP_COLUMNS.get(k, k)) for k in columns]])
    # the average over all N data sets; a model without all of them has none (empty), and comes after
    rows = [(sum(v.values()) / len(v) if len(v) == len(columns) else None, key, v) for key, v in table.items()]
    for avg, (name, pretrained), values in sorted(rows, key=lambda x: (x[0] is None, -(x[0] or 0.0), x[1])):
        writer.writerow([spreadsheet_safe(name), spreadsheet_safe(pretrained), "" if avg is None else repr(avg),
                         *[f"{values[k]:.4f}" if k in values else "" for k in columns]])
    return buf.getvalue()


def bar_chart(labels: Sequence[str], series: Mapping[str, Sequence[float]], path: str | os.PathLike,
              title: str = "") -> Path:
    """Grouped bars: one group per label, one bar per series (model); written atomically as PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("plots need matplotlib, which is not installed; pip install 'clipzoo[eval]' "
                                "(or pass --no-plots)") from None
    fig = Figure(figsize=(max(4.0, 0.6 * len(labels) * max(1, len(series)) + 2), 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels, rotation=30, ha="right",
                  parse_math=False)  # a data set or model named $x^$ is text, never mathtext
    ax.set_title(title, parse_math=False)
    literal(ax.legend(fontsize=7).get_texts())
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    finally:
        fig.clear()


def plot_leaderboard(board: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """One grouped bar chart per task (data sets × models): ``bars_TASK.png``."""
    out_dir = Path(out_dir)
    written = []
    for task in dict.fromkeys(t for t, _, _ in board["rows"]):
        idx = [i for i, (t, _, _) in enumerate(board["rows"]) if t == task]
        series = {m: [board["values"][i].get(m, float("nan")) for i in idx] for m in board["models"]}
        labels = [board["rows"][i][1] for i in idx]
        written.append(bar_chart(labels, series, out_dir / f"bars_{task.replace('/', '_')}.png",
                                 title=f"{task} ({board['rows'][idx[0]][2]})"))
    return written


def confusion_plots(paths: Sequence[str | os.PathLike], model: str, out_dir: str | os.PathLike) -> list[Path]:
    """Copy the per-class confusion matrices (``NAME.confusion.png``, written beside ``NAME.json`` by
    ``clipzoo eval … -o NAME.json``) of one model's results to ``out_dir/confusion_DATASET_TASK.png``."""
    pngs: list[Path] = []
    for path in (Path(p) for p in paths):
        if path.is_dir():
            pngs.extend(sorted(path.rglob("*.confusion.png")))
        elif path.with_suffix(".confusion.png").is_file():
            pngs.append(path.with_suffix(".confusion.png"))
    written = []
    for png in pngs:
        source = png.with_name(png.name[: -len(".confusion.png")] + ".json")
        if not source.is_file():
            continue
        record = read_result(source)
        if model in (_model(record), str(record["model"])):
            name = f"confusion_{record['dataset']}_{record['task']}.png".replace("/", "_")
            with open(png, "rb") as source_png:  # a link there is replaced, its target never written
                written.append(atomic_write(Path(out_dir) / name, lambda f: shutil.copyfileobj(source_png, f)))
    if not written:
        raise EvalInputError(f"no confusion matrix of model {model!r} beside the results; write results with "
                             "`clipzoo eval zeroshot … -o FILE.json` (plots on) or leave out --confusion-model")
    return written


def write_leaderboard(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, digits: int = 4,
                      plots: bool = True, confusion_model: str | None = None) -> dict[str, Path]:
    """Read the results and write ``leaderboard.md``, ``leaderboard.html``, ``results.csv`` (every metric),
    ``openclip_results.csv`` (when there are zero-shot results), the bar charts, and with ``confusion_model``
    that model's confusion matrices into ``out_dir``."""
    records = collect_results(paths)
    board = leaderboard(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"md": ("leaderboard.md", leaderboard_markdown(board, digits)),
             "html": ("leaderboard.html", leaderboard_html(board, digits)), "csv": ("results.csv", csv_text(records))}
    if any(str(r["task"]) in _OPENCLIP_TASKS for r in records):
        texts["openclip"] = ("openclip_results.csv", openclip_csv(records))
    written = {}
    for key, (name, text) in texts.items():
        written[key] = atomic_write_text(out / name, text)
    if plots:
        for i, p in enumerate(plot_leaderboard(board, out)):
            written[f"plot{i}"] = p
    if confusion_model:
        for i, p in enumerate(confusion_plots(paths, confusion_model, out)):
            written[f"confusion{i}"] = p
    return written
