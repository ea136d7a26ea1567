"""Issue 22 §5: the GPU path's correctness on the CPU (its CUDA parts skip with a one-line reason):
benchmarks/gpu_embed.py's CPU path, and the library pieces behind `clipzoo embed --device cuda`."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import clipzoo
from clipzoo.embed.gpu import FixedShapeRunner, GpuEmbedder, GpuOptions, cuda_unavailable, prefetch
from clipzoo.embed.handover import Uint8Crop
from clipzoo.errors import ClipzooError

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
NO_CUDA = cuda_unavailable("cuda")


def bench_module():
    sys.path.insert(0, str(BENCH))  # the benchmark imports its helpers (tables, embed_folder) by name
    spec = importlib.util.spec_from_file_location("bench_gpu_embed", BENCH / "gpu_embed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clipzoo.testing.tiny import write_open_clip_hub_folder

    return clipzoo.load(str(write_open_clip_hub_folder(tmp_path_factory.mktemp("gpu-tiny") / "tiny")))


@pytest.mark.parametrize("autocast, floor", [("none", 0.99999), ("bf16", 0.99)])
def test_issue22_5_gpu_embed_benchmark_cpu_path(tmp_path, autocast, floor):
    mod = bench_module()
    out = tmp_path / "gpu_embed.json"
    mod.main(["--device", "cpu", "--cpu-images", "6", "--distinct", "3", "--model", "tiny", "--batch-size", "4",
              "--workers", "0", "--autocast", autocast, "--check", "6", "--workdir", str(tmp_path / "w"),
              "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["cuda_skipped"] == "device cpu is not a CUDA device" and "\n" not in r["cuda_skipped"]
    assert r["gpu_decode_skipped"] == "GPU JPEG decode: skipped, device cpu is not a CUDA device"
    assert r["graph"] == "eager: CUDA graphs skipped, device cpu is not a CUDA device"
    assert r["goal"]["met"] is None and list(r["paths"]) == ["cpu_decode"]
    path = r["paths"]["cpu_decode"]
    assert set(path["stage_share"]) == {"decode", "transfer", "model"}
    assert sum(path["stage_share"].values()) == pytest.approx(1.0)
    assert path["images_per_s"] > 0 and r["model_only_images_per_s"] > 0
    assert floor <= path["min_cosine_vs_cpu_fp32"] <= 1.0 + 1e-6
    assert r["table"]["rows"][0][0] == "`cpu_decode`"


def test_issue22_5_gpu_embedder_rows_equal_encode_image_on_cpu(tiny, tmp_path):
    from PIL import Image

    images = [Image.new("RGB", (40 + 7 * i, 30 + 3 * i), (30 * i, 200 - 20 * i, 90)) for i in range(5)]
    embedder = GpuEmbedder(tiny, GpuOptions(channels_last=True))
    crops = torch.stack([Uint8Crop(embedder.split)(im) for im in images])
    x = embedder.pixels(crops)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    with torch.no_grad():
        want = tiny.encode_image(images)
    got = embedder.encode(x)
    assert (got - want).abs().max().item() <= 1e-5
    assert embedder.runner.note.startswith("eager: CUDA graphs skipped")
    with torch.no_grad():
        bf16 = GpuEmbedder(tiny, GpuOptions(autocast="bf16")).encode(x)
    assert torch.nn.functional.cosine_similarity(bf16, want).min().item() >= 0.99


def test_issue22_5_fixed_shape_runner_and_prefetch_on_cpu():
    calls = []

    def fn(x):
        calls.append(tuple(x.shape))
        return x * 2

    runner = FixedShapeRunner(fn, "cuda-graphs")
    a, b = torch.ones(4, 3), torch.ones(2, 3)
    assert torch.equal(runner(a), a * 2) and torch.equal(runner(b), b * 2)  # the smaller last batch: eager
    assert runner.shape == (4, 3) and runner.graph is None and calls == [(4, 3), (2, 3)]
    assert FixedShapeRunner(fn, "none").note == "eager"
    batches = [([0, 1], torch.arange(6).view(2, 3), []), ([2], None, [(2, "bad")])]
    got = list(prefetch(iter(batches), "cpu"))
    assert got[0][0] == [0, 1] and torch.equal(got[0][1], batches[0][1]) and got[1] == ([2], None, [(2, "bad")])


def test_issue22_5_options_say_what_is_wrong():
    with pytest.raises(ClipzooError, match="unknown autocast 'fp8'; use fp16, bf16 or none"):
        GpuOptions(autocast="fp8")
    with pytest.raises(ClipzooError, match="unknown graph mode 'xla'; use cuda-graphs, compile, none"):
        GpuOptions(graphs="xla")
    assert cuda_unavailable("cpu") == "device cpu is not a CUDA device"
    if NO_CUDA:
        assert NO_CUDA == "no CUDA device (torch.cuda.is_available() is False)"
