"""Zero-shot classification: class weights from class names and templates, then top-k accuracy."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..cards import IMAGE
from ..templates import fill_template, require_placeholder
from .metrics import EvalInputError, zeroshot_logits, zeroshot_metrics
from .multilabel_metrics import multilabel_metrics

__all__ = ["zeroshot_classify", "zeroshot_predict", "class_weights", "check_templates", "zeroshot_metrics",
           "zeroshot_logits"]


def _template(t: str | Callable[[str], str]) -> Callable[[str], str]:
    """A template string (``{c}`` as CLIP_benchmark writes it, ``{}`` or ``{label}``; ``{{`` / ``}}`` a literal
    brace, as CLIP_benchmark's ``str.format(c=...)`` reads them) as the callable that fills it; checked here, so an
    error quotes the template as written."""
    if not isinstance(t, str):
        return t
    require_placeholder(t, escapes=True)
    return functools.partial(fill_template, t, escapes=True)


def check_templates(templates: Any) -> None:
    """A :class:`~clipzoo.templates.TemplateError` quoting the first template string :func:`class_weights` would
    refuse (before any image is embedded)."""
    if templates is not None and not isinstance(templates, Mapping):
        for t in [templates] if isinstance(templates, str) else templates:
            _template(t)


def class_weights(model, classnames: Sequence[str],
                  templates: Sequence[str | Callable] | Mapping[str, Sequence[str]] | None = None) -> torch.Tensor:
    """Zero-shot class weights (C, D) from ``model.classifier``.

    ``templates``: a list of templates (``"a photo of a {}."`` or CLIP_benchmark's ``{c}``), callables,
    or a dict of class name -> list of full prompts (CuPL-style class-specific prompts).
    """
    classnames = list(classnames)
    if not classnames:
        raise EvalInputError("no class names given")
    if isinstance(templates, Mapping):
        missing = [c for c in classnames if c not in templates]
        if missing:
            raise EvalInputError(f"the template dict has no prompts for classes {missing[:5]}")
        rows = [F.normalize(model.encode_text(list(templates[c]), truncate=True).mean(dim=0), dim=-1)
                for c in classnames]
        return torch.stack(rows)
    templates = [templates] if isinstance(templates, str) else templates  # one template, not its characters
    templates = [_template(t) for t in templates] if templates else None
    return model.classifier(classnames, templates, truncate=True)  # cut as CLIP_benchmark cuts (and the dict above)


def _batches(images_or_loader: Any, labels: Any, batch_size: int) -> Iterable[tuple[Any, Any]]:
    """Yield (images, targets or None) batches from a loader of (images, targets) or from a sequence."""
    if labels is None and not isinstance(images_or_loader, torch.Tensor):
        for batch in images_or_loader:  # a DataLoader / iterable of (images, targets)
            if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
                raise EvalInputError("a data loader must yield (images, targets) pairs; "
                                     "or pass images and labels separately")
            yield batch[0], batch[1]
        return
    items = images_or_loader
    n = len(items)
    for start in range(0, n, batch_size):
        yield items[start:start + batch_size], None if labels is None else labels[start:start + batch_size]


def zeroshot_predict(model, images_or_loader: Any, classnames: Sequence[str], templates=None,
                     labels: Any = None, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (N, C) (``model.score`` of the images against the class weights) and targets (or None)."""
    weights = class_weights(model, classnames, templates)
    logits, targets = [], []
    for images, target in _batches(images_or_loader, labels, batch_size):
        logits.append(model.score(images, weights, IMAGE).float().cpu())  # the model's scorer (BLIP-2: ITC)
        if target is not None:
            target = torch.as_tensor(target)  # (B,) class ids, or (B, C) 0/1 for multi-label data (VOC 2007)
            multi = target.ndim == 2 and target.shape[1] == len(weights) > 1
            targets.append((target if multi else target.reshape(-1)).long().cpu())
    if not logits:
        raise EvalInputError("no images to classify: the data set is empty")
    return torch.cat(logits), (torch.cat(targets) if targets else None)


def zeroshot_classify(model, images_or_loader: Any, labels: Any, classnames: Sequence[str],
                      templates=None, batch_size: int = 64) -> dict[str, float]:
    """Zero-shot classification metrics (``acc1``, ``acc5`` with ≥ 5 classes, ``mean_per_class_recall``).

    ``images_or_loader``: images (paths, PIL images, arrays, or a float pixel tensor) with their class ids
    in ``labels``; or an iterable of ``(images, targets)`` batches (a DataLoader) with ``labels=None``.
    (N, C) 0/1 targets (multi-label data such as VOC 2007) give ``mean_average_precision`` and the per-class
    values instead, as CLIP_benchmark does.
    """
    logits, targets = zeroshot_predict(model, images_or_loader, classnames, templates, labels, batch_size)
    if targets is None:
        raise EvalInputError("no labels: pass labels, or a loader yielding (images, targets)")
    if targets.ndim == 2:  # multi-label, as CLIP_benchmark detects it: mean average precision over classes
        return multilabel_metrics(logits, targets, list(classnames))
    return zeroshot_metrics(logits, targets, num_classes=len(list(classnames)))
