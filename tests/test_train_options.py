"""Training options beyond the basics: the --teacher / --towers / --adapters flags, fsspec (remote) run folders
and resume, DINO heads' raw prototype scores reaching the DINO loss, and ProtoCLIP's episodic prototype refresh."""
from __future__ import annotations

import json
import uuid

import pytest
import torch
from typer.testing import CliRunner

import clipzoo
from clipzoo.cli import app
from clipzoo.train.config import ConfigError, TrainConfig, table_option
from clipzoo.train.data import MemoryData, render_shapes
from clipzoo.train.engine import train
from clipzoo.train.model import build_model, save_trained
from clipzoo.train.storage import torch_load_url

pytest.importorskip("peft")

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
VIT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
       "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
# a compositional model from open_clip towers (no download, no HF folder) with a DINO image head
DINO_TOWERS = {"image": {"source": "open_clip", "config": VIT}, "text": {"source": "open_clip", "config": VIT},
               "image_head": {"kind": "dino", "layers": 2, "hidden": 32, "bottleneck": 8}, "text_head": "linear",
               "embed_dim": 16}


@pytest.fixture(scope="module")
def shapes():
    return render_shapes(48, seed=0, image_size=32, workers=1)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    model = build_model(TrainConfig(model_config=TINY, seed=7))
    return str(save_trained(model, tmp_path_factory.mktemp("teacher") / "model"))


def _cfg(output, **kw):
    base = dict(model_config=TINY, batch_size=16, lr=3e-3, warmup=0, steps=4, output=str(output), progress=False,
                tensorboard=False, log_every=1, workers=0, schedule="constant")
    base.update(kw)
    if "towers" in kw:
        base.pop("model_config")
    return TrainConfig(**base)


def _run(cfg, shapes, on_step=None, teacher=None):
    model = build_model(cfg)
    images, captions, _ = shapes
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      image_size=model.preprocess_cfg["size"][0], seed=cfg.seed)
    losses = {}

    def record(step, rec):
        losses[step] = rec["loss"]
        if on_step:
            on_step(step, rec)

    result = train(cfg, data=data, model=model, on_step=record, teacher=teacher)
    return result, losses, model


@pytest.fixture
def captured(monkeypatch):
    """The objective the trainer builds (build_loss is looked up at each train() call)."""
    import clipzoo.train.losses as losses

    seen = []
    real = losses.build_loss

    def spy(name, **kw):
        seen.append(real(name, **kw))
        return seen[-1]

    monkeypatch.setattr(losses, "build_loss", spy)
    return seen


# ------------------------------------------------------------------ CLI flags
def test_table_option_reads_json_or_a_file(tmp_path):
    assert table_option('{"image": {"method": "lora"}}', "--adapters", "adapters") == {"image": {"method": "lora"}}
    (tmp_path / "t.toml").write_text('[towers]\nembed_dim = 8\n[towers.image]\nsource = "timm"\n')
    assert table_option(str(tmp_path / "t.toml"), "--towers", "towers") == {"embed_dim": 8,
                                                                             "image": {"source": "timm"}}
    (tmp_path / "a.json").write_text(json.dumps({"text": {"method": "ia3"}}))  # the table itself
    assert table_option(str(tmp_path / "a.json"), "--adapters", "adapters") == {"text": {"method": "ia3"}}
    with pytest.raises(ConfigError, match=r"^--towers: no such file 'nope.json'; give a JSON object"):
        table_option("nope.json", "--towers", "towers")
    with pytest.raises(ConfigError, match=r"^--adapters: expected a JSON object, got list"):
        table_option("[1]", "--adapters", "adapters")


@pytest.mark.parametrize("args,message", [
    (["--towers", "{image: 1}"], "error: --towers: not valid JSON (Expecting property name enclosed in double "
                                 "quotes at column 2); give a JSON object, e.g. --towers '{"),
    (["--towers", '{"image": {"source": "timm", "nme": "x"}, "text": {"source": "hf", "name": "y"}}'],
     "error: --towers: towers.image: unknown key 'nme'; did you mean 'name'?"),
    (["--adapters", '{"image": {"method": "lora", "rr": 4}}'],
     "error: --adapters: adapters.image: unknown lora option 'rr'; did you mean 'r'?"),
    (["--adapters", '{"vision": {"method": "lora"}}'],
     "error: --adapters: adapters: unknown tower 'vision'; use 'image' and/or 'text'"),
    (["--adapters", '{"image": {"method": "lorra"}}'],
     "error: --adapters: adapters.image: unknown peft method 'lorra'; did you mean 'lora'?"),
])
def test_cli_table_flags_errors_name_the_flag(args, message):
    r = CliRunner().invoke(app, ["train", "--data", "shapes:32", *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_teacher_towers_and_adapters_override_the_config_file(tmp_path, teacher_dir):
    (tmp_path / "run.json").write_text(json.dumps({"model_config": TINY, "loss": "infonce"}))
    towers = {**DINO_TOWERS, "image_head": {"kind": "mlp", "layers": 2}}
    (tmp_path / "towers.json").write_text(json.dumps({"towers": towers}))
    adapters = {"text": {"method": "lora", "r": 2, "target_modules": ["c_fc"]}}
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "run.json"), "--data", "shapes:32",
                                 "--steps", "2", "--batch-size", "16", "--output", str(out), "--no-progress",
                                 "--workers", "1", "--loss", "simreg", "--teacher", teacher_dir,
                                 "--towers", str(tmp_path / "towers.json"), "--adapters", json.dumps(adapters)])
    assert r.exit_code == 0, r.stderr
    info = json.loads((out / "model" / "clipzoo_train.json").read_text())["config"]
    assert info["teacher"] == teacher_dir and info["model_config"] is None
    assert info["towers"]["image"]["source"] == "open_clip" and info["adapters"] == adapters
    loaded = clipzoo.load(str(out / "model"))
    assert loaded.card.backend == "composite" and loaded.embed_dim == 16


# ------------------------------------------------------------------ remote (fsspec) run folders
class Stop(Exception):
    pass


def _stop_at(n):
    def stop(step, rec):
        if step == n:
            raise Stop
    return stop


def _cut_and_resume(shapes, output, **kw):
    cfg = _cfg(output, steps=4, save_every=2, **kw)
    with pytest.raises(Stop):
        _run(cfg, shapes, on_step=_stop_at(3))
    return _run(cfg.replace(resume="latest"), shapes)


def test_memory_filesystem_run_resumes_like_a_local_run(tmp_path, shapes):
    import fsspec

    _, local_losses, _ = _cut_and_resume(shapes, tmp_path / "local")
    url = f"memory://clipzoo-test-{uuid.uuid4().hex}/run"
    result, remote_losses, _ = _cut_and_resume(shapes, url)
    assert sorted(remote_losses) == [3, 4] and remote_losses == pytest.approx(local_losses, abs=0)
    fs = fsspec.filesystem("memory")
    root = url[len("memory://"):]
    assert fs.cat(f"{root}/checkpoints/latest").decode().strip() == "step_0000004.pt"
    assert not [p for p in fs.find(root) if ".tmp-" in p]  # temporary names were moved away
    a = torch.load(tmp_path / "local" / "checkpoints" / "step_0000004.pt", weights_only=True)
    b = torch_load_url(f"{url}/checkpoints/step_0000004.pt")
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    # the resumed metrics log reads as one run; the model folder was uploaded
    lines = [json.loads(x) for x in fs.cat(f"{root}/metrics.jsonl").decode().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert result.model_dir == f"{url}/model" and fs.exists(f"{root}/model/open_clip_model.safetensors")
    # an explicit remote checkpoint path resumes too
    _, again, _ = _run(_cfg(tmp_path / "x", steps=4, resume=f"{url}/checkpoints/step_0000002.pt"), shapes)
    assert again == pytest.approx({k: local_losses[k] for k in (3, 4)}, abs=0)


def test_an_output_model_folder_clipzoo_did_not_write_is_refused_before_training(tmp_path, shapes):
    """OUTPUT/model is replaced whole when the run ends: someone else's folder there is an error at the start,
    untouched (local and remote); a previous run's OUTPUT trains again; a file as OUTPUT is one line too."""
    import fsspec

    photos = tmp_path / "photos"
    (photos / "model").mkdir(parents=True)
    (photos / "model" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        _run(_cfg(photos), shapes)
    assert str(err.value) == (f"--output {photos}: its model/ is not a model clipzoo trained (no clipzoo_train.json "
                              "in it), and the run replaces that folder at its end; pass another --output, or move "
                              "it away")
    assert (photos / "model" / "notes.txt").read_text() == "mine" and [p.name for p in photos.iterdir()] == ["model"]
    url = f"memory://clipzoo-test-{uuid.uuid4().hex}/run"
    fsspec.filesystem("memory").pipe(f"{url[len('memory://'):]}/model/notes.txt", b"mine")
    with pytest.raises(ConfigError, match=r"^--output memory://.*: its model/ is not a model clipzoo trained"):
        _run(_cfg(url), shapes)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"^--output .*file is a file; pass a folder \(new, empty, or a previous "
                                          r"run's\)$"):
        _run(_cfg(tmp_path / "file"), shapes)
    run = tmp_path / "run"
    for steps in (1, 2):
        result, losses, _ = _run(_cfg(run, steps=steps), shapes)
        assert sorted(losses) == list(range(1, steps + 1))
        assert json.loads((run / "model" / "clipzoo_train.json").read_text())["steps"] == steps


def test_file_urls_and_a_separate_checkpoint_dir_stay_local(tmp_path, shapes):
    cfg = _cfg(f"file://{tmp_path / 'run'}", steps=2, checkpoint_dir=str(tmp_path / "ck"),
               metrics_log=f"memory://clipzoo-test-{uuid.uuid4().hex}/m.jsonl")
    result, _, _ = _run(cfg, shapes)
    assert (tmp_path / "ck" / "step_0000002.pt").exists() and (tmp_path / "ck" / "latest").exists()
    assert (tmp_path / "run" / "model" / "open_clip_model.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()
    import fsspec

    lines = fsspec.filesystem("memory").cat(cfg.metrics_log[len("memory://"):]).decode().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


# ------------------------------------------------------------------ DINO head's prototype scores
def test_dino_loss_gets_the_dino_heads_raw_scores_and_trains_its_prototypes(tmp_path, shapes, teacher_dir, captured):
    cfg = _cfg(tmp_path / "dino", towers=DINO_TOWERS, loss="dino", teacher=teacher_dir, steps=6, lr=1e-2)
    model = build_model(cfg)
    head = model.module.image_head
    grads, inputs = [], []
    head.last.parametrizations.weight.original1.register_hook(lambda g: grads.append(g.norm().item()))

    def on_step(step, rec):
        if step == 1:
            captured[-1].register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))

    images, captions, _ = shapes
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      image_size=32, seed=0)
    losses = {}
    train(cfg, data=data, model=model, on_step=lambda s, r: (losses.__setitem__(s, r["loss"]), on_step(s, r)))
    assert len(grads) == 6 and all(g > 0 for g in grads)  # the prototypes get a gradient every step
    assert losses[6] < losses[1]
    norms = inputs[0].norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)  # not L2-normalised embeddings
    # scores are cosines of the normalised bottleneck with unit-norm prototypes: within [-1, 1]
    assert inputs[0].abs().max() <= 1 + 1e-5


def test_contrastive_losses_keep_normalised_embeddings_with_a_dino_head(tmp_path, shapes, captured):
    cfg = _cfg(tmp_path / "c", towers=DINO_TOWERS, loss="infonce", steps=1)
    inputs = []
    model = build_model(cfg)
    real_forward = model.module.forward

    def forward(*a, **k):
        out = real_forward(*a, **k)
        inputs.append(out["image_features"].detach())
        return out

    model.module.forward = forward
    images, captions, _ = shapes
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      image_size=32)
    train(cfg, data=data, model=model)
    assert not model.module.raw_head_scores
    assert torch.allclose(inputs[0].norm(dim=1), torch.ones(16), atol=1e-5)


# ------------------------------------------------------------------ ProtoCLIP episodes
def test_protoclip_prototypes_refresh_every_n_steps(tmp_path, shapes, captured):
    snaps = {}
    cfg = _cfg(tmp_path / "p", loss="protoclip", loss_options={"num_prototypes": 4}, proto_refresh_every=3, steps=7)
    _, losses, _ = _run(cfg, shapes, on_step=lambda s, r: snaps.__setitem__(
        s, (captured[-1].image_protos_in_text.clone(), int(captured[-1].episode))))
    changed = [s for s in range(2, 8) if not torch.equal(snaps[s][0], snaps[s - 1][0])]
    assert changed == [3, 6]
    assert [snaps[s][1] for s in range(1, 8)] == [0, 0, 1, 1, 1, 2, 2]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    with pytest.raises(ConfigError, match=r"protoclip: an episode of 1 step\(s\) × batch 16 holds fewer samples "
                                          r"than num_prototypes=32"):
        _run(cfg.replace(proto_refresh_every=1, loss_options={"num_prototypes": 32}), shapes)
    with pytest.raises(ConfigError, match="proto_refresh_every is for the protoclip loss"):
        _run(cfg.replace(loss="infonce", loss_options={}), shapes)


def test_protoclip_resume_keeps_the_episode_bank(tmp_path, shapes):
    full = _cfg(tmp_path / "a", loss="protoclip", loss_options={"num_prototypes": 4}, proto_refresh_every=3,
                steps=6, save_every=2)
    _, expected, _ = _run(full, shapes)
    cut = full.replace(output=str(tmp_path / "b"))
    with pytest.raises(Stop):
        _run(cut, shapes, on_step=_stop_at(3))
    _, resumed, _ = _run(cut.replace(resume="latest"), shapes)  # from step 2: one step of the episode banked
    assert sorted(resumed) == [3, 4, 5, 6]
    for s in resumed:
        assert resumed[s] == pytest.approx(expected[s], abs=1e-6), s
