"""Query -> passage retrieval with a text tower (MS MARCO passage ranking / BEIR style).

Files (MS MARCO layout; BEIR's tsv qrels too):

* queries ``qid<TAB>text`` (``queries.dev.small.tsv``);
* passages ``pid<TAB>text`` (``collection.tsv``) or ``pid<TAB>title<TAB>text`` (title and text are joined);
* qrels in TREC form ``qid 0 pid rel`` (whitespace separated, ``qrels.dev.small.tsv``), or
  ``qid<TAB>pid[<TAB>score]`` with an optional BEIR header ``query-id corpus-id score``.
  A judgement counts as relevant when ``rel``/``score`` > 0.

Metrics (passages ranked by cosine similarity; ties: lower passage index first, as
:func:`~clipzoo.eval.metrics.ranking`), averaged over the queries with at least one relevant passage:

* ``mrr@10``: reciprocal rank of the first relevant passage, 0 when it is not in the top 10
  (the official MS MARCO passage-ranking metric);
* ``recall@k``: fraction of the query's relevant passages found in its top ``k`` (the MS MARCO / BEIR
  ``Recall@k``; below 1 whenever a query has more than ``k`` relevant passages);
* ``success@k``: 1 when at least one relevant passage is in the top ``k`` (CLIP-style recall@k);
* ``n_queries``: the number of queries averaged over.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DatasetError, EvalInputError
from ..files import NOT_REGULAR
from .metrics import as_tensor
from .wiki_sections import find_wiki_sections, wiki_sections_retrieval

__all__ = ["read_queries", "read_passages", "read_qrels", "load_text_retrieval", "check_qrels",
           "text_retrieval_metrics", "text_retrieval_evaluate"]

_ID_HEADERS = {"id", "_id", "qid", "pid", "docid", "doc_id", "query-id", "query_id", "corpus-id", "corpus_id"}
_QUERY_FILES = ("queries.tsv", "queries.dev.small.tsv", "queries.dev.tsv")
_PASSAGE_FILES = ("collection.tsv", "corpus.tsv", "passages.tsv")
_QREL_FILES = ("qrels.tsv", "qrels.dev.small.tsv", "qrels.dev.tsv", "qrels.txt", "qrels/test.tsv", "qrels/dev.tsv")


# ------------------------------------------------------------------ files
def numbered_lines(path: Any) -> list[tuple[int, str]]:
    """(line number, line without newline) for every non-blank line; DatasetError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {NOT_REGULAR}" if path.exists() else f"{path}: file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [(i, line.rstrip("\r\n")) for i, line in enumerate(f, 1)]
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot be read as UTF-8 text ({err})") from None
    lines = [(i, line) for i, line in lines if line.strip()]
    if not lines:
        raise DatasetError(f"{path}: file is empty")
    return lines


def _is_header(fields: list[str]) -> bool:
    return fields[0].strip().lower() in _ID_HEADERS


def _add(out: dict[str, str], key: str, value: str, path: Any, lineno: int, what: str) -> None:
    if not key:
        raise DatasetError(f"{path}:{lineno}: empty {what} id")
    if key in out:
        raise DatasetError(f"{path}:{lineno}: duplicate {what} id {key!r}")
    out[key] = value


def read_queries(path: Any) -> dict[str, str]:
    """``{qid: text}`` from a ``qid<TAB>text`` file (a ``qid``/``id`` header line is skipped)."""
    out: dict[str, str] = {}
    for n, (lineno, line) in enumerate(numbered_lines(path)):
        fields = line.split("\t", 1)
        if n == 0 and _is_header(fields):
            continue
        if len(fields) != 2:
            raise DatasetError(f"{path}:{lineno}: expected 'qid<TAB>text', got {line[:80]!r}")
        _add(out, fields[0].strip(), fields[1].strip(), path, lineno, "query")
    if not out:
        raise DatasetError(f"{path}: no queries found")
    return out


def read_passages(path: Any) -> dict[str, str]:
    """``{pid: text}`` from ``pid<TAB>text`` (MS MARCO ``collection.tsv``) or ``pid<TAB>title<TAB>text``.

    A header line naming the columns (``id``/``pid``/``_id`` first) is skipped; with a header the
    ``title`` and ``text`` columns are found by name.
    """
    out: dict[str, str] = {}
    title_col, text_col = None, None
    for n, (lineno, line) in enumerate(numbered_lines(path)):
        fields = line.split("\t")
        if n == 0 and _is_header(fields):
            names = [f.strip().lower() for f in fields]
            text_col = names.index("text") if "text" in names else None
            title_col = names.index("title") if "title" in names else None
            continue
        if text_col is not None and len(fields) == len(names):
            title = fields[title_col].strip() if title_col is not None else ""
            text = fields[text_col].strip()
        elif len(fields) == 2:
            title, text = "", fields[1].strip()
        elif len(fields) == 3:
            title, text = fields[1].strip(), fields[2].strip()
        else:
            raise DatasetError(f"{path}:{lineno}: expected 'pid<TAB>text' or 'pid<TAB>title<TAB>text', "
                               f"got {len(fields)} tab-separated fields")
        _add(out, fields[0].strip(), f"{title} {text}" if title else text, path, lineno, "passage")
    if not out:
        raise DatasetError(f"{path}: no passages found")
    return out


def read_qrels(path: Any) -> dict[str, set[str]]:
    """``{qid: {relevant pids}}`` from TREC ``qid 0 pid rel``, ``qid<TAB>pid<TAB>score`` (BEIR, with or
    without its ``query-id corpus-id score`` header) or ``qid<TAB>pid``. Only ``rel > 0`` is kept."""
    out: dict[str, set[str]] = {}
    for n, (lineno, line) in enumerate(numbered_lines(path)):
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if n == 0 and _is_header(fields):
            continue
        if len(fields) == 4:
            qid, pid, rel = fields[0], fields[2], fields[3]
        elif len(fields) == 3:
            qid, pid, rel = fields
        elif len(fields) == 2:
            (qid, pid), rel = fields, "1"
        else:
            raise DatasetError(f"{path}:{lineno}: expected 'qid 0 pid rel' (TREC), 'qid<TAB>pid<TAB>score' or "
                               f"'qid<TAB>pid', got {len(fields)} fields")
        try:
            relevant = float(rel) > 0
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: relevance {rel!r} is not a number") from None
        if not qid or not pid:
            raise DatasetError(f"{path}:{lineno}: empty query or passage id")
        if relevant:
            out.setdefault(qid, set()).add(pid)
    if not out:
        raise DatasetError(f"{path}: no relevant (rel > 0) judgements found")
    return out


def check_qrels(qrels: Mapping[str, Iterable[str]], queries: Mapping[str, str], passages: Mapping[str, str]) -> None:
    """EvalInputError when qrels name queries or passages that are not in the files."""
    for what, ids, known in (("query", list(qrels), queries),
                             ("passage", sorted({p for ps in qrels.values() for p in ps}), passages)):
        missing = [i for i in ids if i not in known]
        if missing:
            few = ", ".join(repr(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise EvalInputError(f"qrels refer to {len(missing)} {what} id(s) missing from the {what} file: {few} "
                                 "(check that the qrels match the queries/collection)")


def _pick(folder: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder}: no {what} file found (looked for {', '.join(names)})")


def load_text_retrieval(folder_or_paths: Any) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, passages, qrels) from a folder (``queries.tsv``; ``collection.tsv``/``corpus.tsv``/
    ``passages.tsv``; ``qrels.tsv``/``qrels.dev.tsv``/``qrels.txt``, …) or a (queries, passages, qrels)
    triple of paths, or a mapping with those keys. The qrels are checked against the other two.
    A Wiki Sections triplets file (``test.csv``, or a folder holding one and no queries file) reads through
    :func:`clipzoo.eval.wiki_sections.wiki_sections_retrieval`."""
    if isinstance(folder_or_paths, Mapping):
        try:
            paths = [folder_or_paths[k] for k in ("queries", "passages", "qrels")]
        except KeyError as err:
            raise DatasetError(f"text retrieval paths need the keys queries, passages, qrels (missing {err})") from None
    elif isinstance(folder_or_paths, (list, tuple)):
        if len(folder_or_paths) != 3:
            raise DatasetError("text retrieval paths must be (queries, passages, qrels)")
        paths = list(folder_or_paths)
    elif find_wiki_sections(folder_or_paths) is not None and not any(
            (Path(folder_or_paths) / name).is_file() for name in _QUERY_FILES):
        return wiki_sections_retrieval(find_wiki_sections(folder_or_paths))  # Wiki Sections triplets (CSV)
    else:
        folder = Path(folder_or_paths)
        if not folder.is_dir():
            raise DatasetError(f"{folder}: not a folder (expected queries.tsv, collection.tsv and qrels.tsv in it)")
        paths = [_pick(folder, _QUERY_FILES, "queries"), _pick(folder, _PASSAGE_FILES, "passages"),
                 _pick(folder, _QREL_FILES, "qrels")]
    queries, passages, qrels = read_queries(paths[0]), read_passages(paths[1]), read_qrels(paths[2])
    check_qrels(qrels, queries, passages)
    return queries, passages, qrels


# ------------------------------------------------------------------ metrics
def _top_columns(scores: torch.Tensor, k: int) -> torch.Tensor:
    """First ``k`` columns of each row by decreasing score, ties: lower index first (exactly as
    ``metrics.ranking(scores, k)``), without sorting whole rows: only the columns scoring at least
    the k-th best value are sorted."""
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    n_cand = int((scores >= kth).sum(dim=1).max())
    keyed = torch.where(scores >= kth, scores, torch.full_like(scores, float("-inf")))
    cand = torch.topk(keyed, n_cand, dim=1).indices
    cand = torch.sort(cand, dim=1).values  # by index, then stable by score
    order = torch.sort(keyed.gather(1, cand), dim=1, descending=True, stable=True).indices
    return cand.gather(1, order)[:, :k]


def text_retrieval_metrics(query_features: Any, passage_features: Any, positives: Sequence[Iterable[int]],
                           recall_k: Sequence[int] = (1, 5, 10, 100), mrr_k: int = 10,
                           chunk_elements: int = 2 ** 25) -> dict[str, float]:
    """``mrr@{mrr_k}``, ``recall@k``, ``success@k`` and ``n_queries`` (see the module docstring).

    ``positives[i]`` lists the indices of the passages relevant to query ``i``; queries with none are
    skipped. The score matrix is computed ``chunk_elements`` entries at a time.
    """
    q = F.normalize(as_tensor(query_features, "query_features", ndim=2).float(), dim=-1)
    p = F.normalize(as_tensor(passage_features, "passage_features", ndim=2).float(), dim=-1)
    if q.shape[1] != p.shape[1]:
        raise EvalInputError(f"query features ({q.shape[1]}) and passage features ({p.shape[1]}) differ in dimension")
    if len(positives) != q.shape[0]:
        raise EvalInputError(f"positives has {len(positives)} entries for {q.shape[0]} queries")
    n_pass = p.shape[0]
    pos = [sorted({int(j) for j in js}) for js in positives]
    for i, js in enumerate(pos):
        if js and (js[0] < 0 or js[-1] >= n_pass):
            raise EvalInputError(f"positives of query {i} refer to passages outside [0, {n_pass})")
    keep = [i for i, js in enumerate(pos) if js]
    if not keep:
        raise EvalInputError("no query has a relevant passage: nothing to evaluate (check the qrels)")
    recall_k = [int(k) for k in recall_k]
    if min(recall_k + [int(mrr_k)]) < 1:
        raise EvalInputError("recall_k and mrr_k must be at least 1")
    kmax = min(max(recall_k + [int(mrr_k)]), n_pass)

    n_rel = torch.tensor([len(pos[i]) for i in keep], dtype=torch.float64)
    rows = []
    chunk = max(1, chunk_elements // n_pass)
    for start in range(0, len(keep), chunk):
        ids = keep[start:start + chunk]
        top = _top_columns(q[ids] @ p.T, kmax)  # (chunk, kmax)
        codes = torch.arange(len(ids))[:, None] * n_pass + top
        pos_codes = torch.tensor([r * n_pass + j for r, i in enumerate(ids) for j in pos[i]])
        rows.append(torch.isin(codes, pos_codes))
    hits = torch.cat(rows)  # (n_queries, kmax): is the passage at each rank relevant?

    first = torch.where(hits.any(dim=1), hits.float().argmax(dim=1), torch.full((len(keep),), n_pass))
    rr = torch.where(first < mrr_k, 1.0 / (first.double() + 1), torch.zeros(len(keep), dtype=torch.float64))
    out = {f"mrr@{mrr_k}": float(rr.mean())}
    for k in recall_k:
        found = hits[:, :min(k, kmax)].sum(dim=1).double()
        out[f"recall@{k}"] = float((found / n_rel).mean())
    for k in recall_k:
        out[f"success@{k}"] = float(hits[:, :min(k, kmax)].any(dim=1).double().mean())
    out["n_queries"] = len(keep)
    return out


def text_retrieval_evaluate(model: Any, queries: Mapping[str, str], passages: Mapping[str, str],
                            qrels: Mapping[str, Iterable[str]], recall_k: Sequence[int] = (1, 5, 10, 100),
                            mrr_k: int = 10, batch_size: int = 256) -> dict[str, float]:
    """Encode the judged queries and every passage with ``model.encode_text`` and score them.

    Queries without a relevant passage in ``qrels`` are not encoded; passages are ranked in the
    order of ``passages`` (ties: earlier passage first).
    """
    check_qrels(qrels, queries, passages)
    qids = [qid for qid in queries if qrels.get(qid)]
    if not qids:
        raise EvalInputError("no query has a relevant passage in the qrels: nothing to evaluate")
    pids = list(passages)
    index = {pid: j for j, pid in enumerate(pids)}
    positives = [[index[pid] for pid in qrels[qid]] for qid in qids]
    q = model.encode_text([queries[qid] for qid in qids], normalize=True, truncate=True, batch_size=batch_size)
    p = model.encode_text([passages[pid] for pid in pids], normalize=True, truncate=True, batch_size=batch_size)
    return text_retrieval_metrics(q, p, positives, recall_k=recall_k, mrr_k=mrr_k)
