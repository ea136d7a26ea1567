"""The Wiki Sections triplets (Dor et al. 2018, "Learning Thematic Similarity Metric from Article Sections
Using Triplet Networks"; sentence-transformers' ``wikipedia-sections-triplets``) as a passage-retrieval set.

Files: ``train.csv`` / ``validation.csv`` / ``test.csv``, comma-separated with the header
``Sentence1,Sentence2,Sentence3`` — anchor, positive (a sentence of the same section), negative (a sentence
of another section of the same article); extra columns (``Title``, …) are ignored. As retrieval: each distinct
anchor is a query; the corpus is every distinct positive and negative sentence; a query's relevant passages
are its positives. :func:`triplet_accuracy` is the triplet metric of the paper (and of sentence-transformers'
``TripletEvaluator``): the share of triplets whose anchor is closer (cosine) to the positive than to the
negative.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..files import NOT_REGULAR

__all__ = ["WIKI_SECTIONS_FILES", "read_wiki_triplets", "wiki_sections_retrieval", "triplet_accuracy",
           "find_wiki_sections"]

WIKI_SECTIONS_FILES = ("test.csv", "validation.csv", "train.csv")
_COLUMNS = ("Sentence1", "Sentence2", "Sentence3")


def find_wiki_sections(location: Any) -> Path | None:
    """The triplets file for ``location`` (a .csv, or a folder with test.csv …), or None when it is not one."""
    path = Path(location)
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    if path.is_dir():
        for name in WIKI_SECTIONS_FILES:
            if (path / name).is_file():
                return path / name
    return None


def read_wiki_triplets(path: Any) -> list[tuple[str, str, str]]:
    """(anchor, positive, negative) rows of a Wiki Sections CSV."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {NOT_REGULAR}" if path.exists() else f"{path}: file not found")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: a Wiki Sections file needs the header Sentence1,Sentence2,Sentence3 "
                               f"(anchor, positive, negative); missing {', '.join(missing)}")
        rows = []
        for lineno, row in enumerate(reader, 2):
            values = tuple((row.get(c) or "").strip() for c in _COLUMNS)
            if not all(values):
                raise DatasetError(f"{path}:{lineno}: empty sentence in a triplet")
            rows.append(values)
    if not rows:
        raise DatasetError(f"{path}: no triplets")
    return rows


def wiki_sections_retrieval(path: Any) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, passages, qrels) — the shapes :func:`clipzoo.eval.text_retrieval.load_text_retrieval` returns."""
    queries: dict[str, str] = {}
    passages: dict[str, str] = {}
    qid_of: dict[str, str] = {}
    pid_of: dict[str, str] = {}
    qrels: dict[str, set[str]] = {}

    def pid(text: str) -> str:
        if text not in pid_of:
            pid_of[text] = f"p{len(pid_of)}"
            passages[pid_of[text]] = text
        return pid_of[text]

    for anchor, positive, negative in read_wiki_triplets(path):
        if anchor not in qid_of:
            qid_of[anchor] = f"q{len(qid_of)}"
            queries[qid_of[anchor]] = anchor
        qrels.setdefault(qid_of[anchor], set()).add(pid(positive))
        pid(negative)
    return queries, passages, qrels


def triplet_accuracy(model: Any, path: Any, batch_size: int = 256) -> dict[str, float]:
    """``triplet_accuracy``: share of triplets with cos(anchor, positive) > cos(anchor, negative)."""
    rows = read_wiki_triplets(path)
    a, p, n = ([r[i] for r in rows] for i in range(3))
    fa, fp, fn = (model.encode_text(x, batch_size=batch_size, truncate=True) for x in (a, p, n))
    wins = ((fa * fp).sum(-1) > (fa * fn).sum(-1)).float().mean()
    return {"triplet_accuracy": float(wins), "n_triplets": len(rows)}
