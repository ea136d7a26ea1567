"""ELEVATER's image-classification data: the 20 data sets' names, class names, prompt templates and metrics
(shipped as ``elevater_datasets.json``, copied from ELEVATER's toolkit), read from local folders through the
``vision-datasets`` package (its ``DatasetInfo`` / ``DataManifestFactory`` / ``VisionDataset``), and its
few-shot sampling (``SampleFewShot``: ELEVATER's shot counts 5, 20, 50 and seeds 0, 1, 2; for a multilabel set it
draws images until every class has at least that many, as ELEVATER's) and its validation split of a multilabel
train set (:func:`multilabel_val_split`).

A data root holds, for each data set, the files of its hub entry under ``root_folder`` (IRIS index
``train.txt`` / ``val.txt`` / ``test.txt`` of ``path label`` lines — ``zip@member`` paths work — and a
``labels.txt``, or COCO JSON with ``"format": "coco"``). The entries come from ``DATA_ROOT/vision_datasets.json``
when it exists (ELEVATER's own file, or one written for custom data), else from ELEVATER's shipped entries.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EvalInputError
from ..extras import require

__all__ = ["CATALOG_FILE", "HUB_FILE", "ElevaterSet", "ElevaterSplit", "catalog", "elevater_names", "open_sets",
           "read_split", "fewshot_ids", "multilabel_val_split"]

CATALOG_FILE = Path(__file__).with_name("elevater_datasets.json")
HUB_FILE = "vision_datasets.json"
FEATURE = "ELEVATER evaluation"
_USAGES = {"train": "TRAIN", "val": "VAL", "test": "TEST"}
MULTILABEL_TYPE = "classification_multilabel"


def catalog() -> dict[str, Any]:
    """The shipped data: ``shots``, ``seeds`` and ``datasets`` (name, metric, classnames, templates, hub)."""
    return json.loads(CATALOG_FILE.read_text(encoding="utf-8"))


def elevater_names() -> list[str]:
    """The 20 data sets of ELEVATER's image-classification benchmark, in its order."""
    return [d["name"] for d in catalog()["datasets"]]


@dataclass
class ElevaterSet:
    """One data set: its hub entry, class names, templates and metric (ELEVATER's when it is one of the 20)."""

    name: str
    hub: dict[str, Any]
    classnames: list[str]
    templates: list[str]
    metric: str = "accuracy"
    splits: list[str] = field(default_factory=list)

    @property
    def multilabel(self) -> bool:
        """A multilabel set (vision-datasets' ``classification_multilabel``, e.g. voc-2007-classification)."""
        return self.hub.get("type") == MULTILABEL_TYPE


@dataclass
class ElevaterSplit:
    """One split read through vision-datasets: PIL images, class ids (a sorted list of them per image for a
    multilabel set) and the manifest's image ids."""

    images: list[Any]
    labels: list[Any]
    ids: list[Any]
    manifest: Any = None


def _vd():
    return require("vision_datasets", FEATURE)


def _info(entry: dict[str, Any]):
    from vision_datasets.common.dataset_info import DatasetInfoFactory

    return DatasetInfoFactory.create(entry)


def _hub_entries(root: Path) -> list[dict[str, Any]]:
    hub = root / HUB_FILE
    if hub.is_file():
        try:
            entries = json.loads(hub.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{hub} is not valid JSON ({exc}); fix the file or remove it to use "
                                 "ELEVATER's own entries") from None
        if not isinstance(entries, list):
            raise EvalInputError(f"{hub} must hold a list of data set entries (vision-datasets' hub format)")
        return entries
    return [d["hub"] for d in catalog()["datasets"]]


def _split_present(root: Path, entry: dict[str, Any], split: str) -> bool:
    usage = entry.get(split)
    if not usage:
        return False
    return (root / (entry.get("root_folder") or "") / usage["index_path"]).is_file()


def _labelmap(root: Path, entry: dict[str, Any]) -> list[str]:
    path = root / (entry.get("root_folder") or "") / (entry.get("labelmap") or "labels.txt")
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_sets(data_root: str | Path, names: list[str] | None = None) -> list[ElevaterSet]:
    """The data sets found under ``data_root`` (those with a test split on disk), or ``names`` only."""
    root = Path(data_root)
    if not root.is_dir():
        raise EvalInputError(f"--data-root {root} is not a folder; point it at the folder that holds the "
                             "ELEVATER data sets (or a vision_datasets.json and its data)")
    known = {d["name"]: d for d in catalog()["datasets"]}
    entries = {e["name"]: e for e in _hub_entries(root)}
    wanted = list(names) if names else list(entries)
    unknown = [n for n in wanted if n not in entries]
    if unknown:
        raise EvalInputError(f"unknown ELEVATER data set {unknown[0]!r}: choose from {', '.join(entries)}")
    sets = []
    for name in wanted:
        entry = entries[name]
        splits = [s for s in _USAGES if _split_present(root, entry, s)]
        if "test" not in splits:
            if names:
                folder = root / (entry.get("root_folder") or "")
                raise EvalInputError(f"data set {name!r} has no test index under {folder}; download it there or "
                                     "leave it out of --datasets")
            continue
        ref = known.get(name, {})
        classnames = ref.get("classnames") or _labelmap(root, entry) or _manifest_classnames(root, entry)
        if not classnames:
            raise EvalInputError(f"data set {name!r} has no class names: add a labels.txt (one per line) beside "
                                 "its index")
        templates = ref.get("templates") or ["a photo of a {}."]
        metric = ref.get("metric") or ("11point_mAP" if entry.get("type") == MULTILABEL_TYPE else "accuracy")
        sets.append(ElevaterSet(name, entry, list(classnames), list(templates), metric, splits))
    if not sets:
        raise EvalInputError(f"no ELEVATER data set found under {root}: each needs its test index file "
                             f"(see {HUB_FILE}); nothing to evaluate")
    return sets


def _manifest(root: Path, entry: dict[str, Any], split: str):
    vd = _vd()
    from vision_datasets.common.factory.data_manifest_factory import DataManifestFactory

    info = _info(entry)
    if info.type not in (vd.DatasetTypes.IMAGE_CLASSIFICATION_MULTICLASS,
                         vd.DatasetTypes.IMAGE_CLASSIFICATION_MULTILABEL):
        raise EvalInputError(f"data set {entry['name']!r} is {info.type.name.lower()}; ELEVATER evaluation here "
                             "supports image classification only (leave it out with --datasets)")
    return info, DataManifestFactory.create(info, vd.Usages[_USAGES[split]], str(root))


def _manifest_classnames(root: Path, entry: dict[str, Any]) -> list[str]:
    categories = _manifest(root, entry, "test")[1].categories or []
    return [c.name for c in sorted(categories, key=lambda c: c.id)]


def read_split(data_root: str | Path, ds: ElevaterSet, split: str, manifest: Any = None) -> ElevaterSplit:
    """Images, labels and ids of one split (or of ``manifest``, e.g. a few-shot sample of it)."""
    vd = _vd()
    root = Path(data_root)
    info, full = _manifest(root, ds.hub, split)
    manifest = full if manifest is None else manifest
    data = vd.VisionDataset(info, manifest)
    images, labels, ids = [], [], []
    try:
        for i, image in enumerate(manifest.images):
            if len(image.labels) != 1 and not ds.multilabel:
                raise EvalInputError(f"image {image.img_path} of {ds.name!r} has {len(image.labels)} labels; "
                                     "a multiclass data set needs exactly one")
            images.append(data[i][0].convert("RGB"))
            ids_of = sorted({int(label.category_id) for label in image.labels})
            labels.append(ids_of if ds.multilabel else ids_of[0])
            ids.append(image.id)
    finally:
        data.close()
    flat = [c for cs in labels for c in cs] if ds.multilabel else labels
    bad = [c for c in flat if not 0 <= c < len(ds.classnames)]
    if bad:
        raise EvalInputError(f"{ds.name!r} {split} has class id {bad[0]} but {len(ds.classnames)} class names")
    return ElevaterSplit(images, labels, ids, manifest)


def fewshot_ids(data_root: str | Path, ds: ElevaterSet, shots: int, seed: int) -> list[Any]:
    """Image ids of ELEVATER's few-shot train subset: vision-datasets' ``SampleFewShot`` with ``seed``."""
    _vd()
    from vision_datasets.common.data_manifest.data_manifest import CategoryManifest
    from vision_datasets.common.data_manifest.operations.sample import SampleByFewShotConfig, SampleFewShot

    if shots < 1:
        raise EvalInputError(f"--shots must be at least 1, got {shots}")
    _, manifest = _manifest(Path(data_root), ds.hub, "train")
    manifest.categories = manifest.categories or [CategoryManifest(i, c) for i, c in enumerate(ds.classnames)]
    try:
        sample = SampleFewShot(SampleByFewShotConfig(random_seed=int(seed), n_shots=int(shots))).sample(manifest)
    except RuntimeError as exc:
        raise EvalInputError(f"{ds.name!r}: cannot sample {shots} shots per class ({exc}); lower --shots") from None
    return [image.id for image in sample.images]


def multilabel_val_split(targets: Any, val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """ELEVATER's validation split of a multilabel train set (its ``get_dataloader(val_split=0.2)``): each class
    wants ``ceil(positives * val_fraction)`` validation images; while one still wants some, the first class that
    does takes the first image (in data order) holding it that is not yet taken, and every class of that image
    counts it. Deterministic, as ELEVATER's. Returns sorted (fit, validation) indices of the (N, C) 0/1 targets."""
    if not 0 < val_fraction < 1:
        raise EvalInputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = np.array(targets, dtype=float)
    if labels.ndim != 2:
        raise EvalInputError(f"a multilabel validation split needs (N, C) 0/1 targets, got shape {labels.shape}")
    wanted = np.ceil(np.sum(labels, axis=0) * val_fraction)  # ELEVATER's expression
    val: list[int] = []
    pending = np.flatnonzero(wanted > 0)
    while pending.size:
        row = int(np.flatnonzero(labels[:, pending[0]] > 0)[0])
        val.append(row)
        wanted -= labels[row]
        labels[row] = 0
        pending = np.flatnonzero(wanted > 0)
    fit = sorted(set(range(len(labels))) - set(val))
    return np.array(fit, dtype=int), np.array(sorted(val), dtype=int)
