"""SentEval's sentence-embedding transfer tasks (MR, CR, SUBJ, MPQA, SST2, TREC, MRPC) as SentEval runs them.

Files and folders are SentEval's (``data/downstream/TASK``): ``MR/rt-polarity.pos|neg``, ``CR/custrev.pos|neg``,
``SUBJ/subj.objective|subjective`` (objective = 0), ``MPQA/mpqa.pos|neg`` (latin-1, one sentence a line);
``SST/binary/sentiment-train|dev|test`` (``sentence<TAB>label``); ``TREC/train_5500.label`` and ``TREC_10.label``
(``COARSE:fine question``, six coarse classes); ``MRPC/msr_paraphrase_train.txt|test.txt`` (TSV with a header:
``Quality, #1 ID, #2 ID, #1 String, #2 String``; features ``[|u - v|, u * v]``, accuracy and F1).

The protocol is SentEval's scikit-learn logistic regression (``LogisticRegression(C, random_state=seed)``, seed 1111,
``kfold`` 5): the binary tasks use its *inner k-fold* classifier (outer stratified k-fold; in each outer train
split, ``C`` in ``2**-2 … 2**3`` chosen by an inner stratified k-fold; accuracies averaged over the outer folds);
TREC and MRPC its *k-fold* classifier (``C`` in ``2**-1 … 2**5`` chosen by k-fold cross-validation on train, then
train → test); SST2 its *split* classifier (``C`` in ``2**-2 … 2**3`` chosen on dev). Samples are sorted by
(length in tokens, label) before embedding, as SentEval sorts them, so the folds are the same. Scores are in
percent, rounded to two decimals as SentEval reports them. Sentences are SentEval's whitespace tokens joined by
spaces.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EvalInputError
from ..extras import require

__all__ = ["SENTEVAL_TASKS", "TREC_CLASSES", "load_senteval_task", "inner_kfold_classifier", "kfold_classifier",
           "split_classifier", "senteval_evaluate", "find_task_folder"]

SENTEVAL_TASKS = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")
_BINARY = {"MR": ("MR", "rt-polarity.pos", "rt-polarity.neg"), "CR": ("CR", "custrev.pos", "custrev.neg"),
           "SUBJ": ("SUBJ", "subj.subjective", "subj.objective"), "MPQA": ("MPQA", "mpqa.pos", "mpqa.neg")}
_FOLDERS = {**{t: v[0] for t, v in _BINARY.items()}, "SST2": "SST/binary", "TREC": "TREC", "MRPC": "MRPC"}
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
INNER_REGS = tuple(2.0 ** t for t in range(-2, 4))
KFOLD_REGS = tuple(2.0 ** t for t in range(-1, 6))
FEATURE = "SentEval transfer tasks"


def find_task_folder(data_root: str | Path, task: str) -> Path:
    """``DATA_ROOT/TASK`` or ``DATA_ROOT/downstream/TASK`` (SentEval's ``data/`` or ``data/downstream/``)."""
    if task not in SENTEVAL_TASKS:
        raise EvalInputError(f"unknown SentEval task {task!r}: choose from {', '.join(SENTEVAL_TASKS)}")
    root = Path(data_root)
    for folder in (root / _FOLDERS[task], root / "downstream" / _FOLDERS[task]):
        if folder.is_dir():
            return folder
    raise EvalInputError(f"no {_FOLDERS[task]}/ folder for task {task} under {root} (or {root}/downstream); "
                         "point --data-root at SentEval's data folder")


def _read(path: Path, encoding: str) -> list[str]:
    if not path.is_file():
        raise EvalInputError(f"missing SentEval file {path}; the task needs it")
    return path.read_text(encoding=encoding).splitlines()


def _tokens(lines: list[str]) -> list[list[str]]:
    return [line.split() for line in lines]


def _trec(path: Path) -> tuple[list[list[str]], list[int]]:
    x, y = [], []
    for n, line in enumerate(_read(path, "latin-1"), 1):
        if not line.strip():
            continue
        target, _, rest = line.strip().partition(":")
        if target not in TREC_CLASSES or " " not in rest:
            raise EvalInputError(f"{path}:{n}: expected 'COARSE:fine question' with COARSE one of "
                                 f"{', '.join(TREC_CLASSES)}")
        x.append(rest.split(" ", 1)[1].split())
        y.append(TREC_CLASSES.index(target))
    return x, y


def _mrpc(path: Path) -> tuple[list[list[str]], list[list[str]], list[int]]:
    a, b, y = [], [], []
    for n, line in enumerate(_read(path, "utf-8")[1:], 2):
        cols = line.strip().split("\t")
        if len(cols) < 5 or cols[0] not in ("0", "1"):
            raise EvalInputError(f"{path}:{n}: expected 'Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String'")
        a.append(cols[3].split())
        b.append(cols[4].split())
        y.append(int(cols[0]))
    return a, b, y


def _sst(path: Path) -> tuple[list[list[str]], list[int]]:
    x, y = [], []
    for n, line in enumerate(_read(path, "utf-8"), 1):
        cols = line.strip().split("\t")
        if len(cols) != 2 or cols[1] not in ("0", "1"):
            raise EvalInputError(f"{path}:{n}: expected 'sentence<TAB>0|1'")
        x.append(cols[0].split())
        y.append(int(cols[1]))
    return x, y


def load_senteval_task(data_root: str | Path, task: str) -> dict[str, Any]:
    """The task's splits: ``{"all": (X, y)}`` (binary), ``{"train", "test"}`` (TREC; MRPC with ``(A, B, y)``),
    ``{"train", "dev", "test"}`` (SST2); X are token lists."""
    folder = find_task_folder(data_root, task)
    if task in _BINARY:
        _, pos, neg = _BINARY[task]
        p, q = _tokens(_read(folder / pos, "latin-1")), _tokens(_read(folder / neg, "latin-1"))
        return {"all": (p + q, [1] * len(p) + [0] * len(q))}
    if task == "TREC":
        return {"train": _trec(folder / "train_5500.label"), "test": _trec(folder / "TREC_10.label")}
    if task == "MRPC":
        return {"train": _mrpc(folder / "msr_paraphrase_train.txt"), "test": _mrpc(folder / "msr_paraphrase_test.txt")}
    return {s: _sst(folder / f"sentiment-{s}") for s in ("train", "dev", "test")}


def _logreg(c: float, seed: int):
    require("sklearn", FEATURE)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, random_state=seed)


def _skf(k: int, seed: int):
    require("sklearn", FEATURE)
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def _cv_scores(x, y, regs, k, split_seed, seed) -> list[float]:
    scores = []
    for c in regs:
        fold = [_logreg(c, seed).fit(x[a], y[a]).score(x[b], y[b]) for a, b in _skf(k, split_seed).split(x, y)]
        scores.append(round(100 * float(np.mean(fold)), 2))
    return scores


def inner_kfold_classifier(x: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 1111) -> tuple[float, float]:
    """SentEval's ``InnerKFoldClassifier``: (dev accuracy, test accuracy) in percent."""
    dev, test = [], []
    for a, b in _skf(k, 1111).split(x, y):
        scores = _cv_scores(x[a], y[a], INNER_REGS, k, 1111, seed)  # SentEval fixes these folds' seed
        dev.append(max(scores))
        clf = _logreg(INNER_REGS[int(np.argmax(scores))], seed).fit(x[a], y[a])
        test.append(round(100 * clf.score(x[b], y[b]), 2))
    return round(float(np.mean(dev)), 2), round(float(np.mean(test)), 2)


def kfold_classifier(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int = 5,
                     seed: int = 1111) -> tuple[float, float, np.ndarray]:
    """SentEval's ``KFoldClassifier``: (dev accuracy, test accuracy, test predictions)."""
    scores = _cv_scores(*train, KFOLD_REGS, k, seed, seed)
    clf = _logreg(KFOLD_REGS[int(np.argmax(scores))], seed).fit(*train)
    return max(scores), round(100 * clf.score(*test), 2), clf.predict(test[0])


def split_classifier(splits: dict[str, tuple[np.ndarray, np.ndarray]], seed: int = 1111) -> tuple[float, float]:
    """SentEval's ``SplitClassifier`` (train, dev, test): (dev accuracy, test accuracy)."""
    scores = [round(100 * _logreg(c, seed).fit(*splits["train"]).score(*splits["dev"]), 2) for c in INNER_REGS]
    clf = _logreg(INNER_REGS[int(np.argmax(scores))], seed).fit(*splits["train"])
    return max(scores), round(100 * clf.score(*splits["test"]), 2)


def _sorted(*columns):
    """SentEval's order: by (length of the first text, [length of the second,] label)."""
    rows = sorted(zip(*columns), key=lambda r: (*[len(t) for t in r[:-1]], r[-1]))
    return [list(c) for c in zip(*rows)] if rows else [[] for _ in columns]


def _embed(model, sentences: list[list[str]], batch_size: int) -> np.ndarray:
    if not sentences:
        raise EvalInputError("a SentEval split is empty")
    texts = [" ".join(t) for t in sentences]
    return model.encode_text(texts, batch_size=batch_size, truncate=True).float().cpu().numpy()


def _run_task(model, data: dict[str, Any], task: str, k: int, seed: int, batch_size: int) -> dict[str, Any]:
    if task in _BINARY:
        x, y = _sorted(*data["all"])
        dev, acc = inner_kfold_classifier(_embed(model, x, batch_size), np.array(y), k, seed)
        return {"devacc": dev, "acc": acc, "ndev": len(y), "ntest": len(y)}
    if task == "MRPC":
        out = {}
        for split in ("train", "test"):
            a, b, y = _sorted(*data[split])
            u, v = _embed(model, a, batch_size), _embed(model, b, batch_size)
            out[split] = (np.c_[np.abs(u - v), u * v], np.array(y))
        dev, acc, yhat = kfold_classifier(out["train"], out["test"], k, seed)
        from sklearn.metrics import f1_score

        f1 = round(100 * float(f1_score(out["test"][1], yhat)), 2)
        return {"devacc": dev, "acc": acc, "f1": f1, "ndev": len(out["train"][1]), "ntest": len(out["test"][1])}
    splits = {}
    for name, (x, y) in data.items():
        x, y = _sorted(x, y)
        splits[name] = (_embed(model, x, batch_size), np.array(y))
    if task == "TREC":
        dev, acc, _ = kfold_classifier(splits["train"], splits["test"], k, seed)
    else:
        dev, acc = split_classifier(splits, seed)
    return {"devacc": dev, "acc": acc, "ndev": len(splits["train"][1]), "ntest": len(splits["test"][1])}


def senteval_evaluate(model, data_root: str | Path, tasks: list[str], *, kfold: int = 5, seed: int = 1111,
                      batch_size: int = 128, model_name: str | None = None) -> dict[str, Any]:
    """Run the tasks; returns ``{"benchmark": "senteval", "model", "tasks": {TASK: {devacc, acc, …}}, "average"}``
    (``average``: mean test accuracy)."""
    if not tasks:
        raise EvalInputError(f"no SentEval task given: choose from {', '.join(SENTEVAL_TASKS)}")
    if kfold < 2:
        raise EvalInputError(f"--kfold must be at least 2, got {kfold}")
    data = {t: load_senteval_task(data_root, t) for t in tasks}  # check every file before embedding
    rows = {t: _run_task(model, d, t, kfold, seed, batch_size) for t, d in data.items()}
    return {"benchmark": "senteval", "model": model_name or model.card.alias, "kfold": kfold, "seed": seed,
            "tasks": rows, "average": round(float(np.mean([r["acc"] for r in rows.values()])), 2)}
