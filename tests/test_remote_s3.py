"""Runs and models on S3, through s3fs, against a local S3 server (moto, on 127.0.0.1): a training run
cut and resumed from the bucket, and ``clipzoo.load("s3://…/model")`` with its cached copy."""
from __future__ import annotations

import json
import shutil

import fsspec
import pytest
import torch
from safetensors.torch import load_file, save_file

import clipzoo
from clipzoo.errors import DownloadError, UnknownModelError
from clipzoo.train.config import TrainConfig
from clipzoo.train.data import MemoryData, render_shapes
from clipzoo.train.engine import train
from clipzoo.train.model import build_model

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A bucket on a moto S3 server on 127.0.0.1; s3fs pointed at it through fsspec's configuration."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = dict(fsspec.config.conf)
    fsspec.config.conf["s3"] = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("clipzoo-test")
    yield "s3://clipzoo-test"
    fsspec.config.conf.clear()
    fsspec.config.conf.update(saved)
    server.stop()


@pytest.fixture(scope="module")
def shapes():
    return render_shapes(64, seed=0, image_size=32, workers=1)


def _run(cfg, shapes, stop_at=None):
    model = build_model(cfg)
    images, captions, _ = shapes
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      seed=cfg.seed)
    losses = {}

    def on_step(step, rec):
        losses[step] = rec["loss"]
        if step == stop_at:
            raise KeyboardInterrupt  # a killed run: step `stop_at` is lost

    try:
        result = train(cfg, data=data, model=model, on_step=on_step)
    except KeyboardInterrupt:
        return None, losses
    return result, losses


def _cfg(output, **kw):
    return TrainConfig(model_config=TINY, batch_size=16, lr=3e-3, warmup=0, steps=4, save_every=2,
                       output=str(output), progress=False, tensorboard=False, log_every=1, workers=0, **kw)


def test_a_run_on_s3_resumes_like_a_local_run_and_its_model_loads_from_the_bucket(s3, shapes, tmp_path):
    _, full = _run(_cfg(tmp_path / "local"), shapes)
    url = f"{s3}/run"
    _, first = _run(_cfg(url), shapes, stop_at=3)
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert fs.cat(f"{url}/checkpoints/latest".removeprefix("s3://")).decode().strip() == "step_0000002.pt"
    result, resumed = _run(_cfg(url, resume="latest"), shapes)
    assert sorted(resumed) == [3, 4]
    assert {**first, **resumed} == pytest.approx(full, abs=1e-6)
    fs.invalidate_cache()
    lines = [json.loads(x) for x in fs.cat(f"{url}/metrics.jsonl".removeprefix("s3://")).decode().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert not [p for p in fs.find(url) if ".tmp-" in p]
    assert result.model_dir == f"{url}/model"

    cache = tmp_path / "cache"
    remote = clipzoo.load(f"{url}/model", cache_dir=cache)
    local = clipzoo.load(str(tmp_path / "local" / "model"))
    texts = ["a red circle", "a small blue star"]
    assert torch.allclose(remote.encode_text(texts), local.encode_text(texts), atol=1e-6)
    copies = list((cache / "remote").iterdir())
    assert len(copies) == 1 and (copies[0] / "model" / "open_clip_model.safetensors").exists()

    # the cached copy is reused while the bucket is unchanged, and fetched again when the model changed
    stamp = (copies[0] / "listing.json").stat().st_mtime_ns
    clipzoo.load(f"{url}/model/", cache_dir=cache)
    assert (copies[0] / "listing.json").stat().st_mtime_ns == stamp
    changed = tmp_path / "changed"
    shutil.copytree(tmp_path / "local" / "model", changed)
    weights = load_file(changed / "open_clip_model.safetensors")
    weights["token_embedding.weight"] += 0.5 * torch.randn_like(weights["token_embedding.weight"])
    save_file(weights, changed / "open_clip_model.safetensors")
    fs.put(str(changed / "open_clip_model.safetensors"), f"{url}/model/open_clip_model.safetensors".removeprefix("s3://"))
    again = clipzoo.load(f"{url}/model", cache_dir=cache)
    assert (copies[0] / "listing.json").stat().st_mtime_ns != stamp
    expected = clipzoo.load(str(changed)).encode_text(texts)
    assert torch.equal(again.encode_text(texts), expected) and not torch.allclose(expected, local.encode_text(texts))
    assert not [p for p in copies[0].iterdir() if p.name.endswith(".part")]


def test_remote_model_errors_name_the_url(s3, tmp_path):
    with pytest.raises(UnknownModelError, match=r"model URL 's3://clipzoo-test/nothing-here' does not exist; "
                                                r"check the bucket and path"):
        clipzoo.load(f"{s3}/nothing-here", cache_dir=tmp_path)
    with pytest.raises(DownloadError, match=r"^oci://b/model: the fsspec filesystem for oci:// is not installed "
                                            r"\(.*ocifs.*\); pip install the matching package"):
        clipzoo.load("oci://b/model", cache_dir=tmp_path)
    with pytest.raises(DownloadError, match=r"^nosuchfs://x/model: not a usable fsspec URL \(Protocol not known"):
        clipzoo.load("nosuchfs://x/model", cache_dir=tmp_path)


def test_a_checkpoint_file_on_a_memory_filesystem_loads(tmp_path):
    from clipzoo.testing.tiny import write_open_clip_safetensors

    path = write_open_clip_safetensors(tmp_path / "tiny.safetensors", seed=1, embed_config=True)
    fs = fsspec.filesystem("memory")
    fs.put(str(path), "/clipzoo-test-file/tiny.safetensors")  # self-describing: its config is in the metadata
    remote = clipzoo.load("memory://clipzoo-test-file/tiny.safetensors", cache_dir=tmp_path / "cache")
    local = clipzoo.load(str(path))
    assert torch.equal(remote.encode_text(["a star"]), local.encode_text(["a star"]))
