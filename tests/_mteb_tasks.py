"""Custom local MTEB / MIEB tasks over generated shapes, built from mteb's own task classes.

Each task reads ``ROOT/shapes.csv`` and ``ROOT/images/…`` (written by ``clipzoo.datasets.write_shapes``);
``ROOT`` is the class attribute ``root`` (a test sets it, or subclasses the task in a file it writes).
"""
from __future__ import annotations

import csv
from pathlib import Path

from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.abstasks.zeroshot_classification import AbsTaskZeroShotClassification
from PIL import Image

from clipzoo.datasets.shapes import classnames

COMMON = dict(description="Generated shapes (clipzoo's tests).", reference="https://github.com/embeddings-benchmark/mteb",
              dataset={"path": "NA", "revision": "NA"}, eval_splits=["test"], eval_langs=["eng-Latn"],
              date=("2026-01-01", "2026-01-01"), dialect=["Written"], domains=[], task_subtypes=[],
              license="cc-by-4.0", annotations_creators="derived", sample_creation="found", bibtex_citation="")
CLASSES = classnames("shape_color")  # what clipzoo/tiny-shapes was trained on: "red circle", …
PROMPTS = [f"a photo of a {c}." for c in CLASSES]


def rows(root) -> list[dict]:
    with open(Path(root) / "shapes.csv", newline="") as f:
        return list(csv.DictReader(f))


def images(root) -> list[Image.Image]:
    return [Image.open(Path(root) / r["filepath"]).convert("RGB") for r in rows(root)]


def sts_pairs(root) -> tuple[list[str], list[str], list[float]]:
    """Caption i with caption i+1; gold = how many of shape, colour, size they share (0–3)."""
    r = rows(root)
    pairs = list(zip(r[:-1], r[1:]))
    gold = [float(sum(a[k] == b[k] for k in ("shape", "color", "size"))) for a, b in pairs]
    return [a["caption"] for a, _ in pairs], [b["caption"] for _, b in pairs], gold


def caption_retrieval(root) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """Queries "a COLOR SHAPE", documents the distinct captions; relevant: same shape and colour."""
    r = rows(root)
    docs = sorted({x["caption"] for x in r})
    attrs = {x["caption"]: (x["shape"], x["color"]) for x in r}
    queries = sorted({(x["shape"], x["color"]) for x in r})
    qrels = {f"q{i}": {f"d{j}": 1 for j, d in enumerate(docs) if attrs[d] == q} for i, q in enumerate(queries)}
    return [f"a {c} {s}" for s, c in queries], docs, qrels


class ShapesSTS(AbsTaskSTS):
    root = None
    metadata = TaskMetadata(type="STS", name="ShapesSTS", main_score="cosine_spearman", category="t2t",
                            modalities=["text"], **COMMON)
    min_score, max_score = 0, 3

    def load_data(self, **kwargs):
        s1, s2, gold = sts_pairs(self.root)
        self.dataset = DatasetDict({"test": Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": gold})})
        self.data_loaded = True


class ShapesCaptionRetrieval(AbsTaskRetrieval):
    root = None
    metadata = TaskMetadata(type="Retrieval", name="ShapesCaptionRetrieval", main_score="ndcg_at_10",
                            category="t2t", modalities=["text"], **COMMON)

    def load_data(self, **kwargs):
        queries, docs, qrels = caption_retrieval(self.root)
        split = RetrievalSplitData(
            queries=Dataset.from_dict({"id": [f"q{i}" for i in range(len(queries))], "text": queries}),
            corpus=Dataset.from_dict({"id": [f"d{j}" for j in range(len(docs))], "text": docs}),
            relevant_docs=qrels, top_ranked=None)
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class ShapesImageToPromptRetrieval(AbsTaskRetrieval):
    """MIEB's Any2AnyRetrieval, image -> text: each image's relevant document is its class's prompt."""

    root = None
    metadata = TaskMetadata(type="Any2AnyRetrieval", name="ShapesImageToPromptRetrieval", main_score="ndcg_at_10",
                            category="i2t", modalities=["image", "text"], **COMMON)

    def load_data(self, **kwargs):
        r = rows(self.root)
        split = RetrievalSplitData(
            queries=Dataset.from_dict({"id": [f"q{i}" for i in range(len(r))], "image": images(self.root)}),
            corpus=Dataset.from_dict({"id": [f"d{j}" for j in range(len(PROMPTS))], "text": PROMPTS}),
            relevant_docs={f"q{i}": {f"d{CLASSES.index(x['shape_color'])}": 1} for i, x in enumerate(r)},
            top_ranked=None)
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class ShapesZeroShot(AbsTaskZeroShotClassification):
    """MIEB's zero-shot image classification over the shape × colour prompts."""

    root = None
    metadata = TaskMetadata(type="ZeroShotClassification", name="ShapesZeroShot", main_score="accuracy",
                            category="i2t", modalities=["image", "text"], **COMMON)

    def load_data(self, **kwargs):
        labels = [CLASSES.index(x["shape_color"]) for x in rows(self.root)]
        self.dataset = DatasetDict({"test": Dataset.from_dict({"image": images(self.root), "label": labels})})
        self.data_loaded = True

    def get_candidate_labels(self) -> list[str]:
        return list(PROMPTS)
