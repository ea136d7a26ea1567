"""MTEB / MIEB: clipzoo models through mteb's own model interface and evaluation, on custom local tasks.

The tasks (``tests/_mteb_tasks.py``) are mteb's task classes — STS, Retrieval, MIEB's Any2AnyRetrieval and
ZeroShotClassification — over generated shapes this module writes. ``mteb.evaluate`` runs them unchanged
on the embedded ``clipzoo/tiny-shapes`` and on a second (random tiny open_clip) model; every score mteb
reports is recomputed here from our own embeddings (``Comparator.encode_text`` / ``encode_image``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

mteb = pytest.importorskip("mteb")

from scipy.stats import pearsonr, spearmanr  # noqa: E402

import _mteb_tasks as T  # noqa: E402  (tests/ is on sys.path, as for _serve_common)
import clipzoo  # noqa: E402
from clipzoo.datasets import write_shapes  # noqa: E402
from clipzoo.errors import ClipzooError  # noqa: E402
from clipzoo.eval.mteb_model import ClipzooMTEBModel, mteb_model, resolve_tasks, run_mteb  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("mteb_shapes")
    write_shapes(out, 21, seed=5, image_size=64, formats="csv", two_object_prob=0.0)
    for cls in (T.ShapesSTS, T.ShapesCaptionRetrieval, T.ShapesImageToPromptRetrieval, T.ShapesZeroShot):
        cls.root = out
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    other = write_open_clip_safetensors(tmp_path_factory.mktemp("mteb_tiny") / "tiny.safetensors", 2,
                                        embed_config=True)
    return {"tiny-shapes": clipzoo.load("clipzoo/tiny-shapes"), "random-tiny": clipzoo.load(str(other))}


def ranks_of_relevant(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every document for every query (scores (Q, D), higher first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :].repeat(len(scores), 0), axis=1)
    return ranks


def ndcg_recall(scores: np.ndarray, relevant: list[set[int]], k: int = 10) -> tuple[float, float]:
    """Binary-relevance nDCG@k and recall@1, averaged over queries."""
    ranks = ranks_of_relevant(scores)
    ndcg, r1 = [], []
    for q, rel in enumerate(relevant):
        dcg = sum(1 / math.log2(ranks[q, d] + 1) for d in rel if ranks[q, d] <= k)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
        ndcg.append(dcg / idcg)
        r1.append(sum(ranks[q, d] == 1 for d in rel) / len(rel))
    return float(np.mean(ndcg)), float(np.mean(r1))


def text(m, texts):
    return m.encode_text(texts, truncate=True).float().numpy()


def image(m, root):
    return m.encode_image(T.images(root)).float().numpy()


@pytest.fixture(scope="module")
def results(root, models):
    tasks = [T.ShapesSTS(), T.ShapesCaptionRetrieval(), T.ShapesImageToPromptRetrieval(), T.ShapesZeroShot()]
    return {name: run_mteb(m, tasks, batch_size=16)["tasks"] for name, m in models.items()}


def score(results, model, task):
    return results[model][task]["test"]["default"]


def test_mteb_model_implements_mteb_encoder_protocol(models):
    from mteb.models.models_protocols import EncoderProtocol

    wrapped = mteb_model(models["tiny-shapes"])
    assert isinstance(wrapped, EncoderProtocol) and isinstance(wrapped, ClipzooMTEBModel)
    meta = wrapped.mteb_model_meta
    assert (meta.name, meta.similarity_fn_name.value, sorted(meta.modalities)) == (
        "clipzoo/tiny-shapes", "cosine", ["image", "text"])
    assert meta.embed_dim == 64


@pytest.mark.parametrize("model", ["tiny-shapes", "random-tiny"])
def test_mteb_sts_same_as_our_embeddings(root, models, results, model):
    s1, s2, gold = T.sts_pairs(root)
    m = models[model]
    cos = (text(m, s1) * text(m, s2)).sum(1)
    got = score(results, model, "ShapesSTS")
    assert got["cosine_spearman"] == pytest.approx(spearmanr(gold, cos)[0], abs=1e-6)
    assert got["cosine_pearson"] == pytest.approx(pearsonr(gold, cos)[0], abs=1e-5)
    assert got["main_score"] == got["cosine_spearman"]


@pytest.mark.parametrize("model", ["tiny-shapes", "random-tiny"])
def test_mteb_text_retrieval_same_as_our_embeddings(root, models, results, model):
    queries, docs, qrels = T.caption_retrieval(root)
    m = models[model]
    relevant = [{int(d[1:]) for d in qrels[f"q{i}"]} for i in range(len(queries))]
    ndcg, r1 = ndcg_recall(text(m, queries) @ text(m, docs).T, relevant)
    got = score(results, model, "ShapesCaptionRetrieval")
    assert got["ndcg_at_10"] == pytest.approx(ndcg, abs=1e-4)
    assert got["recall_at_1"] == pytest.approx(r1, abs=1e-4)


@pytest.mark.parametrize("model", ["tiny-shapes", "random-tiny"])
def test_mieb_image_tasks_same_as_our_embeddings(root, models, results, model):
    m = models[model]
    sims = image(m, root) @ text(m, T.PROMPTS).T
    labels = np.array([T.CLASSES.index(r["shape_color"]) for r in T.rows(root)])
    accuracy = float((sims.argmax(1) == labels).mean())
    assert score(results, model, "ShapesZeroShot")["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    ndcg, r1 = ndcg_recall(sims, [{int(c)} for c in labels])
    got = score(results, model, "ShapesImageToPromptRetrieval")
    assert got["ndcg_at_10"] == pytest.approx(ndcg, abs=1e-4)
    assert got["recall_at_1"] == pytest.approx(accuracy, abs=1e-4) and r1 == pytest.approx(accuracy)


def test_mteb_embedded_model_scores_high_on_its_own_shapes(results):
    ours, rand = results["tiny-shapes"], results["random-tiny"]
    zs = ours["ShapesZeroShot"]["test"]["default"]["accuracy"]
    assert zs >= 0.9, zs
    assert zs > rand["ShapesZeroShot"]["test"]["default"]["accuracy"] + 0.3
    assert ours["ShapesImageToPromptRetrieval"]["test"]["default"]["ndcg_at_10"] >= 0.9
    assert ours["ShapesCaptionRetrieval"]["test"]["default"]["ndcg_at_10"] > \
        rand["ShapesCaptionRetrieval"]["test"]["default"]["ndcg_at_10"]


def test_mteb_task_errors(tmp_path):
    with pytest.raises(ClipzooError, match=r"^unknown mteb task 'NoSuchTask123' .*FILE\.py:CLASS$"):
        resolve_tasks(["NoSuchTask123"])
    with pytest.raises(ClipzooError, match=r"task file .*nope\.py does not exist; --tasks takes mteb task names"):
        resolve_tasks([f"{tmp_path / 'nope.py'}:X"])
    (tmp_path / "t.py").write_text("class X:\n    pass\n")
    with pytest.raises(ClipzooError, match=r"names no mteb task class \(a subclass of mteb's AbsTask\)"):
        resolve_tasks([f"{tmp_path / 't.py'}:X"])
    with pytest.raises(ClipzooError, match=r"^no tasks given"):
        resolve_tasks([" ", ""])


def test_mteb_cli_runs_custom_tasks_and_writes_results(root, results, tmp_path):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    tasks_file = tmp_path / "my_tasks.py"
    tasks_file.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                          f"import _mteb_tasks as T\n\nclass STS(T.ShapesSTS):\n    root = {str(root)!r}\n\n"
                          f"class ZeroShot(T.ShapesZeroShot):\n    root = {str(root)!r}\n")
    out = tmp_path / "mteb_out"
    r = CliRunner().invoke(app, ["eval", "mteb", "--model", "clipzoo/tiny-shapes", "--tasks",
                                 f"{tasks_file}:STS,{tasks_file}:ZeroShot", "--output-dir", str(out),
                                 "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert printed["model"] == "clipzoo/tiny-shapes"
    assert printed["tasks"]["ShapesZeroShot"] == results["tiny-shapes"]["ShapesZeroShot"]
    assert printed["tasks"]["ShapesSTS"] == results["tiny-shapes"]["ShapesSTS"]
    written = sorted(p.name for p in out.rglob("*.json"))
    assert {"ShapesSTS.json", "ShapesZeroShot.json", "summary.json"} <= set(written), written
    bad = CliRunner().invoke(app, ["eval", "mteb", "--model", "clipzoo/tiny-shapes", "--tasks", "NoSuchTask123"])
    assert bad.exit_code == 2 and "unknown mteb task 'NoSuchTask123'" in bad.output


def test_mteb_encode_rejects_a_batch_without_text_or_image(models):
    with pytest.raises(ClipzooError, match=r"an mteb batch with neither text nor image \(keys: audio\)"):
        mteb_model(models["tiny-shapes"]).encode_batch({"audio": [torch.zeros(3)]})


def test_mteb_missing_package_is_one_line(monkeypatch):
    from typer.testing import CliRunner

    from clipzoo.cli import app

    monkeypatch.setitem(__import__("sys").modules, "mteb", None)  # as if mteb were not installed
    r = CliRunner().invoke(app, ["eval", "mteb", "--model", "clipzoo/tiny-shapes", "--tasks", "STS12"])
    assert r.exit_code == 2
    assert "clipzoo eval mteb needs mteb, which is not installed; pip install 'clipzoo[eval]'" in r.output
