"""README.md and docs/*.md read and run as a newcomer would (probe "docs", round 2): ties decided on the scores
relative to each other, one line for a model_config open_clip cannot build, every relative link and #anchor of
the docs resolving, the --teacher hint, the JAX engine's warm-up and held-out folder, ``eval_every = 0``, a resume
at the run's end, and an Ensemble that is given the same model twice."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.comparator import competition_ranks
from clipzoo.errors import ClipzooError
from clipzoo.train.config import TrainConfig, load_config
from clipzoo.train.engine import train
from clipzoo.train.result import TrainingError

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = "clipzoo/tiny-shapes"
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
# an open_clip config small enough to train in a second
TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _red_circle(path: Path) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), (90, 110, 100))
    ImageDraw.Draw(im).ellipse([14, 14, 50, 50], fill=(225, 25, 25))
    im.save(path)
    return path


# ------------------------------------------------------------------ 1. ties
def test_ties_are_scores_equal_relative_to_each_other_not_within_an_absolute_1e_6():
    # the report's row: logits 22.39, -6.25, -19.26 -> the two low labels were "tied" at rank 2
    assert competition_ranks([1.0, 3.654629767216311e-13, 8.190756384172917e-19]) == [1, 2, 3]
    assert competition_ranks([1.0, 3.27e-08, 7.94e-19]) == [1, 2, 3]
    assert competition_ranks([2e-9, 1e-9, 3e-9]) == [2, 3, 1]  # SigLIP-like sigmoids, all below 1e-6
    # equal scores, and scores one float32 rounding apart, still tie
    assert competition_ranks([0.25, 3e-13, 3e-13, 0.75]) == [2, 3, 3, 1]
    assert competition_ranks([3e-13, 3e-13 * (1 + 1e-7), 0.5]) == [2, 2, 1]
    assert competition_ranks([0.5, 0.5 + 6e-8]) == [1, 1]


def test_compare_and_classify_rank_clearly_different_low_labels_apart(tmp_path):
    image = _red_circle(tmp_path / "red-circle.png")
    r = cli("compare", EMBEDDED, "--image", image, "--text", "a red circle", "--text", "a blue triangle", "--text",
            "a green star", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    logits = out["logits"][0]
    assert logits[1] - logits[2] > 5  # probabilities many orders of magnitude apart
    assert out["ranks"] == [[1, 2, 3]]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red circle\nblue square\ngreen star\n")
    r = cli("classify", image, "--model", EMBEDDED, "--labels", vocab, "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    labels = json.loads(r.stdout)["results"][0]["labels"]
    assert [(x["label"], x["rank"], x["tie"]) for x in labels] == [("red circle", 1, False), ("blue square", 2, False),
                                                                  ("green star", 3, False)]
    r = cli("classify", image, "--model", EMBEDDED, "--labels", vocab, "-k", "3")
    assert "(tie" not in r.stdout


def test_the_service_ranks_with_the_same_rule():
    pytest.importorskip("fastapi")
    from clipzoo.serve.routers.classify import ranked

    rows = ranked([{"label": "red circle", "probability": 1.0}, {"label": "blue square", "probability": 3.27e-08},
                   {"label": "green star", "probability": 7.94e-19}])
    assert [(r["rank"], r["tie"]) for r in rows] == [(1, False), (2, False), (3, False)]


# ------------------------------------------------------------------ 2. a model_config open_clip cannot build
def test_a_model_config_open_clip_cannot_build_is_one_line(tmp_path):
    config = {"model_config": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32,
                                                               "patch_size": 8},
                               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                            "layers": 1}},
              "data": ["shapes-classes:32"], "batch_size": 16, "steps": 2, "output": str(tmp_path / "run")}
    (tmp_path / "run.json").write_text(json.dumps(config))
    r = cli("train", "--config", tmp_path / "run.json")
    assert r.exit_code == 2, r.output
    assert r.output.strip() == ("error: model_config: its open_clip model cannot be built (ValueError: embed_dim and "
                                "num_heads must be greater than 0, got embed_dim=32 and num_heads=0 instead); check "
                                "the config's values")
    config["model_config"]["vision_cfg"]["widht"] = 64
    (tmp_path / "run.json").write_text(json.dumps(config))
    r = cli("train", "--config", tmp_path / "run.json")
    assert r.exit_code == 2, r.output
    assert r.output.strip() == ("error: model_config: its open_clip model cannot be built (TypeError: "
                                "CLIPVisionCfg.__init__() got an unexpected keyword argument 'widht'); check the "
                                "config's values")


# ------------------------------------------------------------------ 3. links and anchors of the docs
def _unfenced(text: str) -> list[str]:
    """The lines of a Markdown text outside its fenced code blocks."""
    out, fence = [], None
    for line in text.splitlines():
        m = re.match(r"\s*(```+|~~~+)", line)
        if m:
            fence = None if fence and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) else (fence or
                                                                                                         m.group(1))
            continue
        if fence is None:
            out.append(line)
    return out


def github_anchor(heading: str) -> str:
    """GitHub's id of a heading: its text (links and inline markup as rendered), lower case, without punctuation
    other than ``-`` and ``_``, spaces as ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _unfenced(path.read_text("utf-8")):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_anchor(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
        found.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return found


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _targets(doc: Path) -> list[str]:
    """The relative link targets of ``doc``: Markdown links outside code, and ``FILE.md#anchor`` written anywhere
    (a comment in a code block is read and followed too)."""
    text = doc.read_text("utf-8")
    prose = "\n".join(re.sub(r"`[^`]*`", "", line) for line in _unfenced(text))
    links = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    links += re.findall(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md#[\w-]+)", text)
    return [t for t in links if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:, …


def _resolve(doc: Path, path: str) -> "Path | None":
    for base in (doc.parent, ROOT):
        if (base / path).exists():
            return base / path
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_of_the_docs_resolves(doc):
    bad = []
    for target in _targets(doc):
        path, _, anchor = target.partition("#")
        where = doc if not path else _resolve(doc, path)
        if where is None:
            bad.append(f"{target}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            bad.append(f"{target}: no heading with that anchor in {where.relative_to(ROOT)}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


def test_github_anchors():
    assert github_anchor("Video (X-CLIP, PE video, PE audio-visual, VideoPrism, and any image–text model)") == \
        "video-x-clip-pe-video-pe-audio-visual-videoprism-and-any-imagetext-model"
    assert github_anchor("The embedded default model: `clipzoo/tiny-shapes`") == \
        "the-embedded-default-model-clipzootiny-shapes"
    assert github_anchor("See [the docs](docs/x.md) first") == "see-the-docs-first"


# ------------------------------------------------------------------ 4. the --teacher hint
def test_a_distilling_loss_from_a_flag_names_the_teacher_flag():
    r = cli("train", "--recipe", "tiny-shapes", "--loss", "simreg")
    assert r.exit_code == 2
    assert r.output.strip() == ("error: --loss: loss 'simreg' distils from a teacher: pass --teacher SPEC (a registry "
                                "spec or a trained model folder, e.g. --teacher runs/big/model), or set the `teacher` "
                                "key in the config file")


# ------------------------------------------------------------------ 5, 6. held-out images, eval_every = 0, resume
def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    values = {"model_config": TINY, "data": ["shapes-classes:16"], "batch_size": 8, "steps": 2, "warmup": 0,
              "workers": 0, "progress": False, "tensorboard": False, "eval_data": "shapes-heldout:12",
              "output": str(tmp_path / "run"), **kw}
    return load_config(overrides=values)


def test_a_refused_torch_run_leaves_no_heldout_folder(tmp_path):
    with pytest.raises(ClipzooError, match="^nothing to resume: no checkpoint "):  # refused after the data phase
        train(_cfg(tmp_path, resume=str(tmp_path / "no-such.pt")))
    assert not (tmp_path / "run" / "heldout").exists()
    result = train(_cfg(tmp_path))  # a run that goes ahead writes it and evaluates on it
    assert len(list((tmp_path / "run" / "heldout" / "images").rglob("*.png"))) == 12
    assert [e["step"] for e in result.evals] == [2]


def test_eval_every_0_turns_the_evaluation_off(tmp_path):
    cfg = _cfg(tmp_path, eval_every=0)
    assert cfg.eval_every == 0 and not cfg.evaluates
    result = train(cfg)
    assert result.evals == []
    assert not (tmp_path / "run" / "heldout").exists()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines and not any(k.startswith("eval/") for x in lines for k in x)
    with pytest.raises(ClipzooError, match=r"^--eval-every: eval_every must be 0 or more, got -1$"):
        load_config(overrides={"model_config": TINY, "eval_every": -1}, flags=True)


def test_resuming_at_the_runs_end_is_refused_as_the_message_says(tmp_path):
    train(_cfg(tmp_path, eval_data=None))
    step2 = tmp_path / "run" / "checkpoints" / "step_0000002.pt"
    with pytest.raises(TrainingError) as err:
        train(_cfg(tmp_path, eval_data=None, resume="latest"))
    assert str(err.value) == (f"cannot resume from {step2}: it is at step 2, the end of this run's 2 steps; pass "
                              "--steps above 2, or start a new run")
    assert train(_cfg(tmp_path, eval_data=None, resume="latest", steps=3)).history[-1]["step"] == 3


# ------------------------------------------------------------------ 5. the JAX engine
def test_jax_trains_a_run_shorter_than_its_warm_up_as_the_torch_engine_does():
    pytest.importorskip("optax")
    from clipzoo.train.jax.config import jax_from_mapping
    from clipzoo.train.jax.state import build_schedule
    from clipzoo.train.phases.optimiser import lr_lambda

    cfg = jax_from_mapping({"train_path": "x.csv", "learning_rate": 4e-3, "n_warmup_steps": 50,
                            "warmup_rule": "torch"})
    schedule = build_schedule(cfg, 3)  # was: "the run has 3 steps, not more than its 50 warm-up steps"
    assert [float(schedule(s)) for s in range(3)] == pytest.approx([4e-3 * lr_lambda(50, 3, "cosine")(s)
                                                                    for s in range(3)])
    assert [float(schedule(s)) for s in range(3)] == pytest.approx([8e-5, 1.6e-4, 2.4e-4])
    cfg = cfg.replace(warmup_rule="open_clip_jax", warmup_init=1e-5)  # optax's linear warm-up, not yet at its peak
    schedule = build_schedule(cfg, 3)
    assert [float(schedule(s)) for s in range(3)] == pytest.approx([1e-5 + (4e-3 - 1e-5) * s / 50 for s in range(3)],
                                                                   rel=1e-5)  # float32
    assert not cfg.replace(eval_data="shapes-heldout:10", eval_every=0).evaluates


def test_a_refused_jax_run_leaves_no_heldout_folder(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from clipzoo.datasets import write_shapes
    from clipzoo.train.jax.config import jax_from_mapping
    from clipzoo.train.jax.loop import train_jax

    write_shapes(tmp_path / "data", 16, seed=1, image_size=16, formats=("csv",), two_object_prob=0.0)
    tiny = {"image_model": {"depth": 1, "embed_dim": 32, "n_heads": 2, "patch_size": 8},
            "text_model": {"depth": 1, "embed_dim": 32, "n_heads": 2}, "proj_dim": 16}
    cfg = jax_from_mapping({"train_path": str(tmp_path / "data" / "shapes.csv"), "model_config": tiny,
                            "image_size": 16, "context_len": 12, "global_batch_size": 8, "steps": 2,
                            "n_warmup_steps": 1,  # HEAD refused a run within its warm-up before this test's point
                            "eval_data": "shapes-heldout:10", "output": str(tmp_path / "run"), "progress": False,
                            "resume_from_checkpoint": str(tmp_path / "no-checkpoints")})
    with pytest.raises(ClipzooError, match="no checkpoint to resume from"):
        train_jax(cfg)
    assert not (tmp_path / "run" / "heldout").exists()


# ------------------------------------------------------------------ 7. the same model twice in an Ensemble
def test_adding_a_model_already_in_the_ensemble_warns_once(tiny_files):
    ens = clipzoo.Ensemble([EMBEDDED], weights=[2])
    with pytest.warns(UserWarning) as caught:
        ens.add("[clip - clipzoo - *]")  # docs/ensembles.md's query, which matches the same card
    assert [str(w.message) for w in caught] == [
        "[clip - clipzoo - tiny-shapes] is already in this ensemble: it is added again as '[clip - clipzoo - "
        "tiny-shapes] #2', and that model's share is the sum of its weights; to change its weight instead, "
        "remove('[clip - clipzoo - tiny-shapes]') and add it with the new one"]
    assert caught[0].filename == __file__  # it names the user's line
    assert ens.weights == {"[clip - clipzoo - tiny-shapes]": 2 / 3, "[clip - clipzoo - tiny-shapes] #2": 1 / 3}
    model = clipzoo.load(str(tiny_files["open_clip_safetensors"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other = clipzoo.Ensemble([EMBEDDED, model])  # two different models: no warning
    assert len(other) == 2
    with pytest.warns(UserWarning, match="is already in this ensemble"):
        other.add(model)  # the same Comparator again
