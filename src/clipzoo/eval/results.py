"""Result files in CLIP_benchmark's JSON schema.

``{"dataset", "model", "pretrained", "task", "metrics": {...}, "language"}`` — one file per
(model, data set, task, language), as ``clip_benchmark eval`` writes them, so that CLIP_benchmark's
``build_csv`` and ours can read each other's files. Extra keys (``classnames``, ``templates``) are kept.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from .metrics import EvalInputError

REQUIRED_KEYS = ("dataset", "model", "pretrained", "task", "metrics", "language")
# our task names -> the names CLIP_benchmark writes in "task"
TASK_NAMES = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
              "linear-probe": "linear_probe", "linear_probe": "linear_probe", "knn": "knn",
              "cluster": "cluster", "clustering": "cluster", "text-retrieval": "text_retrieval",
              "similarity": "similarity"}
DEFAULT_OUTPUT = "{dataset}_{pretrained}_{model}_{language}_{task}.json"


def _plain(value: Any) -> Any:
    """Tensors / NumPy scalars -> Python numbers, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def make_result(dataset: str, model: str, pretrained: str, task: str, metrics: Mapping[str, Any],
                language: str = "en", **extra: Any) -> dict[str, Any]:
    """A result record in CLIP_benchmark's schema (task names mapped to CLIP_benchmark's)."""
    record = {"dataset": str(dataset), "model": str(model), "pretrained": str(pretrained),
              "task": TASK_NAMES.get(task, task), "metrics": _plain(dict(metrics)), "language": str(language)}
    record.update(_plain(extra))
    return record


def output_path(template: str = DEFAULT_OUTPUT, **fields: str) -> str:
    """Fill CLIP_benchmark's output template; ``/`` in values becomes ``_`` (as it does for paths)."""
    safe = {k: str(v).replace("/", "_") for k, v in fields.items()}
    try:
        return template.format(**safe)
    except KeyError as err:
        raise EvalInputError(f"output template {template!r} uses unknown field {err}; "
                             f"known: {', '.join(sorted(safe))}") from None


MAX_NAME_BYTES = 200
"""A result file's name is kept this short (in UTF-8 bytes): its plots add ``.confusion.png`` and the atomic write
a temporary suffix, and a file system takes 255 — a deep model path as ``pretrained`` went past it."""


def result_file_name(record: Mapping[str, Any], task: str) -> str:
    """The file ``clipzoo eval all`` writes ``record`` of ``task`` to: CLIP_benchmark's default
    :data:`DEFAULT_OUTPUT` (``{dataset}_{pretrained}_{model}_{language}_{task}.json``, ``/`` → ``_``), so two models
    of one name (``openai/ViT-B-32`` and ``open_clip:ViT-B-32/laion2b_s34b_b79k``, or two ``model.safetensors`` in
    different folders, whose path is their ``pretrained``) get two files. Past :data:`MAX_NAME_BYTES` the start is
    kept, then a hash of the whole name, then the task."""
    fields = {k: str(record.get(k) or "") for k in ("dataset", "pretrained", "model", "language")}
    name = output_path(DEFAULT_OUTPUT, task=task, **fields)
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    tail = f"-{digest}_{str(task).replace('/', '_')}.json"
    head = raw[: max(MAX_NAME_BYTES - len(tail.encode()), 16)].decode("utf-8", "ignore")
    return head + tail


def write_result(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write one record as JSON (NaN is written as ``NaN``, as Python's json and CLIP_benchmark do)."""
    validate(record, str(path))
    return atomic_write_text(path, json.dumps(_plain(dict(record)), indent=2) + "\n")  # a link: replaced


def validate(record: Any, source: str = "result") -> dict[str, Any]:
    if not isinstance(record, Mapping):
        raise EvalInputError(f"{source}: a result must be a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise EvalInputError(f"{source}: not a CLIP_benchmark result, missing key(s) {', '.join(missing)}")
    if not isinstance(record["metrics"], Mapping):
        raise EvalInputError(f"{source}: 'metrics' must be an object")
    return dict(record)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check one result file (ours or CLIP_benchmark's)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise EvalInputError(f"cannot read result file {path}: {err.strerror or err}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise EvalInputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    return validate(record, str(path))


def flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """One row for a table: the metadata keys and each metric, as CLIP_benchmark's ``build_csv`` does."""
    row = {k: v for k, v in record.items() if k not in ("metrics", "classnames", "templates")}
    row.update(record["metrics"])
    row["model_fullname"] = f"{record['model']} {record['pretrained']}".strip()  # clipzoo/tiny-shapes alone
    return row


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
