"""Class names and zero-shot prompt templates: built-in sets and files in CLIP_benchmark's formats.

Built in: ``imagenet1k`` (1000 names and OpenAI's 80 templates, read from open_clip), ``cifar10`` and
``cifar100`` (names; CLIP's 18 CIFAR templates, as CLIP_benchmark ships them). Templates also come as
``openai_imagenet`` (80) and ``simple_imagenet`` (open_clip's short list).

A value given by a user may be a list, a built-in name, a ``.txt`` file (one per line), or a ``.json``
file keyed by data set name (CLIP_benchmark's ``en_classnames.json`` /
``en_zeroshot_classification_templates.json``). Templates use ``{c}`` (CLIP_benchmark) or ``{}``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..files import NOT_REGULAR, special_file

__all__ = ["BUILTIN_CLASSNAMES", "BUILTIN_TEMPLATES", "builtin_classnames", "builtin_templates",
           "resolve_classnames", "resolve_templates", "read_lines"]

BUILTIN_CLASSNAMES = ("imagenet1k", "cifar10", "cifar100")
BUILTIN_TEMPLATES = ("openai_imagenet", "simple_imagenet", "imagenet1k", "cifar10", "cifar100")


@cache
def _builtin_json() -> dict[str, Any]:
    return json.loads((Path(__file__).with_name("builtin_classnames.json")).read_text("utf-8"))


def _open_clip_metadata():
    from open_clip import zero_shot_metadata

    return zero_shot_metadata


def builtin_classnames(name: str) -> list[str]:
    key = name.lower().replace("-", "").replace("_", "")
    if key in ("imagenet1k", "imagenet"):
        return list(_open_clip_metadata().IMAGENET_CLASSNAMES)
    if key in ("cifar10", "cifar100"):
        return list(_builtin_json()[key]["classnames"])
    raise DatasetError(f"no built-in class names {name!r}: choose from {', '.join(BUILTIN_CLASSNAMES)}, "
                       f"or pass a .txt / .json file")


def builtin_templates(name: str) -> list[str]:
    key = name.lower().replace("-", "_")
    if key in ("openai_imagenet", "imagenet1k", "imagenet"):
        return [t("{c}") for t in _open_clip_metadata().OPENAI_IMAGENET_TEMPLATES]
    if key == "simple_imagenet":
        return [t("{c}") for t in _open_clip_metadata().SIMPLE_IMAGENET_TEMPLATES]
    if key in ("cifar10", "cifar100"):
        return list(_builtin_json()[key]["templates"])
    raise DatasetError(f"no built-in templates {name!r}: choose from {', '.join(BUILTIN_TEMPLATES)}, "
                       f"or pass a .txt / .json file")


def read_lines(path: "str | Path", what: str) -> list[str]:
    """Non-empty stripped lines of a text file (local or fsspec URL); for ``what`` "class names" a blank line
    before the last name is an error (every later class would move down one index, silently)."""
    try:
        if "://" in str(path):
            import fsspec

            with fsspec.open(str(path), "rt", encoding="utf-8") as fh:
                text = fh.read()
        elif special_file(path):
            raise DatasetError(f"cannot read {what} file {str(path)!r}: it {NOT_REGULAR}")
        else:
            text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {what} file {str(path)!r}: {getattr(err, 'strerror', None) or err}") from None
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if what == "class names" and "" in lines:  # a blank line is a class to CLIP_benchmark; dropped, it moved
        raise DatasetError(f"{what} file {str(path)!r}: line {lines.index('') + 1} is blank; write one class name "
                           "per line (a line's number is its class index)")
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DatasetError(f"{what} file {str(path)!r} is empty: write one entry per line")
    return lines


def _from_json(path: "str | Path", dataset: "str | None", what: str) -> list[str]:
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {what} file {str(path)!r}: {err}") from None
    if isinstance(data, list):
        return [str(x) for x in data]
    if not isinstance(data, dict):
        raise DatasetError(f"{what} file {str(path)!r} must hold a list, or an object keyed by data set name")
    if dataset is None or dataset not in data:
        keys = ", ".join(list(data)[:12])
        raise DatasetError(f"{what} file {str(path)!r} has no entry for data set {dataset!r}; it has: {keys}")
    value = data[dataset]
    if not isinstance(value, list):
        raise DatasetError(f"{what} file {str(path)!r}: entry {dataset!r} must be a list")
    return [str(x) for x in value]


def _resolve(value: Any, dataset: "str | None", what: str, builtin) -> "list[str] | None":
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        out = [str(v) for v in value]
    else:
        text = str(value)
        path = Path(text)
        if text.endswith(".json"):
            out = _from_json(path, dataset, what)
        elif "://" in text or path.suffix in (".txt", ".tsv", ".csv") or path.exists():
            out = read_lines(path if "://" not in text else text, what)
        else:
            out = builtin(text)
    if not out:
        raise DatasetError(f"no {what} given")
    return out


def resolve_classnames(value: Any, dataset: "str | None" = None) -> "list[str] | None":
    """A list, built-in name, ``.txt`` or ``.json`` (keyed by ``dataset``) -> class names."""
    # repeats are allowed: OpenAI's ImageNet names have two "missile"s and two "sunglasses"
    return _resolve(value, dataset, "class names", builtin_classnames)


def resolve_templates(value: Any, dataset: "str | None" = None) -> "list[str] | None":
    """A list, built-in name, ``.txt`` or ``.json`` (keyed by ``dataset``) -> templates (``{c}`` or ``{}``)."""
    templates = _resolve(value, dataset, "templates", builtin_templates)
    if templates is not None:
        bad = [t for t in templates if "{c}" not in t and "{}" not in t]
        if bad:
            raise DatasetError(f"template {bad[0]!r} has no '{{c}}' placeholder for the class name")
    return templates


def check_classnames(classnames: Sequence[str], labels: Sequence[int], source: str) -> None:
    """Fail when labels point past the class list (class names that do not match the data)."""
    if not labels:
        return
    top = max(labels)
    if top >= len(classnames) or min(labels) < 0:
        raise DatasetError(f"{source}: labels go up to {top} but there are {len(classnames)} class names; "
                           f"the class names do not match this data set (pass the right --classnames)")
