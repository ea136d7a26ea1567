"""The torch training objectives against hostile use (found by probing): gradient accumulation with stateful
objectives, YAML's numbers-as-strings and out-of-range options, ranks with different batch sizes, mixed
precision teachers, mismatched or empty batches — each exact (the unaccumulated step) or one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from clipzoo.train.config import load_config
from clipzoo.train.losses import LOSSES, LossInputError, UnknownLossError, build_loss
from clipzoo.train.phases.step import forward_backward

N, D = 8, 8


class _Model(torch.nn.Module):
    """Image / text linear towers and a logit scale: the smallest model forward_backward can train."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(6, D), torch.nn.Linear(5, D)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x, t):
        return self.a(x), self.b(t), self.logit_scale.exp()


class _NoScaler:
    def scale(self, loss):
        return loss


STATEFUL = {"seed": dict(dim=D, queue_size=16), "compress-1q": dict(dim=D, queue_size=16),
            "compress-2q": dict(student_dim=D, teacher_dim=D, queue_size=16), "dino": dict(dim=D)}


def _steps(name, accum, steps=2):
    """Two optimisation steps' (loss, model gradient) and the objective's state after them."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(N, 6, generator=g), torch.randn(N, 5, generator=g), torch.randn(N, D, generator=g))
               for _ in range(steps)]
    torch.manual_seed(1)
    model, loss_fn = _Model(), build_loss(name, **STATEFUL[name])
    out = []
    for x, t, teacher in batches:
        model.zero_grad()
        loss, _, _, _ = forward_backward(model, loss_fn, x, t, N // accum, accum, torch.device("cpu"), None,
                                         _NoScaler(), targets={"teacher_image_features": teacher})
        out.append((loss, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    return out, {k: v.clone() for k, v in loss_fn.state_dict().items()}, loss_fn


@pytest.mark.parametrize("name", list(STATEFUL))
@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_step_of_a_stateful_objective_equals_the_unaccumulated_one(name, accum):
    """The queue / centre moved once per micro-batch: the queue got the batch twice and the second micro-batch
    read its own teacher features as anchors (seed: loss 4.17 → 4.35, gradients off by 0.36)."""
    ref, ref_state, _ = _steps(name, 1)
    got, state, loss_fn = _steps(name, accum)
    for (loss, grad), (ref_loss, ref_grad) in zip(got, ref):
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert state.keys() == ref_state.keys()
    for k in ref_state:
        torch.testing.assert_close(state[k], ref_state[k], rtol=1e-6, atol=1e-7)
    assert loss_fn.update_state is True  # the trainer's later calls update the state again


def test_accumulation_enqueues_the_batch_once():
    _, state, _ = _steps("seed", 2, steps=1)
    assert int(state["queue.ptr"]) == N  # a batch of 8 into a queue of 16: the pointer at 8, not wrapped to 0


def test_yaml_loss_option_numbers_reach_the_objective_as_numbers(tmp_path):
    """PyYAML reads `lambd: 5e-3` as the string '5e-3': a TypeError traceback at the first step."""
    pytest.importorskip("yaml")
    (tmp_path / "run.yaml").write_text("model: tiny\nloss: barlow-twins\nloss_options:\n  lambd: 5e-3\n  eps: 1e-5\n")
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.loss_options == {"lambd": "5e-3", "eps": "1e-5"}
    loss_fn = build_loss(cfg.loss, **cfg.loss_options)
    assert (loss_fn.lambd, loss_fn.eps) == (0.005, 1e-5)
    g = torch.Generator().manual_seed(0)
    out = loss_fn(torch.randn(N, D, generator=g), torch.randn(N, D, generator=g))
    assert torch.isfinite(out["loss"])
    seed = build_loss("seed", dim="8", queue_size="16.0", teacher_temperature="0.02")
    assert (seed.queue.size, seed.teacher_temperature) == (16, 0.02)


@pytest.mark.parametrize("name, options, said", [
    ("barlow-twins", {"lambd": "abc"}, "loss 'barlow-twins': loss_options.lambd must be a number, got 'abc'"),
    ("seed", {"dim": 8, "queue_size": 1.5}, "loss 'seed': loss_options.queue_size must be a whole number, got 1.5"),
    ("infonce", {"max_logit_scale": [100]}, "loss 'infonce': loss_options.max_logit_scale must be a number, "
                                            "got [100]"),
    ("infonce", {"local_loss": "no"}, "loss 'infonce': loss_options.local_loss must be true or false, got 'no'"),
    ("simreg", {"normalize": "no"}, "loss 'simreg': loss_options.normalize must be true or false, got 'no'"),
    ("infonce", {"learn_logit_scale": True, "init_temperature": 0},  # ZeroDivisionError
     "InfoNCELoss: init_temperature must be a positive number, got 0.0"),
    ("infonce", {"init_temperature": -1}, "InfoNCELoss: init_temperature must be a positive number, got -1.0"),
    ("infonce", {"max_logit_scale": 0}, "InfoNCELoss: max_logit_scale must be a positive number, got 0.0"),
    ("siglip", {"learn_logit_scale": True, "init_logit_scale": 0},  # math domain error
     "SigLIPLoss: init_logit_scale must be a positive number, got 0.0"),
    ("siglip", {"max_logit_scale": -5}, "SigLIPLoss: max_logit_scale must be a positive number, got -5.0"),
    ("seed", {"dim": 8, "teacher_temperature": 0},  # a NaN loss
     "SEEDLoss: teacher_temperature must be a positive number, got 0.0"),
    ("seed", {"dim": 8, "modality": "audio"}, "SEEDLoss: modality must be 'image' or 'text', got 'audio'"),
    ("compress-1q", {"dim": 8, "student_temperature": float("nan")},
     "CompRess1qLoss: student_temperature must be a positive number, got nan"),
    ("dino", {"dim": 8, "teacher_temperature": 0}, "DINOLoss: teacher_temperature must be a positive number, got 0.0"),
    ("dino", {"dim": 8, "student_temperature": -0.1},
     "DINOLoss: student_temperature must be a positive number, got -0.1"),
    ("dino", {"dim": 8, "center_momentum": 5}, "DINOLoss: center_momentum must be a number between 0 and 1, got 5.0"),
    ("protoclip", {"dim": 8, "num_prototypes": 0},  # crashed later, in k-means
     "ProtoCLIPLoss: num_prototypes must be a whole number of at least 1, got 0"),
    ("protocpc", {"teacher_temperature": -1}, "ProtoCPCLoss: teacher_temperature must be a positive number, got -1.0"),
    ("vicreg", {"eps": 0}, "VICRegLoss: eps must be a positive number, got 0.0"),
    ("rkd", {"angle_weight": -50}, "RKDLoss: angle_weight must be a number of 0 or more, got -50.0"),
])
def test_bad_loss_options_are_one_line_at_build_time(name, options, said):
    with pytest.raises(LossInputError) as err:
        build_loss(name, **options)
    assert str(err.value) == said


def test_a_number_written_as_a_string_is_read_as_that_number():
    assert build_loss("infonce", max_logit_scale="100").max_logit_scale == 100.0  # was a TypeError at the clamp


def test_a_loss_name_that_is_not_a_string_is_one_line():
    with pytest.raises(UnknownLossError, match=r"^Unknown loss None\. Valid names: infonce, siglip, .*\.$"):
        build_loss(None)


def test_the_unknown_loss_hint_knows_the_clip_alias_and_stays_quiet_when_nothing_is_near():
    with pytest.raises(UnknownLossError, match=r"^Unknown loss 'clipp'\. Did you mean 'clip'\? Valid names: "):
        build_loss("clipp")  # suggested 'protoclip'
    with pytest.raises(UnknownLossError) as err:
        build_loss("zzzz")
    assert str(err.value) == f"Unknown loss 'zzzz'. Valid names: {', '.join(LOSSES)} (clip = infonce)."


DISTILLING = {"seed": dict(dim=D, queue_size=16), "barlow-twins": {}, "compress-1q": dict(dim=D, queue_size=16),
              "compress-2q": dict(student_dim=D, teacher_dim=D, queue_size=16), "dino": dict(dim=D), "protocpc": {},
              "rkd": {}, "simreg": {}, "vicreg": {}}


@pytest.mark.parametrize("name", list(DISTILLING))
def test_a_float64_teacher_with_a_float32_student_computes_in_float64(name):
    """seed and barlow-twins raised a raw dtype RuntimeError; the others promoted."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g, dtype=torch.float64)
    mixed = build_loss(name, **DISTILLING[name])(student, teacher_image_features=teacher)["loss"]
    wide = build_loss(name, **DISTILLING[name])(student.double(), teacher_image_features=teacher)["loss"]
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(mixed, wide, rtol=1e-12, atol=1e-12)


def test_image_and_text_batches_of_different_sizes_are_one_line():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(4, D, generator=g), torch.randn(3, D, generator=g)
    for name, cls in (("infonce", "InfoNCELoss"), ("siglip", "SigLIPLoss")):  # infonce: an IndexError
        with pytest.raises(LossInputError) as err:
            build_loss(name)(img, txt, logit_scale=10.0)
        assert str(err.value) == (f"{cls} pairs image and text features one to one: they need the same (batch, "
                                  "width) shape, got image (4, 8) and text (3, 8)")


@pytest.mark.parametrize("name", ["infonce", "siglip"])
def test_an_empty_batch_is_refused_not_a_silent_nan(name):
    with pytest.raises(LossInputError) as err:
        build_loss(name)(torch.zeros(0, D), torch.zeros(0, D), logit_scale=10.0)
    cls = type(build_loss(name)).__name__
    assert str(err.value) == (f"{cls}: image_features holds no rows (shape (0, 8)); give it a batch of at least one "
                              "feature vector")


WORKER = textwrap.dedent('''
    import os, socket, sys
    import torch, torch.distributed as dist
    from clipzoo.train.losses import LossInputError, build_loss

    def worker(rank, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=2)
        n = 3 + rank  # rank 0 holds 3 samples, rank 1 holds 4
        x, y = torch.randn(n, 4), torch.randn(n, 4)
        said = []
        calls = {"infonce": lambda: build_loss("infonce")(x, y, logit_scale=10.0),
                 "infonce-grad": lambda: build_loss("infonce", gather_with_grad=True)(x, y, logit_scale=10.0),
                 "siglip": lambda: build_loss("siglip")(x, y, logit_scale=10.0),
                 "seed": lambda: build_loss("seed", dim=4, queue_size=8)(x, teacher_image_features=y)}
        for name, call in calls.items():
            try:
                call()
                said.append(name + ": no error")
            except LossInputError as err:
                said.append(name + ": " + str(err))
        dist.destroy_process_group()
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write("\\n".join(said))

    if __name__ == "__main__":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(worker, args=(port, sys.argv[1]), nprocs=2, join=True)
''')


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="gloo unavailable")
def test_ranks_with_different_batch_sizes_get_one_line_not_an_abort(tmp_path):
    """gloo aborted the process: SIGABRT "Received data size doesn't match expected size"."""
    (tmp_path / "worker.py").write_text(WORKER)
    done = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    said = ("the ranks hold different local batch sizes [3, 4] (rank order); every rank needs the same number of "
            "samples per step: make the global batch a multiple of the world size and drop the last partial batch")
    for rank in (0, 1):
        lines = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        assert lines == [f"{name}: {said}" for name in ("infonce", "infonce-grad", "siglip", "seed")]


def test_numpy_numbers_from_a_sweep_are_options_and_huge_ones_one_line():
    """np.float32(0.1) / np.int64(16) (a sweep's values) loaded before the range checks and were refused by them;
    10**400 was an OverflowError traceback."""
    import numpy as np

    assert build_loss("dino", dim=8, student_temperature=np.float32(0.1)).student_temperature == pytest.approx(0.1)
    assert build_loss("seed", dim=8, queue_size=np.int64(16)).queue.queue.shape == (16, 8)
    assert LOSSES["dino"](dim=8, student_temperature=np.int64(1)).student_temperature == 1
    with pytest.raises(LossInputError, match=r"^loss 'dino': loss_options\.student_temperature must be a number"):
        build_loss("dino", dim=8, student_temperature=10 ** 400)
    with pytest.raises(LossInputError, match=r"^DINOLoss: student_temperature must be a positive number"):
        LOSSES["dino"](dim=8, student_temperature=10 ** 400)
