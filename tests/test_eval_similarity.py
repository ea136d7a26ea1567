"""Similarity: parsers for STS / RG65 / SimLex-999 / WordSim-353 files, correlations vs scipy, evaluation."""
from __future__ import annotations

import math
import string
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from clipzoo.errors import DatasetError, EvalInputError
from clipzoo.eval.similarity import detect_format, read_pairs, similarity_evaluate, similarity_metrics


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


STS_BENCHMARK = ("main-captions\tMSRvid\t2012test\t0000\t5.000\tA man with a hard hat is dancing.\t"
                 "A man wearing a hard hat is dancing.\n"
                 "main-news\theadlines\t2013\t0001\t0.500\tThree \"killed\" in blast.\tMarkets rise.\t"
                 "extra-source\tmore\n")  # sts-train/test lines can carry extra trailing columns
GLUE_STSB = ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA man plays.\tA man is playing.\t4.750\n")
SIMLEX = ("word1\tword2\tPOS\tSimLex999\tconc(w1)\tconc(w2)\tconcQ\tAssoc(USF)\tSimAssoc333\tSD(SimLex)\n"
          "old\tnew\tA\t1.58\t2.72\t2.81\t2\t7.25\t1\t0.41\n"
          "smart\tintelligent\tA\t9.2\t1.75\t2.46\t1\t7.11\t1\t0.67\n")
WORDSIM_CSV = "Word 1,Word 2,Human (mean)\nlove,sex,6.77\ntiger,cat,7.35\n"
WORDSIM_SET1 = "Word 1,Word 2,Human (mean),1,2\nlove,sex,6.77,9,6\n"
WORDSIM_TAB = "Word 1\tWord 2\tHuman (mean)\nlove\tsex\t6.77\n"
RG65 = "cord;smile;0.02\nrooster;voyage;0.04\n"


@pytest.mark.parametrize("name, text, fmt, expected", [
    ("sts-dev.csv", STS_BENCHMARK, "sts",
     [("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0),
      ('Three "killed" in blast.', "Markets rise.", 0.5)]),
    ("dev.tsv", GLUE_STSB, "sts", [("A man plays.", "A man is playing.", 4.75)]),
    ("SimLex-999.txt", SIMLEX, "simlex", [("old", "new", 1.58), ("smart", "intelligent", 9.2)]),
    ("combined.csv", WORDSIM_CSV, "wordsim", [("love", "sex", 6.77), ("tiger", "cat", 7.35)]),
    ("set1.csv", WORDSIM_SET1, "wordsim", [("love", "sex", 6.77)]),
    ("combined.tab", WORDSIM_TAB, "wordsim", [("love", "sex", 6.77)]),
    ("rg65.csv", RG65, "rg65", [("cord", "smile", 0.02), ("rooster", "voyage", 0.04)]),
    ("EN-RG-65.txt", "cord\tsmile\t0.02\n", "pairs", [("cord", "smile", 0.02)]),
    ("MEN.txt", "sun-n sunlight-n 50.000000\n", "pairs", [("sun-n", "sunlight-n", 50.0)]),
    ("hdr.tsv", "a\tb\tsim\nx y\tz\t1\n", "pairs", [("x y", "z", 1.0)]),
])
def test_formats_parse_and_are_detected(tmp_path, name, text, fmt, expected):
    path = write(tmp_path / name, text)
    assert detect_format(path) == fmt
    assert read_pairs(path) == expected
    assert read_pairs(path, format=fmt) == expected


def test_headerless_three_column_sts(tmp_path):
    path = write(tmp_path / "s.tsv", "A cat sits.\tA cat is sitting.\t4.2\n")
    assert read_pairs(path, format="sts") == [("A cat sits.", "A cat is sitting.", 4.2)]


@pytest.mark.parametrize("name, text, fmt, match", [
    ("bad.csv", "cord;smile;0.02\nrooster;voyage\n", "rg65", r"bad\.csv:2: expected 'word1;word2;score'"),
    ("bad.csv", "cord;smile;high\n", "rg65", r"bad\.csv:1: score 'high' is not a number"),
    ("sim.txt", "word1\tword2\tPOS\tscore\nold\tnew\tA\t1\n", "simlex", r"sim\.txt:1: header has no 'SimLex999'"),
    ("ws.csv", WORDSIM_CSV + "a,b,x\n", "auto", r"ws\.csv:4: score 'x' is not a number"),
    ("sts.csv", STS_BENCHMARK + "g\tf\ty\ti\tNaNx\ta\tb\n", "auto", r"sts\.csv:3: score 'NaNx'"),
    ("test.tsv", "index\tsentence1\tsentence2\n0\ta\tb\n", "sts", "no 'score' column"),
    ("x.tsv", "a\tb\t1\n", "glove", "unknown similarity format 'glove'"),
    ("empty.tsv", "\n\n", "auto", "empty"),
])
def test_parse_errors_name_file_and_line(tmp_path, name, text, fmt, match):
    with pytest.raises(DatasetError, match=match):
        read_pairs(write(tmp_path / name, text), format=fmt)


def test_metrics_match_scipy():
    rng = np.random.default_rng(0)
    a, b, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 8)), rng.normal(size=50)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    m = similarity_metrics(a, b, y)
    assert m["spearman"] == pytest.approx(stats.spearmanr(cos, y).statistic)
    assert m["pearson"] == pytest.approx(np.corrcoef(cos, y)[0, 1])
    assert m["n_pairs"] == 50
    perfect = similarity_metrics(a, b, 3 * cos + 1)  # any increasing function of cos: spearman 1
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["pearson"] == pytest.approx(1.0)


def test_pairs_of_one_text_each_are_a_constant_input():
    """Pairs of the same text (cosine 1 each) differed by 1e-16 in double and were ranked: spearman 0.94."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 16)).astype(np.float32)
    b = a * np.float32(3.0)
    with warnings.catch_warnings(record=True) as caught:  # one warning in words, none of scipy's
        warnings.simplefilter("always")
        m = similarity_metrics(a, b, [1.0, 2.0, 3.0, 4.0, 5.0, 0.0])
    assert [str(w.message) for w in caught] == ["similarity: the model gives every pair the same cosine (1); "
                                                "Spearman and Pearson are undefined (NaN) — are the two texts of "
                                                "each pair the same?"]
    assert math.isnan(m["spearman"]) and math.isnan(m["pearson"])
    c, d = rng.normal(size=(3, 16)), rng.normal(size=(3, 16))
    cos = (c * d).sum(1) / np.linalg.norm(c, axis=1) / np.linalg.norm(d, axis=1)
    y = [5.0, 1.0, 2.0, 3.0, 4.0]
    mixed = similarity_metrics(np.concatenate([a[:2], c]), np.concatenate([b[:2], d]), y)
    # the two identical pairs tie at cosine 1 (average ranks), whatever their last bits
    assert mixed["spearman"] == pytest.approx(stats.spearmanr([1.0, 1.0, *cos], y).statistic, abs=1e-12)


def test_metric_errors():
    with pytest.raises(EvalInputError, match="at least 2 pairs"):
        similarity_metrics(np.ones((1, 2)), np.ones((1, 2)), [1.0])
    with pytest.raises(EvalInputError, match="scores has 3 entries for 2 pairs"):
        similarity_metrics(np.ones((2, 2)), np.ones((2, 2)), [1.0, 2.0, 3.0])
    with pytest.raises(EvalInputError, match="differ in shape"):
        similarity_metrics(np.ones((2, 2)), np.ones((2, 3)), [1.0, 2.0])
    with pytest.raises(EvalInputError, match="no pairs"):
        similarity_evaluate(CharCounts(), [])


class CharCounts:
    """Stand-in model: bag-of-letters counts (a..z), recording what it was asked to encode."""

    def __init__(self):
        self.calls = []

    def encode_text(self, texts, normalize=True, truncate=False, batch_size=256):
        self.calls.append((list(texts), truncate))
        out = torch.tensor([[t.count(c) for c in string.ascii_lowercase] for t in texts], dtype=torch.float)
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def test_evaluate_encodes_unique_texts_once():
    # cosines: (a, a) = 1, (a, ab) = 1/sqrt2, (ab, b) = 1/sqrt2, (a, b) = 0
    pairs = [("a", "a", 4.0), ("a", "ab", 3.0), ("ab", "b", 1.0), ("a", "b", 2.0)]
    model = CharCounts()
    m = similarity_evaluate(model, pairs)
    assert model.calls == [(["a", "ab", "b"], True)]
    cos = [1.0, 1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]
    # ranks: cos -> [4, 2.5, 2.5, 1]; scores -> [4, 3, 1, 2]
    rc, rs = np.array([4, 2.5, 2.5, 1]), np.array([4, 3, 1, 2])
    assert m["spearman"] == pytest.approx(np.corrcoef(rc, rs)[0, 1])
    assert m["pearson"] == pytest.approx(np.corrcoef(cos, [4, 3, 1, 2])[0, 1])
    assert m["n_pairs"] == 4
