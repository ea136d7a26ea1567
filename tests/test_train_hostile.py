"""Training against a newcomer's configs and an attacker's files (found by probing `clipzoo train`): one clear line
each — never a hang, a traceback, two runs silently sharing a folder, or a model of NaN reported as a success."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from clipzoo.cli import app
from clipzoo.train.config import ConfigError, from_mapping, load_config
from clipzoo.train.model import check_finite_weights
from clipzoo.train.result import TrainingError
from clipzoo.train.run_lock import hold_output
from test_train_options import TINY, _cfg, _run, shapes  # noqa: F401 (fixture)

pytest.importorskip("peft")


@pytest.mark.parametrize("values, said", [
    ({"steps": 1.5}, "steps must be a whole number, got 1.5"),  # "trained 1.5 steps"
    ({"betas": 5}, "betas must be two numbers, got 5"),  # 'int' object is not iterable
    ({"model_config": "abc"}, "model_config must be a table of keys, got 'abc'"),  # no attribute 'setdefault'
    ({"pretrained": "yes"}, "pretrained must be true or false, got 'yes'"),
    ({"lr": math.inf}, "lr must be a finite number, got inf"),  # trained a model of NaN, exit 0
    ({"log_every": 0}, "log_every must be at least 1, got 0"),  # ZeroDivisionError
    ({"warmup": -5}, "warmup must be 0 or more steps, got -5"),
    ({"weight_decay": -1}, "weight_decay must be 0 or more, got -1.0"),
])
def test_config_values_of_the_wrong_type_or_range_are_one_line(values, said):
    with pytest.raises(ConfigError) as err:
        from_mapping({"model": "tiny", **values}, "run.yaml")
    assert str(err.value) == f"run.yaml: {said}"


def test_the_jax_engine_checks_its_values_too():
    from clipzoo.train.jax.config import jax_from_mapping

    assert jax_from_mapping({"learning_rate": "1e-3", "train_path": "shapes:8"}).learning_rate == 0.001
    with pytest.raises(ConfigError, match=r"^config: learning_rate must be a positive finite number, got inf$"):
        jax_from_mapping({"learning_rate": math.inf, "train_path": "shapes:8"})


def test_numbers_a_yaml_file_reads_as_strings_are_numbers(tmp_path):
    """PyYAML reads `lr: 1e-3` as the string '1e-3': '>' not supported between 'str' and 'int'."""
    pytest.importorskip("yaml")
    (tmp_path / "run.yaml").write_text("model: tiny\nlr: 1e-3\nbatch_size: '8'\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert (cfg.lr, cfg.batch_size) == (0.001, 8)
    (tmp_path / "bad.yaml").write_text("train: 5\n")
    with pytest.raises(ConfigError, match=r"must hold a table of keys \(or a \[train\] table\)$"):
        load_config(tmp_path / "bad.yaml")


def test_weights_of_nan_are_never_saved_as_a_trained_model():
    check_finite_weights({"w": torch.ones(2), "attn_mask": torch.full((2, 2), -math.inf)})  # the causal mask's -inf
    with pytest.raises(Exception, match=r"^the trained weights hold NaN or infinite values \(1 of 2 tensors, first "
                                        r"'visual.w'\): the run diverged; lower --lr or set --grad-clip"):
        check_finite_weights({"visual.w": torch.tensor([math.nan]), "b": torch.ones(1)})


def test_resume_from_what_is_no_checkpoint_is_one_line(tmp_path, shapes):  # noqa: F811
    """Truncated: a RuntimeError traceback; 0 bytes: the CLI's 'Aborted!'; {'a': 1}: KeyError 'architecture'."""
    run = tmp_path / "run"
    _run(_cfg(run, steps=2, save_every=1), shapes)
    good = run / "checkpoints" / "step_0000001.pt"
    files = {"truncated.pt": good.read_bytes()[:1000], "empty.pt": b"", "text.pt": b"hello world\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"a": 1}, tmp_path / "dict.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    for name, why in [("truncated.pt", r"\(.+\)"), ("empty.pt", r"\(it is empty\)"), ("text.pt", r"\(.+\)"),
                      ("dict.pt", r"\(it holds keys a\)"), ("list.pt", r"\(it holds list\)")]:
        with pytest.raises(TrainingError, match=rf"^cannot resume from {tmp_path / name}: not a clipzoo training "
                                                rf"checkpoint {why}; pass a step_\*.pt"):
            _run(_cfg(run, steps=3, resume=str(tmp_path / name)), shapes)
    assert good.exists()  # nothing overwritten


def test_one_run_per_output_folder(tmp_path, shapes):  # noqa: F811
    """Two runs on one OUTPUT both reported success, their checkpoints and metrics interleaved."""
    run = tmp_path / "run"
    held = hold_output(run, str(run))  # another run holds it
    try:
        with pytest.raises(TrainingError, match=rf"^--output {run} is in use by another training run \(pid "
                                                rf"{os.getpid()}\); wait for it to finish"):
            _run(_cfg(run, steps=1), shapes)
    finally:
        os.close(held)
    for _ in range(2):  # free again: runs one after the other in one process
        _run(_cfg(run, steps=1), shapes)


def test_a_streamed_run_resumes_exactly(tmp_path):
    """A CSV run stopped and resumed gave other losses after the resume (3.3966 for 3.3265): its random crops came
    from torch's global generator, whose state the replayed samples left elsewhere."""
    from clipzoo.datasets import write_shapes
    from clipzoo.train.engine import train

    write_shapes(tmp_path / "s", 48, image_size=32, formats=("csv",))
    data = [str(tmp_path / "s" / "shapes.csv")]

    def run(output, resume=None, stop_at=None):
        losses = {}

        def record(step, rec):
            losses[step] = rec["loss"]
            if step == stop_at:
                raise KeyboardInterrupt

        cfg = _cfg(output, data=data, steps=5, batch_size=8, save_every=2, resume=resume)
        try:
            train(cfg, on_step=record)
        except KeyboardInterrupt:
            pass
        return losses

    whole = run(tmp_path / "a")
    run(tmp_path / "b", stop_at=3)  # after the step-2 checkpoint: step 3 is lost
    resumed = run(tmp_path / "b", resume="latest")
    assert sorted(resumed) == [3, 4, 5]
    assert [resumed[s] for s in (3, 4, 5)] == pytest.approx([whole[s] for s in (3, 4, 5)], abs=1e-6)


def test_no_usable_sample_is_an_error_not_a_hang(tmp_path):
    """A CSV whose images are all missing trained for ever, epoch after empty epoch, printing nothing."""
    (tmp_path / "missing.csv").write_text("filepath,caption\n" + "".join(f"{i}.png,a red circle\n"
                                                                           for i in range(20)))
    (tmp_path / "run.json").write_text(json.dumps({"model_config": TINY, "tensorboard": False}))
    args = [sys.executable, "-m", "clipzoo", "train", "-c", str(tmp_path / "run.json"), "--data",
            str(tmp_path / "missing.csv"), "--output", str(tmp_path / "out"), "--steps", "2", "--batch-size", "4",
            "--workers", "0", "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: a whole epoch of the training data gave no batch of 4: every sample was unreadable or had no "
        "caption, or fewer samples are usable than one batch; check --data")


def test_an_output_under_a_file_is_one_line(tmp_path):
    """NotADirectoryError was a traceback after the model and the data were built."""
    (tmp_path / "afile").write_text("hi")
    (tmp_path / "run.json").write_text(json.dumps({"model_config": TINY, "tensorboard": False}))
    r = CliRunner().invoke(app, ["train", "-c", str(tmp_path / "run.json"), "--data", "shapes:8", "--output",
                                 str(tmp_path / "afile" / "run"), "--steps", "1", "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines()[-1] == f"error: [Errno 20] Not a directory: '{tmp_path / 'afile' / 'run'}'"


def test_a_training_checkpoint_loads_as_the_model_it_holds(tmp_path, shapes):  # noqa: F811
    """`clipzoo.load("…/step_0000002.pt")` (and so `--teacher` of one) guessed the architecture from tensor shapes
    in OpenAI's layout — QuickGELU, 64-wide heads — and failed on the tiny model with a raw ValueError
    (`num_heads=0`); a checkpoint now carries its open_clip config and loads as the model it holds."""
    import clipzoo
    from clipzoo.errors import CheckpointError
    from clipzoo.train.distill import load_teacher

    cfg = _cfg(tmp_path / "run", steps=2, save_every=2)
    _run(cfg, shapes)
    step = tmp_path / "run" / "checkpoints" / "step_0000002.pt"
    folder, ckpt = clipzoo.load(str(tmp_path / "run" / "model")), clipzoo.load(str(step))
    texts = ["a red circle", "a blue star"]
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(ckpt.encode_text(texts), folder.encode_text(texts))
    assert torch.equal(ckpt.encode_image(images), folder.encode_image(images))
    assert load_teacher(str(step), [0.5] * 3, [0.5] * 3, "cpu").comparator.embed_dim == 16

    state = torch.load(step, weights_only=False)
    state.pop("clipzoo_open_clip_config")  # as an older clipzoo wrote it, or a model with towers / adapters
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"old.pt is a clipzoo training checkpoint \(step 2\) without the "
                                              r"model config loading needs .*; load the run's model/ folder"):
        clipzoo.load(str(tmp_path / "old.pt"))
