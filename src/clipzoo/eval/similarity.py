"""Semantic similarity: correlation between the cosine similarity of two texts' features and human scores.

Metrics (SentEval / MTEB STS and the word-similarity literature): ``spearman`` is Spearman's rank
correlation (``scipy.stats.spearmanr``, ties get average ranks) between the cosine similarities and
the human scores, the headline number; ``pearson`` is Pearson's linear correlation of the same two;
``n_pairs`` the number of pairs. Scores must be finite numbers (``nan``, ``inf`` are refused, naming the line).
When every human score is the same both correlations are undefined: NaN, with one ``RuntimeWarning``; when the
model gives every pair the same cosine they are NaN too (the model's answer, not a data error: no warning).

Files read by :func:`read_pairs` (``format`` in brackets):

* ``sts``: STS benchmark ``sts-{train,dev,test}.csv`` (tab separated, no header:
  ``genre filename year id score sentence1 sentence2 [source...]``), GLUE/sentence-transformers tsv
  files with a header naming ``sentence1``, ``sentence2`` and ``score``, or ``s1<TAB>s2<TAB>score``;
* ``rg65``: Rubenstein & Goodenough ``word1;word2;score`` (no header; a tab also works);
* ``simlex``: SimLex-999 ``SimLex-999.txt`` (tab separated, header ``word1 word2 POS SimLex999 ...``;
  the score is column ``SimLex999``);
* ``wordsim``: WordSim-353 ``combined.csv`` / ``set1.csv`` (header ``Word 1,Word 2,Human (mean)``) or
  the tab-separated ``combined.tab``;
* ``pairs``: any ``a<SEP>b<SEP>score`` file (SEP: tab, ``;``, ``,`` or spaces, taken from the first
  line), with an optional header line (one whose score is not a number), e.g. EN-RG-65.txt, MEN.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DatasetError, EvalInputError, MissingExtraError, warn_user
from .metrics import as_tensor
from .text_retrieval import numbered_lines as _lines

__all__ = ["FORMATS", "read_pairs", "detect_format", "similarity_metrics", "similarity_evaluate"]

FORMATS = ("sts", "rg65", "simlex", "wordsim", "pairs")
Pair = tuple[str, str, float]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _score(path: Path, lineno: int, text: str, expected: str) -> float:
    """The human score ``text`` of line ``lineno``; a :class:`DatasetError` when it is not a finite number (``nan``,
    ``inf`` and ``1e400`` made both correlations NaN without a word)."""
    score = _number(text)
    if score is None:
        raise DatasetError(f"{path}:{lineno}: score {text!r} is not a number (expected {expected})")
    if not math.isfinite(score):
        raise DatasetError(f"{path}:{lineno}: score {text!r} is not a finite number (expected {expected})")
    return score


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "").replace(" ", "")


def _sts_header(fields: list[str]) -> tuple[int, int, int] | None:
    names = [_norm(f) for f in fields]
    if "sentence1" in names and "sentence2" in names:
        score = next((names.index(n) for n in ("score", "similarityscore", "label", "gold") if n in names), -1)
        return names.index("sentence1"), names.index("sentence2"), score
    return None


def detect_format(path: Any) -> str:
    """The :data:`FORMATS` entry a file looks like, from its first line (and extension)."""
    path = Path(path)
    first = _lines(path)[0][1]
    low = first.lower()
    if "simlex999" in low:
        return "simlex"
    if "human (mean)" in low or low.startswith("word 1"):
        return "wordsim"
    tabs = first.split("\t")
    if _sts_header(tabs) is not None or (len(tabs) >= 7 and _number(tabs[4]) is not None):
        return "sts"
    if ";" in first and "\t" not in first:
        return "rg65"
    return "pairs"


def _by_columns(path: Path, lines: list[tuple[int, str]], sep: str, cols: tuple[int, int, int],
                expected: str) -> list[Pair]:
    out = []
    need = max(cols) + 1
    for lineno, line in lines:
        fields = line.split(sep)
        if len(fields) < need:
            raise DatasetError(f"{path}:{lineno}: expected {expected}, got {len(fields)} field(s)")
        a, b, s = (fields[c].strip() for c in cols)
        out.append((a, b, _score(path, lineno, s, expected)))
    return out


def _named(path: Path, lines: list[tuple[int, str]], sep: str, names: Sequence[str], expected: str) -> list[Pair]:
    header = [_norm(f) for f in lines[0][1].split(sep)]
    cols = []
    for name in names:
        if _norm(name) not in header:
            raise DatasetError(f"{path}:{lines[0][0]}: header has no {name!r} column (expected {expected})")
        cols.append(header.index(_norm(name)))
    return _by_columns(path, lines[1:], sep, tuple(cols), expected)


def _three(path: Path, lines: list[tuple[int, str]], expected: str, sep: str | None = None,
           header: bool = True) -> list[Pair]:
    first = lines[0][1]
    if sep is None:
        sep = next((s for s in ("\t", ";", ",") if s in first), None)
    split = (lambda line: line.split(sep)) if sep else (lambda line: line.split())
    if header and _number(split(first)[-1].strip()) is None:  # a header line
        lines = lines[1:]
    out = []
    for lineno, line in lines:
        fields = split(line)
        if len(fields) != 3:
            raise DatasetError(f"{path}:{lineno}: expected {expected}, got {len(fields)} field(s)")
        out.append((fields[0].strip(), fields[1].strip(), _score(path, lineno, fields[2].strip(), expected)))
    return out


def read_pairs(path: Any, format: str = "auto") -> list[Pair]:
    """``[(text_a, text_b, human_score), ...]`` from a similarity file (formats: module docstring)."""
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise DatasetError(f"unknown similarity format {format!r}; use 'auto' or one of {', '.join(FORMATS)}")
    lines = _lines(path)
    if fmt == "simlex":
        pairs = _named(path, lines, "\t", ("word1", "word2", "SimLex999"),
                       "SimLex-999 tab-separated columns word1, word2, SimLex999")
    elif fmt == "wordsim":
        sep = "\t" if "\t" in lines[0][1] else ","
        pairs = _named(path, lines, sep, ("Word 1", "Word 2", "Human (mean)"),
                       "WordSim-353 columns 'Word 1', 'Word 2', 'Human (mean)'")
    elif fmt == "rg65":
        pairs = _three(path, lines, "'word1;word2;score' (RG65)", "\t" if "\t" in lines[0][1] else ";",
                       header=False)
    elif fmt == "pairs":
        pairs = _three(path, lines, "'a<SEP>b<SEP>score' with SEP a tab, ';', ',' or spaces")
    else:  # sts
        tabs = lines[0][1].split("\t")
        header = _sts_header(tabs)
        if header is not None:
            if header[2] < 0:
                raise DatasetError(f"{path}:{lines[0][0]}: header has no 'score' column (a test split without "
                                   "gold scores cannot be evaluated)")
            pairs = _by_columns(path, lines[1:], "\t", (header[0], header[1], header[2]),
                                "tab-separated columns sentence1, sentence2, score")
        elif len(tabs) >= 7:
            pairs = _by_columns(path, lines, "\t", (5, 6, 4),
                                "STS benchmark 'genre filename year id score sentence1 sentence2'")
        else:
            pairs = _three(path, lines, "'sentence1<TAB>sentence2<TAB>score'", "\t")
    if not pairs:
        raise DatasetError(f"{path}: no pairs found")
    return pairs


def similarity_metrics(features_a: Any, features_b: Any, scores: Any) -> dict[str, float]:
    """``spearman`` and ``pearson`` correlation of ``cos(features_a[i], features_b[i])`` with
    ``scores[i]``, and ``n_pairs``."""
    try:
        from scipy import stats
    except ImportError:
        raise MissingExtraError("similarity correlations need scipy, which is not installed; "
                                "pip install 'clipzoo[eval]'") from None
    a = as_tensor(features_a, "features_a", ndim=2).double()
    b = as_tensor(features_b, "features_b", ndim=2).double()
    y = as_tensor(scores, "scores", ndim=1).double()
    if a.shape != b.shape:
        raise EvalInputError(f"features_a {tuple(a.shape)} and features_b {tuple(b.shape)} differ in shape")
    if y.shape[0] != a.shape[0]:
        raise EvalInputError(f"scores has {y.shape[0]} entries for {a.shape[0]} pairs")
    if a.shape[0] < 2:
        raise EvalInputError("a correlation needs at least 2 pairs")
    # rounded to float32, the features' own precision: identical pairs' cosines differed by 1e-16 (a rounding of
    # the double sum), and those differences were ranked — spearman 0.94 for pairs that all scored cosine 1
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=1).float().double().numpy()
    if bool((y == y[0]).all()):  # a constant input gives NaN: said once, in words, whose fault it is
        warn_user(f"similarity: every human score is {float(y[0]):g}; Spearman and Pearson are undefined (NaN) — "
                  "check the score column", RuntimeWarning)
    elif bool((cos == cos[0]).all()):
        warn_user(f"similarity: the model gives every pair the same cosine ({cos[0]:.6g}); Spearman and Pearson are "
                  "undefined (NaN) — are the two texts of each pair the same?", RuntimeWarning)
    with warnings.catch_warnings():  # a constant input: NaN, said once above
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"spearman": float(stats.spearmanr(cos, y.numpy()).statistic),
                "pearson": float(stats.pearsonr(cos, y.numpy()).statistic),
                "n_pairs": int(a.shape[0])}


def similarity_evaluate(model: Any, pairs: Sequence[Pair], batch_size: int = 256) -> dict[str, float]:
    """Encode every distinct text once with ``model.encode_text`` and score ``pairs``
    (``(text_a, text_b, human_score)`` tuples, as :func:`read_pairs` returns)."""
    if not pairs:
        raise EvalInputError("no pairs to evaluate")
    try:
        a_texts, b_texts, scores = zip(*pairs)
    except ValueError:
        raise EvalInputError("pairs must be (text_a, text_b, score) triples") from None
    texts = list(dict.fromkeys(a_texts + b_texts))
    index = {t: i for i, t in enumerate(texts)}
    feats = model.encode_text(texts, normalize=True, truncate=True, batch_size=batch_size)
    feats = torch.as_tensor(feats)
    a = feats[[index[t] for t in a_texts]]
    b = feats[[index[t] for t in b_texts]]
    return similarity_metrics(a, b, [float(s) for s in scores])
