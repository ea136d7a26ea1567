"""The training loop against a full disk, a killed save, settings that passed the config's checks and failed later,
and resumes that were silently not exact (found by probing `clipzoo train`): one line each, before step 1 where
the mistake is in the config, and nothing left half-written."""
from __future__ import annotations

import errno
import json
import math
import multiprocessing.context
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from clipzoo.cli import app
from clipzoo.errors import ClipzooError
from clipzoo.train.config import ConfigError, TrainConfig, from_mapping
from clipzoo.train.distill import fill_loss_options
from clipzoo.train.engine import train
from clipzoo.train.model import build_model, save_trained
from clipzoo.train.recipes import parse_shapes_spec
from clipzoo.train.result import TrainingError
from test_train_options import TINY, _cfg, _run, shapes  # noqa: F401 (fixture)

pytest.importorskip("peft")

BASE = {"model_config": TINY, "tensorboard": False, "batch_size": 8, "warmup": 0, "workers": 0, "progress": False}


def _cli(tmp_path, *args, **config):
    (tmp_path / "run.json").write_text(json.dumps({**BASE, "data": ["shapes:16"], "steps": 2, **config}))
    return CliRunner().invoke(app, ["train", "-c", str(tmp_path / "run.json"), *map(str, args)])


def _steps_run(cfg, shapes):  # noqa: F811
    """(the error ``_run`` raised, the steps it trained first)."""
    seen = []
    with pytest.raises(ClipzooError) as err:
        _run(cfg, shapes, on_step=lambda step, rec: seen.append(step))
    return str(err.value), seen


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# ------------------------------------------------------------------ 1: a full disk, a killed save
def test_a_checkpoint_the_disk_refuses_is_one_line_and_the_model_is_kept(tmp_path):
    """`ulimit -f` at the end of a run: a torch RuntimeError traceback ("[enforce fail at inline_container.cc:672]
    unexpected pos …"), `.step_0000002.pt.tmp-PID` left for good, and no model (the checkpoint was written first)."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (12 << 20, hard))  # the model (6.4 MB) fits, its checkpoint does not
    try:
        r = _cli(tmp_path, "--output", tmp_path / "out")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    step, model = tmp_path / "out" / "checkpoints" / "step_0000002.pt", tmp_path / "out" / "model"
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {step} (File too large): check the disk, the file size limit (ulimit -f) and the "
        f"folder's permissions (or pass another --output / checkpoint_dir), then rerun (the trained model is in "
        f"{model})")
    assert (model / "clipzoo_train.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == []  # no temporary left


def test_a_full_disk_says_no_space_left():
    from clipzoo.train.storage import write_error

    assert str(write_error("/r/checkpoints/step_0000002.pt", OSError(errno.ENOSPC, "No space left on device"))) == (
        "no space left writing /r/checkpoints/step_0000002.pt; free some space (or pass another --output / "
        "checkpoint_dir) and rerun")
    assert str(write_error("/r/x.pt", OSError(errno.EFBIG, "File too large"), " (kept)")).startswith(
        "cannot write /r/x.pt (File too large): check the disk, the file size limit (ulimit -f)")


def test_a_refused_remote_write_is_one_line_and_leaves_no_temporary(monkeypatch, tmp_path):
    """A full or denied bucket (fsspec raises OSErrors) was a raw traceback from inside fsspec, and the temporary
    stayed; now it is the local disk's one line naming the URL."""
    import uuid

    import fsspec
    import torch

    from clipzoo.train.storage import Location

    root = f"clipzoo-test-{uuid.uuid4().hex}"
    where = Location(f"memory://{root}/checkpoints")
    fs = fsspec.filesystem("memory")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(fs), "mv", full)
    with pytest.raises(ClipzooError) as caught:
        where.torch_save("step_0000002.pt", {"w": torch.zeros(3)}, kept=" (the trained model is in memory://m)")
    assert str(caught.value) == (f"no space left writing memory://{root}/checkpoints/step_0000002.pt; free some "
                                 "space (or pass another --output / checkpoint_dir) and rerun (the trained model is "
                                 "in memory://m)")
    assert fs.ls(f"/{root}/checkpoints") == []  # the temporary removed
    monkeypatch.setattr(type(fs), "put_file", lambda *a, **k: (_ for _ in ()).throw(PermissionError(
        errno.EACCES, "Access Denied")))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ClipzooError, match=rf"^cannot write memory://{root}/model \(Access Denied\): check the "
                                           r"disk, the file size limit \(ulimit -f\) and the folder's permissions"):
        Location(f"memory://{root}/model").upload_dir(tmp_path / "model")
    fs.rm(f"/{root}", recursive=True)


def test_a_killed_runs_temporaries_are_removed_at_the_next_start(tmp_path, shapes):  # noqa: F811
    """A SIGKILL mid-save left `.step_0000004.pt.tmp-PID` after a successful resume, for good."""
    run, dead, live = tmp_path / "run", _dead_pid(), os.getppid()
    (run / "checkpoints").mkdir(parents=True)
    for name in (f".step_0000004.pt.tmp-{dead}", f".latest.tmp-{dead}", f".step_0000004.pt.tmp-{live}", "notes.txt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    (run / f".model.tmp-{dead}").mkdir()  # a model folder half written
    (run / f".model.tmp-{dead}" / "open_clip_model.safetensors").write_bytes(b"x")
    _run(_cfg(run, steps=1), shapes)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f".step_0000004.pt.tmp-{live}", "latest", "notes.txt", "step_0000001.pt"]  # a live process's is kept
    assert not (run / f".model.tmp-{dead}").exists()


# ------------------------------------------------------------------ 2, 3: the run folders, checked before step 1
def test_a_checkpoint_dir_that_is_a_file_fails_before_step_1(tmp_path, shapes):  # noqa: F811
    """It trained every step, then FileExistsError, with no checkpoint and no model."""
    (tmp_path / "afile").write_text("x")
    said, seen = _steps_run(_cfg(tmp_path / "run", steps=3, checkpoint_dir=str(tmp_path / "afile")), shapes)
    assert said == (f"checkpoint_dir {tmp_path / 'afile'} is a file; pass a folder (new, or a previous run's), or "
                    "move the file away")
    assert seen == []


@pytest.mark.parametrize("eval_data, said", [
    ("/nonexistent/x.csv", "eval_data: CSV file '/nonexistent/x.csv' does not exist"),
    ("shapes-heldout:0", "bad eval data spec 'shapes-heldout:0': write shapes-heldout:N with N at least 1"),
])
def test_eval_data_that_cannot_be_read_fails_before_step_1(tmp_path, shapes, eval_data, said):  # noqa: F811
    """It failed after the training (or at the first evaluation)."""
    message, seen = _steps_run(_cfg(tmp_path / "run", steps=2, eval_data=eval_data), shapes)
    assert message.startswith(said) and seen == []


def test_eval_data_without_class_names_is_refused_up_front(tmp_path, shapes):  # noqa: F811
    """It trained, then evaluated nothing: the summary said "zero-shot " followed by nothing."""
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 8), (255 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "captions.csv").write_text("filepath,caption\n0.png,a black square\n1.png,a red square\n")
    said, seen = _steps_run(_cfg(tmp_path / "run", steps=2, eval_data=str(tmp_path / "captions.csv")), shapes)
    assert said == (f"eval_data {tmp_path / 'captions.csv'}: no class names, and the evaluation during training is "
                    "zero-shot classification, which needs them; pass eval_classnames (a .txt of class names, one a "
                    "line) or a data set that carries them (a folder per class, shapes-heldout:N)")
    assert seen == []


def test_the_run_lock_is_given_back_when_the_set_up_fails(tmp_path, shapes):  # noqa: F811
    """The next train() in the process said the output was in use by another run — its own pid."""
    with pytest.raises(ConfigError, match=r"^nosuchfs://bucket/ck: not a usable fsspec URL"):
        _run(_cfg(tmp_path / "run", steps=1, checkpoint_dir="nosuchfs://bucket/ck"), shapes)
    result, _, _ = _run(_cfg(tmp_path / "run", steps=1), shapes)
    assert result.steps == 1


# ------------------------------------------------------------------ 4: values that passed and crashed later
@pytest.mark.parametrize("values, said", [
    ({"logit_scale_max": 0}, "logit_scale_max must be a positive number, got 0.0"),  # math domain error
    ({"logit_scale_max": -1}, "logit_scale_max must be a positive number, got -1.0"),
    ({"logit_scale_max": math.nan}, "logit_scale_max must be a positive number, got nan"),  # accepted
    ({"seed": 10**20}, "seed must be a whole number from 0 to 4294967295, got 100000000000000000000"),  # Overflow
    ({"seed": -1}, "seed must be a whole number from 0 to 4294967295, got -1"),
    ({"lock_image_unlocked_layers": -1}, "lock_image_unlocked_layers must be 0 or more, got -1"),  # accepted
    ({"lock_text_unlocked_layers": -2}, "lock_text_unlocked_layers must be 0 or more, got -2"),
    ({"data": ["a.csv", "b.csv"], "data_weights": [0, 0]},
     "data_weights must give some source a weight above 0, got [0.0, 0.0]"),  # ValueError in the sampling
    ({"output": ""}, "output must name a run folder, got ''"),  # wrote into the current folder
])
def test_values_that_crashed_later_are_refused_with_the_config(values, said):
    with pytest.raises(ConfigError) as err:
        from_mapping({"model_config": TINY, **values}, "run.yaml")
    assert str(err.value) == f"run.yaml: {said}"


def test_a_device_this_machine_lacks_is_one_line():
    """A raw RuntimeError once the model was built ("tpu": torch's list of device types)."""
    from clipzoo.train.distributed import pick_device

    with pytest.raises(ClipzooError) as err:
        pick_device("tpu")
    assert str(err.value) == "device 'tpu' is not a device; use 'cpu', 'cuda', 'cuda:1', 'mps', …"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError) as err:
            pick_device("cuda")
        assert str(err.value) == "device 'cuda': torch sees 0 CUDA device(s) here; use device='cpu'"


@pytest.mark.parametrize("spec", ["shapes:0", "shapes:-5", "shapes-classes:4:-1"])
def test_generated_data_of_no_sample_is_refused_before_the_model_is_built(tmp_path, spec, monkeypatch):
    """A ValueError from deep in render_shapes, after the model was built."""
    import clipzoo.train.trainer as trainer

    kind = spec.split(":")[0]
    said = f"bad data spec {spec!r}: N must be at least 1 and SEED 0 or more; write {kind}:N or {kind}:N:SEED"
    with pytest.raises(ConfigError) as err:
        parse_shapes_spec(spec)
    assert str(err.value) == said
    monkeypatch.setattr(trainer, "build_model", lambda cfg: pytest.fail("the model was built"))
    with pytest.raises(ConfigError, match=f"^{said}$"):
        train(TrainConfig(**{**BASE, "data": [spec], "output": str(tmp_path / "run")}))


def test_partly_unlocking_the_resnet_image_tower_is_one_line(tmp_path, shapes):  # noqa: F811
    """open_clip's AssertionError ('partial locking not currently supported for this model')."""
    said, seen = _steps_run(_cfg(tmp_path / "run", lock_image=True, lock_image_unlocked_layers=1), shapes)
    assert said == ("lock_image_unlocked_layers 1: this image tower locks only whole (partial locking not currently "
                    "supported for this model); set lock_image_unlocked_layers to 0")
    assert seen == []


# ------------------------------------------------------------------ 5: a teacher of another width
@pytest.mark.parametrize("loss", ["dino", "vicreg", "protocpc", "barlow-twins", "simreg", "seed", "compress-1q"])
def test_a_teacher_of_another_width_is_refused_before_step_1(loss):
    """dino, vicreg and protocpc failed at step 1 with a raw size mismatch (simreg, seed, compress-1q at step 1)."""
    with pytest.raises(ConfigError) as err:
        fill_loss_options(loss, {}, 16, 24)
    assert str(err.value) == (
        f"loss {loss!r} compares the student's features with the teacher's dimension by dimension, but the student's "
        "width (embed_dim) is 16 and the teacher's 24: give the student embed_dim 24, or distil with rkd or "
        "compress-2q, which take two widths")
    assert fill_loss_options("compress-2q", {}, 16, 24) == {"student_dim": 16, "teacher_dim": 24}  # two widths


def test_a_run_with_a_wider_teacher_stops_before_step_1(tmp_path, shapes):  # noqa: F811
    wide = build_model(TrainConfig(model_config={**TINY, "embed_dim": 24}, seed=7))
    folder = str(save_trained(wide, tmp_path / "teacher" / "model"))
    said, seen = _steps_run(_cfg(tmp_path / "run", loss="dino", teacher=folder), shapes)
    assert said.startswith("loss 'dino' compares the student's features with the teacher's dimension by dimension")
    assert seen == []


# ------------------------------------------------------------------ 6, 10: resumes that were not exact
def test_a_streamed_resume_with_other_workers_is_refused(tmp_path, shapes):  # noqa: F811
    """The samples after the resume were other than those of the run that was not stopped."""
    from clipzoo.datasets import write_shapes

    write_shapes(tmp_path / "s", 16, image_size=32, formats=("csv",))
    cfg = _cfg(tmp_path / "run", data=[str(tmp_path / "s" / "shapes.csv")], steps=1, batch_size=8)
    train(cfg)
    with pytest.raises(ConfigError) as err:
        train(cfg.replace(resume="latest", steps=2, workers=2))
    assert str(err.value) == (
        f"cannot resume from {tmp_path / 'run' / 'checkpoints' / 'step_0000001.pt'}: workers: 0 (checkpoint) vs 2 "
        "(now) — streamed samples come in an order set by the number of DataLoader workers: the run would go on "
        "with other samples than it stopped at; resume with the checkpoint's values, or start a new run")
    _run(_cfg(tmp_path / "mem", steps=1), shapes)  # generated shapes come in one order whatever the workers
    result, _, _ = _run(_cfg(tmp_path / "mem", steps=2, resume="latest", workers=3), shapes)
    assert result.steps == 2


def test_resuming_a_stateful_objective_with_another_teacher_is_refused(tmp_path, shapes):  # noqa: F811
    """CompRess-1q's queue held the first teacher's features; the resume compared the second's with them."""
    folders = [str(save_trained(build_model(TrainConfig(model_config=TINY, seed=s)), tmp_path / f"t{s}" / "model"))
               for s in (7, 8)]
    cfg = _cfg(tmp_path / "run", steps=1, loss="compress-1q", teacher=folders[0], loss_options={"queue_size": 32})
    _run(cfg, shapes)
    with pytest.raises(ConfigError) as err:
        _run(cfg.replace(resume="latest", steps=2, teacher=folders[1]), shapes)
    assert str(err.value) == (
        f"cannot resume from {tmp_path / 'run' / 'checkpoints' / 'step_0000001.pt'}: teacher: {folders[0]!r} "
        f"(checkpoint) vs {folders[1]!r} (now) — its objective's state holds that teacher's features, which another "
        "teacher's would be compared with; resume with the checkpoint's values, or start a new run")


def test_a_checkpoint_missing_an_entry_or_past_the_end_is_one_line(tmp_path, shapes):  # noqa: F811
    """A KeyError traceback; a resume past the end reported "trained 2 steps" with the model at step 4."""
    run = tmp_path / "run"
    _run(_cfg(run, steps=4, save_every=2), shapes)
    step4 = run / "checkpoints" / "step_0000004.pt"
    with pytest.raises(TrainingError) as err:
        _run(_cfg(run, steps=2, resume="latest"), shapes)
    assert str(err.value) == (f"cannot resume from {step4}: it is at step 4, past this run's 2 steps; pass --steps "
                              "above 4, or start a new run")
    state = torch.load(step4, weights_only=False)
    for key in ("scheduler", "rng"):
        torch.save({k: v for k, v in state.items() if k != key}, tmp_path / f"no_{key}.pt")
        with pytest.raises(TrainingError) as err:
            _run(_cfg(tmp_path / "other", steps=6, resume=str(tmp_path / f"no_{key}.pt")), shapes)
        assert str(err.value) == (f"cannot resume from {tmp_path / f'no_{key}.pt'}: the checkpoint lacks {key} "
                                  "(another version wrote it, or it was edited); resume from another step_*.pt, or "
                                  "start a new run")


# ------------------------------------------------------------------ 7, 8: what the log and the errors say
def test_the_logged_lr_is_the_one_the_step_used(tmp_path, shapes):  # noqa: F811
    """It was the next step's (open_clip logs the step's own): 1/4 of the peak at step 1 of a 4-step warm-up."""
    seen = []
    _run(_cfg(tmp_path / "run", steps=3, warmup=4, lr=1e-3), shapes, on_step=lambda s, rec: seen.append(rec["lr"]))
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4])


def test_a_fresh_run_that_diverges_names_no_old_runs_checkpoint(tmp_path, shapes):  # noqa: F811
    """A fresh run in an old run's folder named the old run's checkpoint as "the last good checkpoint"."""
    _run(_cfg(tmp_path / "run", steps=1), shapes)
    with pytest.raises(TrainingError) as err:
        _run(_cfg(tmp_path / "run", steps=2, lr=1e30, logit_scale_init=1e300), shapes)
    assert str(err.value) == ("the loss became nan at step 1: training stopped (lower the lr, add --grad-clip, or use "
                              "fp32)")


# ------------------------------------------------------------------ 11: the minor ones
def test_rows_with_no_caption_are_counted_as_skipped(tmp_path):
    from PIL import Image

    rows = []
    for i in range(10):
        Image.new("RGB", (32, 32), (20 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'' if i == 3 else 'a red square'}\n")
    (tmp_path / "d.csv").write_text("filepath,caption\n" + "".join(rows))
    result = train(_cfg(tmp_path / "run", data=[str(tmp_path / "d.csv")], steps=1, batch_size=8))
    assert result.skipped_images == 1  # it was dropped without being counted


def test_rendering_starts_no_more_processes_than_chunks(monkeypatch):
    """render_shapes started Pool(32) for 3 chunks of 500."""
    from clipzoo.train.data import render_shapes

    sizes, real = [], multiprocessing.context.ForkContext.Pool

    def spy(self, processes=None, *args, **kwargs):
        sizes.append(processes)
        return real(self, processes, *args, **kwargs)

    monkeypatch.setattr(multiprocessing.context.ForkContext, "Pool", spy)
    images, _, _ = render_shapes(1001, image_size=16, workers=32)
    assert sizes == [3] and len(images) == 1001


@pytest.mark.parametrize("args, said", [
    (["--output", ""], "error: --output: output must name a run folder, got ''"),
    (["--stepz", "3"], "error: unknown option --stepz; did you mean --steps?"),
    (["--precision", "fp33"], "error: --precision: precision must be fp32, bf16 or fp16, got 'fp33'"),  # run.json
    (["--seed", "-1"], "error: --seed: seed must be a whole number from 0 to 4294967295, got -1"),
])
def test_a_flags_mistake_is_one_line_naming_the_flag(tmp_path, monkeypatch, args, said):
    monkeypatch.chdir(tmp_path)  # where --output "" wrote
    r = _cli(tmp_path, *args, steps=1)
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == said
    assert not (tmp_path / "model").exists() and not (tmp_path / "checkpoints").exists()


def test_a_full_disk_when_saving_the_model_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """save_trained left `.model.tmp-PID` behind when a write failed."""
    import clipzoo.train.model as model_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    model = build_model(TrainConfig(model_config=TINY))
    monkeypatch.setattr(model_module, "_save_open_clip", full)
    with pytest.raises(ClipzooError, match=rf"^no space left writing {tmp_path / 'model'}; free some space"):
        save_trained(model, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []
