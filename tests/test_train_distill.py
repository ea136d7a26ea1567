"""Distillation: a frozen teacher (another image size, normalisation and tokenizer) supervises the student
through the objectives that read teacher features; a missing teacher is a clear config error."""
from __future__ import annotations

import pytest
import torch

from clipzoo.train.config import ConfigError, TrainConfig, from_mapping
from clipzoo.train.data import MemoryData, render_shapes
from clipzoo.train.distill import Teacher, fill_loss_options
from clipzoo.train.engine import train
from clipzoo.train.model import build_model, save_trained

STUDENT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
           "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
# the teacher sees 48 px images and a longer context
TEACHER = {"embed_dim": 16, "vision_cfg": {"image_size": 48, "layers": [1, 1, 1, 1], "width": 8},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
MISSING = ("config: loss 'simreg' distils from a teacher: set the `teacher` key (a registry spec or a trained "
           "model folder, e.g. teacher = \"runs/big/model\" in the config file)")


@pytest.fixture(scope="module")
def shapes():
    return render_shapes(16, seed=0, image_size=48, workers=1)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    model = build_model(TrainConfig(model_config=TEACHER, seed=7))
    return str(save_trained(model, tmp_path_factory.mktemp("teacher") / "model"))


def _cfg(tmp_path, **kw):
    base = dict(model_config=STUDENT, batch_size=16, lr=3e-3, warmup=0, steps=5, output=str(tmp_path / "run"),
                progress=False, tensorboard=False, log_every=1, workers=0, schedule="constant")
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, shapes, teacher=None):
    model = build_model(cfg)
    images, captions, _ = shapes
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      image_size=model.preprocess_cfg["size"][0], seed=cfg.seed)
    losses, parts = {}, {}

    def record(step, rec):
        losses[step] = rec["loss"]
        parts[step] = rec

    train(cfg, data=data, model=model, on_step=record, teacher=teacher)
    return losses, parts, data


def test_a_distilling_loss_without_a_teacher_is_a_config_error(tmp_path, shapes):
    with pytest.raises(ConfigError) as err:
        from_mapping({"loss": "simreg", "model_config": STUDENT})
    assert str(err.value) == MISSING
    with pytest.raises(ConfigError) as err:  # a config built directly is checked by the trainer
        _run(_cfg(tmp_path, loss="simreg"), shapes)
    assert str(err.value) == MISSING
    from_mapping({"loss": "vicreg", "model_config": STUDENT})  # falls back to image–text pairs: no teacher needed


def test_simreg_from_a_frozen_teacher_lowers_the_loss_and_leaves_it_untouched(tmp_path, shapes, teacher_dir):
    import clipzoo

    comparator = clipzoo.load(teacher_dir)
    before = {k: v.clone() for k, v in comparator.state_dict().items()}
    losses, parts, data = _run(_cfg(tmp_path, loss="simreg", steps=4), shapes, teacher=comparator)
    assert losses[4] < losses[1]
    assert "loss/loss_image" in parts[1] and "loss/loss_text" in parts[1]  # both modalities distilled
    after = comparator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in comparator.parameters())
    # the captions were re-tokenised with the teacher's tokenizer (its context is 32, the student's 24)
    assert data.teacher_tokens.shape[-1] == 32 and data.tokens.shape[-1] == 24


def test_teacher_from_the_config_key_and_a_stateful_objective(tmp_path, shapes, teacher_dir):
    # dino needs the width of its centre: filled in from the teacher
    assert fill_loss_options("dino", {}, 16, 16)["dim"] == 16
    assert fill_loss_options("compress-2q", {"queue_size": 8}, 16, 32) == {"queue_size": 8, "student_dim": 16,
                                                                           "teacher_dim": 32}
    losses, _, _ = _run(_cfg(tmp_path, loss="compress-1q", teacher=teacher_dir, steps=2,
                             loss_options={"queue_size": 32}), shapes)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_teacher_pixels_are_the_students_images_in_the_teachers_preprocessing(teacher_dir):
    import clipzoo

    comparator = clipzoo.load(teacher_dir)
    s_mean, s_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    teacher = Teacher(comparator, s_mean, s_std)
    raw = torch.rand(2, 3, 48, 48)
    student = (raw - torch.tensor(s_mean).view(1, 3, 1, 1)) / torch.tensor(s_std).view(1, 3, 1, 1)
    t_mean = torch.tensor(comparator.preprocess_config["mean"]).view(1, 3, 1, 1)
    t_std = torch.tensor(comparator.preprocess_config["std"]).view(1, 3, 1, 1)
    assert torch.allclose(teacher.pixels(student), (raw - t_mean) / t_std, atol=1e-5)  # same size: exact
    small = teacher.pixels(student[..., :32, :32])
    assert small.shape == (2, 3, 48, 48)  # resized to the teacher's input
