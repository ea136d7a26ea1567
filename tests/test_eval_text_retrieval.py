"""Text retrieval: MS MARCO / BEIR file readers, hand-computed MRR/recall, and the model-side evaluation."""
from __future__ import annotations

import math
import string

import pytest
import torch

from clipzoo.errors import DatasetError, EvalInputError
from clipzoo.eval.metrics import ranking
from clipzoo.eval.text_retrieval import (
    _top_columns,
    check_qrels,
    load_text_retrieval,
    read_passages,
    read_qrels,
    read_queries,
    text_retrieval_evaluate,
    text_retrieval_metrics,
)

# passages and queries as 2-D unit vectors
P = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
Q = torch.tensor([[2.0, 0.0],    # ranks p0, p1, p2, p3
                  [0.0, 1.0],    # ranks p2, p1, p0, p3 (p0 and p3 tie at 0: lower index first)
                  [-1.0, 0.0],   # ranks p3, p2, p1, p0
                  [0.3, 0.3]])   # no positives: skipped
POS = [[1], [3, 2], [0], []]


def test_hand_computed_three_queries():
    m = text_retrieval_metrics(Q, P, POS, recall_k=(1, 2, 4))
    # first relevant rank: q0 -> 2, q1 -> 1, q2 -> 4
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    # q1 has 2 relevant passages: p2 at rank 1, p3 at rank 4
    assert m["recall@1"] == pytest.approx((0 + 1 / 2 + 0) / 3)
    assert m["recall@2"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["success@1"] == pytest.approx(1 / 3)
    assert m["success@2"] == pytest.approx(2 / 3)
    assert m["n_queries"] == 3
    assert set(m) == {"mrr@10", "recall@1", "recall@2", "recall@4", "success@1", "success@2", "success@4",
                      "n_queries"}
    # mrr cut-off: q2's hit at rank 4 no longer counts
    assert text_retrieval_metrics(Q, P, POS, recall_k=(1,), mrr_k=3)["mrr@3"] == pytest.approx(1.5 / 3)


def test_ties_break_to_lower_index():
    # q1 scores p0 and p3 equally (0); p3 comes after p0, at rank 4
    m = text_retrieval_metrics(Q[1:2], P, [[3]], recall_k=(3, 4))
    assert m["recall@3"] == 0.0 and m["recall@4"] == 1.0 and m["mrr@10"] == 0.25


def test_top_columns_matches_full_stable_sort_and_chunking_is_invisible():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (7, 40), generator=g).float()  # many ties
    for k in (1, 3, 10, 40):
        assert torch.equal(_top_columns(scores, k), ranking(scores, k))
    q, p = torch.randn(9, 4, generator=g), torch.randn(30, 4, generator=g)
    pos = [[i, (3 * i) % 30] for i in range(9)]
    assert text_retrieval_metrics(q, p, pos, chunk_elements=30) == text_retrieval_metrics(q, p, pos)


def test_metric_errors():
    with pytest.raises(EvalInputError, match="no query has a relevant passage"):
        text_retrieval_metrics(Q, P, [[], [], [], []])
    with pytest.raises(EvalInputError, match="outside"):
        text_retrieval_metrics(Q, P, [[4], [], [], []])
    with pytest.raises(EvalInputError, match="positives has 2 entries for 4 queries"):
        text_retrieval_metrics(Q, P, [[0], [1]])
    with pytest.raises(EvalInputError, match="differ in dimension"):
        text_retrieval_metrics(Q, torch.ones(4, 3), POS)


# ------------------------------------------------------------------ files
def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_queries_and_passages(tmp_path):
    q = read_queries(write(tmp_path / "queries.tsv", "q1\twhat is a cat\nq2\tdogs\n\n"))
    assert q == {"q1": "what is a cat", "q2": "dogs"}
    p = read_passages(write(tmp_path / "collection.tsv", "0\tcats purr\n1\tdogs bark\n"))
    assert p == {"0": "cats purr", "1": "dogs bark"}
    p3 = read_passages(write(tmp_path / "p3.tsv", "d1\tCat\tcats purr\nd2\t\tno title\n"))
    assert p3 == {"d1": "Cat cats purr", "d2": "no title"}
    ph = read_passages(write(tmp_path / "ph.tsv", "id\ttext\ttitle\nd1\tcats purr\tCat\n"))
    assert ph == {"d1": "Cat cats purr"}


def test_read_qrels_formats(tmp_path):
    trec = read_qrels(write(tmp_path / "qrels.dev.tsv", "q1\t0\t7\t1\nq1 0 8 1\nq2 0 9 0\nq3 0 9 2\n"))
    assert trec == {"q1": {"7", "8"}, "q3": {"9"}}  # rel 0 is not relevant
    beir = read_qrels(write(tmp_path / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n"))
    assert beir == {"q1": {"d1"}}
    two = read_qrels(write(tmp_path / "two.tsv", "q1\td1\nq2\td1\n"))
    assert two == {"q1": {"d1"}, "q2": {"d1"}}


def test_bad_lines_name_file_and_line(tmp_path):
    with pytest.raises(DatasetError, match=r"qrels\.txt:2: expected 'qid 0 pid rel'"):
        read_qrels(write(tmp_path / "qrels.txt", "q1 0 d1 1\nq1 0 d1 1 extra\n"))
    with pytest.raises(DatasetError, match=r"qrels2\.txt:1: relevance 'yes' is not a number"):
        read_qrels(write(tmp_path / "qrels2.txt", "q1 0 d1 yes\n"))
    with pytest.raises(DatasetError, match=r"queries\.tsv:2: expected 'qid<TAB>text'"):
        read_queries(write(tmp_path / "queries.tsv", "q1\tok\nno tab here\n"))
    with pytest.raises(DatasetError, match=r"c\.tsv:1: expected 'pid<TAB>text'"):
        read_passages(write(tmp_path / "c.tsv", "a\tb\tc\td\n"))
    with pytest.raises(DatasetError, match=r"d\.tsv:2: duplicate passage id '1'"):
        read_passages(write(tmp_path / "d.tsv", "1\ta\n1\tb\n"))
    with pytest.raises(DatasetError, match="file not found"):
        read_queries(tmp_path / "missing.tsv")
    with pytest.raises(DatasetError, match="empty"):
        read_queries(write(tmp_path / "empty.tsv", "\n"))


def test_unknown_ids_in_qrels():
    with pytest.raises(EvalInputError, match=r"1 query id\(s\) missing.*'q9'"):
        check_qrels({"q1": {"p1"}, "q9": {"p1"}}, {"q1": "x"}, {"p1": "y"})
    with pytest.raises(EvalInputError, match=r"2 passage id\(s\) missing.*'p7', 'p8'"):
        check_qrels({"q1": {"p1", "p7", "p8"}}, {"q1": "x"}, {"p1": "y"})


def test_load_folder_and_paths(tmp_path):
    write(tmp_path / "queries.tsv", "q1\tabc\n")
    write(tmp_path / "corpus.tsv", "p1\tabc\np2\txyz\n")
    write(tmp_path / "qrels.dev.tsv", "q1 0 p1 1\n")
    expected = ({"q1": "abc"}, {"p1": "abc", "p2": "xyz"}, {"q1": {"p1"}})
    assert load_text_retrieval(tmp_path) == expected
    paths = (tmp_path / "queries.tsv", tmp_path / "corpus.tsv", tmp_path / "qrels.dev.tsv")
    assert load_text_retrieval(paths) == expected
    assert load_text_retrieval(dict(zip(("queries", "passages", "qrels"), paths))) == expected
    (tmp_path / "qrels.dev.tsv").unlink()
    with pytest.raises(DatasetError, match="no qrels file found"):
        load_text_retrieval(tmp_path)
    write(tmp_path / "qrels.tsv", "q1 0 p5 1\n")
    with pytest.raises(EvalInputError, match="'p5'"):
        load_text_retrieval(tmp_path)


# ------------------------------------------------------------------ model side
class CharCounts:
    """Stand-in model: bag-of-letters counts (a..z)."""

    def __init__(self):
        self.calls = []

    def encode_text(self, texts, normalize=True, truncate=False, batch_size=256):
        self.calls.append((list(texts), truncate))
        out = torch.tensor([[t.count(c) for c in string.ascii_lowercase] for t in texts], dtype=torch.float)
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def test_evaluate_with_char_count_model():
    queries = {"q1": "aaa", "q2": "bbb", "q3": "zzz"}  # q3 has no qrels: not encoded
    passages = {"p1": "aab", "p2": "bbbc", "p3": "ccc", "p4": "abab"}
    qrels = {"q1": {"p4"}, "q2": {"p2", "p3"}}
    model = CharCounts()
    m = text_retrieval_evaluate(model, queries, passages, qrels, recall_k=(1, 2))
    # q1 'aaa' vs p1 (2a,1b): 2/sqrt5 = .894 > p4 (2a,2b): 1/sqrt2 = .707 > others 0 -> p4 at rank 2
    # q2 'bbb' vs p2 (3b,1c): 3/sqrt10 = .949 > p4 .707 > p1 1/sqrt5 = .447 > p3 0 -> p2 rank 1, p3 rank 4
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["recall@1"] == pytest.approx((0 + 1 / 2) / 2)
    assert m["recall@2"] == pytest.approx((1 + 1 / 2) / 2)
    assert m["success@1"] == pytest.approx(1 / 2)
    assert m["n_queries"] == 2
    assert model.calls == [(["aaa", "bbb"], True), (["aab", "bbbc", "ccc", "abab"], True)]
    assert math.isclose(2 / math.sqrt(5), 0.894, abs_tol=1e-3)
