"""Run evaluation tasks on data sets with one model, embedding each data set once.

:class:`Evaluator` holds a model and caches: image features per data set (in memory, and on disk
under ``cache_dir`` when given) and class weights per (class names, templates). Every task method
returns a :class:`TaskResult`: the CLIP_benchmark-style record plus what the plots need.

    >>> ev = Evaluator(clipzoo.load("model.pt"))
    >>> data = open_dataset("shapes/")
    >>> ev.zeroshot(data).record["metrics"]      # {"acc1": …, "acc5": …, "mean_per_class_recall": …}
    >>> ev.run(["zeroshot", "retrieval", "knn", "cluster", "linear-probe"], data)   # one embedding pass
"""
from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..datasets.classes import resolve_classnames, resolve_templates
from ..datasets.loader import record_batches
from ..embed import default_workers
from ..errors import BadImageError, DatasetError, EvalInputError
from ..progress import progress as progress_bar
from .clustering import cluster_metrics
from .linear_probe import linear_probe as fit_linear_probe
from .metrics import knn_metrics, knn_scores, retrieval_metrics, zeroshot_metrics
from .results import make_result
from .retrieval import flatten_captions
from .similarity import read_pairs, similarity_evaluate
from .text_retrieval import load_text_retrieval, text_retrieval_evaluate
from .zeroshot import check_templates
from .zeroshot import class_weights as zeroshot_class_weights

__all__ = ["Evaluator", "DatasetFeatures", "TaskResult", "IMAGE_TASKS", "TEXT_TASKS", "TASKS", "split_train_test",
           "model_fields", "supported_tasks"]

IMAGE_TASKS = ("zeroshot", "retrieval", "linear-probe", "knn", "cluster")
TEXT_TASKS = ("text-retrieval", "similarity")
TASKS = IMAGE_TASKS + TEXT_TASKS
DEFAULT_TEMPLATES = ("a photo of a {c}.",)
MAX_LISTED = 20  # skipped images named in a result file


@dataclass
class DatasetFeatures:
    """Image features of a data set, in data set order, with what came with each image."""

    features: torch.Tensor  # (N, D) float32, L2-normalised
    labels: "torch.Tensor | None"  # (N,) long, or None when the data has no labels
    captions: list[list[str]]
    keys: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, index: torch.Tensor) -> "DatasetFeatures":
        idx = index.tolist()
        return DatasetFeatures(self.features[index], None if self.labels is None else self.labels[index],
                               [self.captions[i] for i in idx], [self.keys[i] for i in idx], [])


@dataclass
class TaskResult:
    record: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return self.record["metrics"]


def model_fields(model) -> tuple[str, str]:
    """(model, pretrained) for result files, as CLIP_benchmark names them."""
    card = model.card
    oc = getattr(card.source, "open_clip", None)
    if oc:
        return str(oc[0]), str(oc[1] or "")
    if getattr(card.source, "path", None) and card.publisher != "local":  # catalogued (the embedded model,
        return card.display_name, ""  # unpacked to a cache folder) or registered: clipzoo/tiny-shapes, no path
    if getattr(card.source, "path", None):  # a local file or folder: its name, and the path as "pretrained"
        return Path(str(card.source.path).rstrip("/")).stem or card.architecture, str(card.source.path)
    return card.id, card.publisher


def split_train_test(n: int, labels: "torch.Tensor | None", train_fraction: float = 0.5, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split of ``range(n)`` (stratified by label when there are labels)."""
    if not 0 < train_fraction < 1:
        raise EvalInputError(f"train fraction must be between 0 and 1, got {train_fraction}")
    g = torch.Generator().manual_seed(seed)
    groups = [torch.arange(n)] if labels is None else [torch.nonzero(labels == c).flatten() for c in labels.unique()]
    train, test = [], []
    for idx in groups:
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = int(round(len(idx) * train_fraction))
        cut = min(max(cut, 1 if len(idx) > 1 else 0), len(idx) - 1) if len(idx) > 1 else len(idx)
        train.append(idx[:cut])
        test.append(idx[cut:])
    train_idx, test_idx = torch.cat(train).sort()[0], torch.cat(test).sort()[0]
    if len(train_idx) == 0 or len(test_idx) == 0:
        error = EvalInputError(f"{n} examples are too few to split into train and test; pass a train data set")
        error.cli_message = f"{n} examples are too few to split into train and test; pass --train-dataset"
        raise error
    return train_idx, test_idx


class Evaluator:
    """One model, many tasks and data sets; each data set is embedded once."""

    def __init__(self, model, *, batch_size: int = 64, workers: "int | None" = None, strict: bool = False,
                 cache_dir: "str | os.PathLike | None" = None, progress: bool = False, seed: int = 0):
        self.model = model
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise EvalInputError(f"batch size must be at least 1, got {batch_size}")
        self.workers = default_workers() if workers is None else int(workers)
        self.strict = strict
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.progress = progress
        self.seed = seed
        self._features: dict[str, DatasetFeatures] = {}
        self._weights: dict[tuple, torch.Tensor] = {}
        self.stats = {"image_passes": 0, "class_weight_passes": 0}

    # -------------------------------------------------------------- model identity for caches
    def _model_key(self) -> str:
        card = self.model.card
        parts = [card.alias, card.backend, str(self.model.dtype), str(getattr(self.model, "image_size", ""))]
        path = getattr(card.source, "path", None)
        if path and os.path.exists(path):
            st = os.stat(path)
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def _record(self, data_name: str, task: str, metrics: dict, **extra) -> dict:
        model, pretrained = model_fields(self.model)
        return make_result(data_name, model, pretrained, task, metrics, **extra)

    # -------------------------------------------------------------- features
    def features(self, data) -> DatasetFeatures:
        """Image features of a :class:`~clipzoo.datasets.DataSource` (cached per model and data)."""
        key = f"{self._model_key()}-{data.fingerprint()}"
        if key in self._features:
            return self._features[key]
        cached = self._load_cached(key)
        if cached is None:
            cached = self._embed(data)
            self._save_cached(key, cached)
        self._features[key] = cached
        return cached

    def _embed(self, data) -> DatasetFeatures:
        model = self.model
        device = torch.device(model.device)
        rows: list[tuple[tuple[int, int], torch.Tensor, Any, list[str], str]] = []
        skipped: list[tuple[tuple[int, int], str, str]] = []
        self.stats["image_passes"] += 1
        with progress_bar(data.size or 0, f"embedding {data.name}", enabled=self.progress and bool(data.size),
                          unit="images") as advance:
            for batch in record_batches(data.shards, model.transform, self.batch_size, self.workers,
                                        pin_memory=device.type == "cuda"):
                if batch.shard_errors:
                    raise DatasetError(batch.shard_errors[0])
                if batch.errors:
                    if self.strict:
                        raise BadImageError(f"{batch.errors[0][2]} (--strict stops at the first bad image; "
                                            f"leave it out to count and skip bad images)")
                    skipped.extend(batch.errors)
                if batch.pixels is not None:
                    with torch.no_grad():
                        feats = model.encode_image(batch.pixels, normalize=True).float().cpu()
                    rows.extend(zip(batch.order, feats, batch.labels, batch.captions, batch.keys))
                advance(len(batch.order) + len(batch.errors))
        if not rows:
            if skipped:
                raise BadImageError(f"none of the images of data set {data.name!r} could be read; "
                                    f"first error: {sorted(skipped)[0][2]}")
            raise DatasetError(f"data set {data.name!r} ({data.location}) is empty: it holds no samples")
        rows.sort(key=lambda r: r[0])
        labels = [r[2] for r in rows]
        has_labels = all(v is not None for v in labels)
        if not has_labels and any(v is not None for v in labels):
            missing = sum(v is None for v in labels)
            raise DatasetError(f"data set {data.name!r}: {missing} of {len(labels)} samples have no label")
        return DatasetFeatures(torch.stack([r[1] for r in rows]),
                               torch.tensor(labels, dtype=torch.long) if has_labels else None,
                               [r[3] for r in rows], [r[4] for r in rows],
                               [{"input": src, "error": err} for _, src, err in sorted(skipped)])

    def _cache_file(self, key: str) -> "Path | None":
        return self.cache_dir / f"features-{key}.pt" if self.cache_dir else None

    def _load_cached(self, key: str) -> "DatasetFeatures | None":
        path = self._cache_file(key)
        if path is None or not path.exists():
            return None
        try:
            blob = torch.load(path, weights_only=True)
            return DatasetFeatures(blob["features"], blob["labels"], blob["captions"], blob["keys"], blob["skipped"])
        except Exception:  # a damaged cache is recomputed, never trusted
            return None

    def _save_cached(self, key: str, f: DatasetFeatures) -> None:
        path = self._cache_file(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save({"features": f.features, "labels": f.labels, "captions": f.captions, "keys": f.keys,
                    "skipped": f.skipped}, tmp)
        os.replace(tmp, path)

    def class_weights(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Zero-shot class weights, cached per (class names, templates)."""
        key = (self._model_key(), tuple(classnames), tuple(templates))
        if key not in self._weights:
            self.stats["class_weight_passes"] += 1
            with torch.no_grad():
                self._weights[key] = zeroshot_class_weights(self.model, list(classnames), list(templates)).float().cpu()
        return self._weights[key]

    @staticmethod
    def _extra(f: DatasetFeatures) -> dict[str, Any]:
        if not f.skipped:
            return {}
        return {"skipped_images": len(f.skipped), "skipped": f.skipped[:MAX_LISTED]}

    def _labelled(self, data, f: DatasetFeatures, task: str) -> torch.Tensor:
        if f.labels is None:
            raise DatasetError(f"task {task} needs class labels but data set {data.name!r} has none "
                               f"(name the label column with --label-key)")
        return f.labels

    def _classnames(self, data, classnames, f: DatasetFeatures, task: str) -> list[str]:
        labels = self._labelled(data, f, task)
        names = resolve_classnames(classnames, data.name) if classnames is not None else data.classnames
        if not names:
            raise DatasetError(f"task {task} needs class names for data set {data.name!r}: add classnames.txt "
                               f"next to the data or pass --classnames")
        top = int(labels.max())
        if top >= len(names):
            raise DatasetError(f"data set {data.name!r} has labels up to {top} but only {len(names)} class names; "
                               f"the class names do not match the data")
        return list(names)

    # -------------------------------------------------------------- tasks
    def zeroshot(self, data, classnames: Any = None, templates: Any = None) -> TaskResult:
        """Top-1/top-5 accuracy and mean per-class recall of zero-shot classification."""
        temps = resolve_templates(templates, data.name) if templates is not None else data.templates
        temps = list(temps or DEFAULT_TEMPLATES)
        check_templates(temps)  # a bad template is said before the images are embedded
        f = self.features(data)
        names = self._classnames(data, classnames, f, "zeroshot")
        weights = self.class_weights(names, temps)
        logits = 100.0 * f.features @ F.normalize(weights, dim=-1).T
        metrics = zeroshot_metrics(logits, f.labels, num_classes=len(names))
        record = self._record(data.name, "zeroshot", metrics, **self._extra(f))
        return TaskResult(record, {"targets": f.labels, "predictions": logits.argmax(1), "logits": logits,
                                   "classnames": names, "templates": temps})

    def retrieval(self, data, recall_k: Sequence[int] = (1, 5, 10)) -> TaskResult:
        """Image→text and text→image recall@k; several captions per image."""
        f = self.features(data)
        without = sum(1 for c in f.captions if not c)
        if without == len(f):
            raise DatasetError(f"task retrieval needs captions but data set {data.name!r} has none "
                               f"(name the caption column with --caption-key)")
        if without:
            raise DatasetError(f"data set {data.name!r}: {without} of {len(f)} images have no caption; "
                               f"retrieval needs at least one per image")
        texts, index = flatten_captions(f.captions)
        with torch.no_grad():
            txt = self.model.encode_text(texts, truncate=True).float().cpu()
        index_t = torch.tensor(index)
        metrics = retrieval_metrics(f.features, txt, index_t, recall_k)
        ks = sorted({k for k in (1, 2, 5, 10, 20, 50, 100, *recall_k) if k <= max(len(f), len(texts))})
        curves = retrieval_metrics(f.features, txt, index_t, ks)
        curve = {"image_retrieval": {k: curves[f"image_retrieval_recall@{k}"] for k in ks},
                 "text_retrieval": {k: curves[f"text_retrieval_recall@{k}"] for k in ks}}
        return TaskResult(self._record(data.name, "retrieval", metrics, **self._extra(f)), {"curves": curve})

    def _train_test(self, data, train_data, train_fraction: float):
        test = self.features(data)
        if train_data is not None:
            return self.features(train_data), test
        train_idx, test_idx = split_train_test(len(test), test.labels, train_fraction, self.seed)
        return test.subset(train_idx), test.subset(test_idx)

    def knn(self, data, train_data=None, k: int = 20, temperature: float = 0.07,
            train_fraction: float = 0.5) -> TaskResult:
        """Weighted k-NN (cosine, votes exp(sim / T)) from the train features onto the test features."""
        train, test = self._train_test(data, train_data, train_fraction)
        self._labelled(data, test, "knn")
        self._labelled(train_data or data, train, "knn")
        num_classes = int(max(train.labels.max(), test.labels.max())) + 1
        metrics = knn_metrics(train.features, train.labels, test.features, test.labels, k, temperature, num_classes)
        metrics = {f"knn_{m}": v for m, v in metrics.items()}
        scores = knn_scores(train.features, train.labels, test.features, k, temperature, num_classes)
        names = data.classnames if data.classnames and len(data.classnames) >= num_classes else None
        used = min(int(k), len(train))  # every training example votes when there are fewer than k
        asked = {} if used == k else {"k_requested": int(k)}
        return TaskResult(self._record(data.name, "knn", metrics, k=used, **asked, temperature=temperature,
                                       **self._extra(self.features(data))),
                          {"targets": test.labels, "predictions": scores.argmax(1), "classnames": names})

    def linear_probe(self, data, train_data=None, train_fraction: float = 0.5, fewshot_k: "int | None" = None,
                     val_fraction: float = 0.2, regularization: Any = None) -> TaskResult:
        """Logistic regression on frozen features; regularisation swept on a validation split."""
        train, test = self._train_test(data, train_data, train_fraction)
        self._labelled(data, test, "linear-probe")
        self._labelled(train_data or data, train, "linear-probe")
        num_classes = len(data.classnames) if data.classnames else int(max(train.labels.max(), test.labels.max())) + 1
        out = fit_linear_probe(train.features.numpy(), train.labels.numpy(), test.features.numpy(), test.labels.numpy(),
                           num_classes=num_classes, val_fraction=val_fraction, regularization=regularization,
                           fewshot_k=fewshot_k, seed=self.seed)
        preds = out.pop("predictions", None)
        details = {"targets": test.labels, "classnames": data.classnames}
        if preds is not None:
            details["predictions"] = torch.as_tensor(preds)
        return TaskResult(self._record(data.name, "linear-probe", out, **self._extra(self.features(data))), details)

    def cluster(self, data, n_init: int = 10) -> TaskResult:
        """k-means (k = number of classes) on the image features; NMI, AMI, ARI."""
        f = self.features(data)
        labels = self._labelled(data, f, "cluster")
        k = len(data.classnames) if data.classnames else int(labels.unique().numel())
        k = min(k, len(f))
        metrics = cluster_metrics(f.features, labels, num_classes=k, seed=self.seed, n_init=n_init)
        return TaskResult(self._record(data.name, "cluster", metrics, **self._extra(f)))

    def text_retrieval(self, location, recall_k: Sequence[int] = (1, 5, 10, 100), name: "str | None" = None
                       ) -> TaskResult:
        """Query → passage retrieval with the text tower (MS MARCO-style files)."""
        queries, passages, qrels = load_text_retrieval(location)
        metrics = text_retrieval_evaluate(self.model, queries, passages, qrels, recall_k=recall_k)
        data_name = name or Path(str(location).rstrip("/")).stem
        return TaskResult(self._record(data_name, "text-retrieval", metrics))

    def similarity(self, location, format: str = "auto", name: "str | None" = None) -> TaskResult:
        """Spearman correlation of cosine similarity with human scores for text pairs."""
        pairs = read_pairs(location, format=format)
        metrics = similarity_evaluate(self.model, pairs)
        data_name = name or Path(str(location)).stem
        return TaskResult(self._record(data_name, "similarity", metrics))

    def run(self, tasks: Sequence[str], data, train_data=None, **options: Any) -> dict[str, TaskResult]:
        """Several image tasks on one data set, sharing one embedding pass. ``options`` go to the tasks
        that take them (``classnames``, ``templates``, ``recall_k``, ``k``, ``fewshot_k`` …)."""
        out = {}
        for task in tasks:
            if task not in IMAGE_TASKS:
                raise EvalInputError(f"unknown image task {task!r}: choose from {', '.join(IMAGE_TASKS)}")
            method = getattr(self, task.replace("-", "_"))
            params = inspect.signature(method).parameters
            kwargs = {k: v for k, v in options.items() if k in params}
            if "train_data" in params:
                kwargs["train_data"] = train_data
            out[task] = method(data, **kwargs)
        return out


def supported_tasks(evaluator: Evaluator, data) -> list[str]:
    """The image tasks the data supports: labels for knn / linear-probe / cluster, class names too for
    zeroshot, a caption for every image for retrieval (embeds the data set, which every task needs)."""
    f = evaluator.features(data)
    tasks = []
    if f.labels is not None and data.classnames:
        tasks.append("zeroshot")
    if f.captions and all(f.captions):
        tasks.append("retrieval")
    if f.labels is not None:
        tasks += ["linear-probe", "knn", "cluster"]
    if not tasks:
        raise DatasetError(f"data set {data.name!r} has neither labels nor captions: nothing to evaluate "
                           f"(name them with --label-key / --caption-key)")
    return tasks
