"""Training: config files and errors, a step lowers the loss, exact resume, locked towers, trained folder
loads back, streamed CSV data with bad images, non-finite loss, and the CLI."""
from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.train.config import ConfigError, TrainConfig, load_config
from clipzoo.train.data import MemoryData, render_shapes
from clipzoo.train.engine import TrainingError, comparator_of, train
from clipzoo.train.model import build_model

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module")
def shapes():
    return render_shapes(96, seed=0, image_size=32, workers=1)


def _cfg(tmp_path, **kw):
    base = dict(model_config=TINY, batch_size=16, lr=1e-3, warmup=2, steps=6, output=str(tmp_path / "run"),
                progress=False, tensorboard=False, log_every=1, workers=0)
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, shapes, on_step=None):
    model = build_model(cfg)
    images, captions, _ = shapes
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      seed=cfg.seed)
    losses = {}

    def record(step, rec):
        losses[step] = rec["loss"]
        if on_step:
            on_step(step, rec)

    result = train(cfg, data=data, model=model, on_step=record)
    return result, losses, model


def test_unknown_config_keys_name_the_nearest_valid_key(tmp_path):
    (tmp_path / "run.toml").write_text('[train]\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match=r"run.toml: unknown key 'learning_rate'; did you mean 'lr'\?"):
        load_config(tmp_path / "run.toml")
    (tmp_path / "run.toml").write_text('batch_sise = 4\n')
    with pytest.raises(ConfigError, match=r"unknown key 'batch_sise'; did you mean 'batch_size'\?"):
        load_config(tmp_path / "run.toml")
    (tmp_path / "run.toml").write_text('lr = 0.1\nsteps = 7\n')
    cfg = load_config(tmp_path / "run.toml", {"steps": 9}, TrainConfig(lr=0.5, batch_size=8))
    assert (cfg.lr, cfg.steps, cfg.batch_size) == (0.1, 9, 8)  # recipe < file < flags
    with pytest.raises(ConfigError, match="batch_size 10 is not divisible by grad_accum 4"):
        TrainConfig().replace(batch_size=10, grad_accum=4)


def test_training_lowers_the_loss_and_the_folder_loads_back(tmp_path, shapes):
    cfg = _cfg(tmp_path, steps=12, lr=3e-3)
    result, losses, model = _run(cfg, shapes)
    assert losses[12] < losses[1]
    loaded = clipzoo.load(str(result.model_dir))
    ours = comparator_of(model)
    model.module.eval()
    images = [torch.rand(3, 40, 40) for _ in range(2)]
    from torchvision.transforms.functional import to_pil_image

    pil = [to_pil_image(x) for x in images]
    assert torch.allclose(loaded.encode_image(pil), ours.encode_image(pil), atol=1e-6)
    assert torch.allclose(loaded.encode_text(["a red circle", "a star"]), ours.encode_text(["a red circle", "a star"]),
                          atol=1e-6)
    info = json.loads((result.model_dir / "clipzoo_train.json").read_text())
    assert info["steps"] == 12


def test_resume_continues_exactly(tmp_path, shapes):
    full = _cfg(tmp_path / "a", steps=8, save_every=4)
    _, expected, _ = _run(full, shapes)

    class Stop(Exception):
        pass

    def stop(step, rec):
        if step == 5:  # after the step-4 checkpoint: step 5 is lost, as in a crash
            raise Stop

    cut = _cfg(tmp_path / "b", steps=8, save_every=4)
    with pytest.raises(Stop):
        _run(cut, shapes, on_step=stop)
    _, resumed, _ = _run(cut.replace(resume="latest"), shapes)
    assert sorted(resumed) == [5, 6, 7, 8]
    for step in resumed:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step


def test_resume_with_another_model_is_refused(tmp_path, shapes):
    cfg = _cfg(tmp_path, steps=2)
    _run(cfg, shapes)
    other = {**TINY, "embed_dim": 24}
    with pytest.raises(ConfigError, match=r"cannot resume from .*step_0000002.pt: the model differs — "
                                          r"model_config.embed_dim: 16 \(checkpoint\) vs 24 \(now\)"):
        _run(cfg.replace(model_config=other, resume="latest", steps=4), shapes)


@pytest.mark.parametrize("change, said", [
    ({"batch_size": 8}, "batch_size: 16 (checkpoint) vs 8 (now)"),
    ({"loss": "siglip"}, "loss: 'infonce' (checkpoint) vs 'siglip' (now)"),
])
def test_resume_with_another_batch_size_or_loss_is_refused(tmp_path, shapes, change, said):
    """The data position counts batches of the checkpoint's size: a resume with another batch size skipped or
    replayed samples without a word; another loss dropped the objective's state."""
    cfg = _cfg(tmp_path, steps=2)
    _run(cfg, shapes)
    with pytest.raises(ConfigError, match=rf"^cannot resume from .*step_0000002.pt: {re.escape(said)} — its data "
                                          "position counts batches of its batch size"):
        _run(cfg.replace(resume="latest", steps=4, **change), shapes)


def test_locked_image_tower_stays_bit_identical(tmp_path, shapes):
    cfg = _cfg(tmp_path, steps=3, lock_image=True)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.module.visual.state_dict().items()}
    images, captions, _ = shapes
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"])
    text_before = model.module.token_embedding.weight.clone()
    train(cfg, data=data, model=model)
    for k, v in model.module.visual.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.module.token_embedding.weight, text_before)


def test_grad_accumulation_equals_the_full_batch(tmp_path, shapes):
    # a ViT image tower: BatchNorm (ModifiedResNet) would see micro-batch statistics, as in open_clip
    vit = {**TINY, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}}
    _, full, _ = _run(_cfg(tmp_path / "a", steps=3, model_config=vit), shapes)
    _, accum, _ = _run(_cfg(tmp_path / "b", steps=3, grad_accum=4, model_config=vit), shapes)
    for step in full:
        assert accum[step] == pytest.approx(full[step], abs=1e-4)


def test_non_finite_loss_stops_naming_the_step(tmp_path, shapes):
    cfg = _cfg(tmp_path, steps=6, lr=1e12, warmup=0, save_every=1)
    with pytest.raises(TrainingError, match=r"the loss became nan at step \d+: training stopped; the last good "
                                            r"checkpoint is .*step_\d+\.pt"):
        _run(cfg, shapes)


def test_streamed_csv_counts_unreadable_images(tmp_path):
    from clipzoo.datasets import write_shapes

    write_shapes(tmp_path / "s", 40, image_size=32, formats=("csv",))
    bad = sorted((tmp_path / "s" / "images").rglob("*.png"))[0]
    bad.write_bytes(b"not an image")
    cfg = _cfg(tmp_path, data=[str(tmp_path / "s" / "shapes.csv")], steps=2, batch_size=8)
    result = train(cfg)
    assert result.skipped_images == 1
    assert (result.model_dir / "open_clip_model.safetensors").exists()


def test_cli_train_and_its_errors(tmp_path):
    runner = CliRunner()
    (tmp_path / "run.toml").write_text(json.dumps({}).replace("{}", "") + 'lerning_rate = 1\n')
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "run.toml")])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {tmp_path / 'run.toml'}: unknown key 'lerning_rate'")
    r = runner.invoke(app, ["train", "--recipe", "tiny-shape"])
    assert r.exit_code == 2 and "unknown recipe 'tiny-shape'; did you mean 'tiny-shapes'?" in r.stderr
    out = tmp_path / "cli"
    (tmp_path / "m.json").write_text(json.dumps({"model_config": TINY}))
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "m.json"), "--data", "shapes:64", "--steps", "2",
                            "--batch-size", "16", "--output", str(out), "--no-progress", "--workers", "1"])
    assert r.exit_code == 0, r.stderr
    assert "trained 2 steps; model in" in r.stderr
    assert clipzoo.load(str(out / "model")).embed_dim == 16


@pytest.mark.parametrize("loss", ["infonce", "siglip"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, loss):
    """torchrun --nproc_per_node 2 (gloo) vs one process: per-step losses within 1e-4."""
    import os
    import socket
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(__file__), "ddp_train_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one.json"
    subprocess.run([sys.executable, worker, str(one), loss], check=True, env=env, timeout=300)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port), worker, str(two), loss], check=True, env=env,
                   timeout=300, capture_output=True)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert sorted(a) == sorted(b) == ["1", "2", "3", "4", "5"]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4), step


def test_two_processes_train_towers_with_adapters_and_a_teacher(tmp_path):
    """torchrun --nproc_per_node 2 (gloo): a compositional model (DINO image head) with LoRA on both towers,
    distilled from a teacher with the DINO loss — both ranks end with identical weights, and the saved folder
    loads through clipzoo.load."""
    import os
    import socket
    import subprocess
    import sys

    from clipzoo.train.model import save_trained

    pytest.importorskip("peft")
    teacher = save_trained(build_model(TrainConfig(model_config=TINY, seed=7)), tmp_path / "teacher")
    worker = os.path.join(os.path.dirname(__file__), "ddp_train_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                        "127.0.0.1", "--master_port", str(port), worker, str(out), "dino", "composite", str(teacher)],
                       env=env, timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = json.loads(out.read_text())
    assert sorted(losses) == ["1", "2", "3", "4", "5"]
    a, b = (torch.load(f"{out}.rank{i}.pt", weights_only=True) for i in (0, 1))
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    loaded = clipzoo.load(str(tmp_path / "two.json.run" / "model"))
    assert loaded.card.backend == "composite" and loaded.embed_dim == 16
    assert loaded.encode_text(["a red circle"]).shape == (1, 16)


def test_trimmed_text_padding_gives_the_same_loss_and_gradients():
    """Training runs the text transformer only up to a batch's longest caption: same loss and gradients as
    open_clip's full-context encode_text, and a deep copy stays bound to its own weights."""
    import copy

    import open_clip

    from clipzoo.testing.tiny import TINY_CONFIG, tiny_model
    from clipzoo.train.engine import trim_text_padding

    full, trimmed = tiny_model(seed=1).train(), tiny_model(seed=1).train()
    assert trim_text_padding(trimmed)
    tok = open_clip.SimpleTokenizer(context_length=TINY_CONFIG["text_cfg"]["context_length"])
    tokens = tok(["a red circle", "two blue squares on the left", "a tiny green star"])
    images = torch.randn(3, 3, 32, 32)
    loss_fn = open_clip.ClipLoss()
    grads = []
    for m in (full, trimmed):
        out = m(images, tokens)
        loss = loss_fn(out[0], out[1], out[2])
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5), name
    copy_ = copy.deepcopy(trimmed)
    with torch.no_grad():
        copy_.token_embedding.weight.zero_()
    assert not torch.allclose(copy_.encode_text(tokens), trimmed.encode_text(tokens))
    assert not trim_text_padding(open_clip.CLIP(**{**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"],
                                                                                "no_causal_mask": True,
                                                                                "pool_type": "last"}}))
