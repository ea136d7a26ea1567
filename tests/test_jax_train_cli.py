"""Issue 18 §5: ``clipzoo train --engine jax`` with open_clip_jax's main.py options and clipzoo's config files;
its user errors are one line and exit status 2."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

pytest.importorskip("jax")
pytest.importorskip("orbax.checkpoint")

from clipzoo.cli import app  # noqa: E402
from clipzoo.datasets import write_shapes  # noqa: E402

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
TINY = {"image_model": {"depth": 1, "embed_dim": 32, "n_heads": 2, "patch_size": 8},
        "text_model": {"depth": 1, "embed_dim": 32, "n_heads": 2}, "proj_dim": 16}


def run(*args):
    return CliRunner().invoke(app, ["train", *[str(a) for a in args]], env=ENV)


def test_jax_cli_open_clip_jax_flags_need_the_jax_engine():
    r = run("--train-path", "train.csv", "--global-batch-size", "8")
    assert r.exit_code == 2
    assert "unknown option(s) --train-path train.csv --global-batch-size 8 (open_clip_jax's options need " \
           "--engine jax)" in r.output


@pytest.mark.parametrize("args,message", [
    (["--engine", "jax", "--train-path", "x.csv", "--ema", "0.9"], "--ema is not an option of --engine jax"),
    (["--engine", "jax", "--train-path", "x.csv", "--dtype", "float16"],
     "dtype must be float32 or bfloat16 (fp32 / bf16), got 'float16'; float16 needs loss scaling"),
    (["--engine", "jax", "--train-path", "x.csv", "--loss", "vicreg"],
     "loss must be one of infonce, siglip for the JAX engine, got 'vicreg'"),
    (["--engine", "jax", "--train-path", "x.csv", "--global-batch-size", "many"],
     "--engine jax: argument --global-batch-size: invalid int value: 'many'"),
    (["--engine", "jax", "--recipe", "tiny-shape"], "unknown recipe 'tiny-shape' for the JAX engine; did you mean "
                                                    "'tiny-shapes'?"),
    (["--engine", "mxnet"], "unknown engine 'mxnet': use torch, jax or mindspore"),
    (["--engine", "jax"], "at least one of --train-path or --valid-path needs to be provided"),
])
def test_jax_cli_user_errors(args, message):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output


def test_jax_cli_config_file_unknown_key(tmp_path):
    (tmp_path / "run.toml").write_text('train_path = "x.csv"\nlerning_rate = 1e-3\n')
    r = run("--engine", "jax", "--config", tmp_path / "run.toml")
    assert r.exit_code == 2
    assert "unknown key 'lerning_rate' for the JAX engine; did you mean 'learning_rate'?" in r.output


def test_jax_cli_trains_with_open_clip_jax_flags_and_a_config_file(tmp_path):
    write_shapes(tmp_path / "data", 40, seed=1, image_size=16, formats=("csv",), two_object_prob=0.0)
    # a config file in the torch trainer's spelling (batch_size, lr, warmup) + open_clip_jax's flags on top
    (tmp_path / "run.json").write_text(json.dumps({"train": {"model_config": TINY, "batch_size": 4, "lr": 1e-2,
                                                             "warmup": 1, "image_size": 16, "context_len": 12}}))
    r = run("--engine", "jax", "--config", tmp_path / "run.json", "--train-path", tmp_path / "data" / "shapes.csv",
            "--image-key", "filepath", "--text-key", "caption", "--global-batch-size", "8", "--learning-rate",
            "2e-3", "--n-epochs", "1", "--checkpoint-dir", tmp_path / "ckpt", "--output", tmp_path / "out",
            "--no-progress", "--log-freq", "1", "--valid-path", tmp_path / "data" / "shapes.csv")
    assert r.exit_code == 0, r.output
    assert "trained 5 steps (jax)" in r.output  # 40 samples / global batch 8 (the flag beats the file's 4)
    assert "valid_loss" in r.output
    assert (tmp_path / "out" / "model" / "params.pkl").is_file()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == ["5"]
    info = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert info["config"]["learning_rate"] == 2e-3 and info["config"]["n_warmup_steps"] == 1
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 5]
    assert lines[-1]["epoch"] == 1 and 0 < lines[-1]["valid_loss"] < 5  # open_clip_jax's per-epoch validation
    assert lines[0]["lr"] == pytest.approx(1e-5, rel=1e-5)  # open_clip_jax's warmup_init at step 0
    assert lines[1]["lr"] == pytest.approx(2e-3, rel=1e-5)  # the peak after the one warm-up step


def test_jax_cli_without_the_extra_names_it():
    """Without optax (one of the [jax] extra's packages) the engine is one line naming the extra, exit 2."""
    script = textwrap.dedent("""
        import sys
        sys.modules["optax"] = None
        from typer.testing import CliRunner
        from clipzoo.cli import app
        r = CliRunner().invoke(app, ["train", "--engine", "jax", "--train-path", "x.csv"])
        print(r.exit_code)
        print(r.output)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    code, *out = proc.stdout.strip().splitlines()
    assert code == "2", proc.stdout + proc.stderr
    assert "the JAX training engine (clipzoo train --engine jax)" in "\n".join(out)
    assert "pip install 'clipzoo[jax]'" in "\n".join(out)
