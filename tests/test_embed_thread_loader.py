"""Issue 22 §1/§4: a model that runs on the CPU in an engine of its own (ONNX Runtime, JAX, MindSpore) gets its
images decoded by threads of its own process, one batch ahead (clipzoo.embed.thread_loader) — the DataLoader's
batches, errors and order, at most two batches in memory, nothing left running when the caller stops early, and
no fork (so also with JAX loaded); a PyTorch model and a GPU keep the DataLoader's worker processes."""
from __future__ import annotations

import shutil
import sys
import threading
import types

import numpy as np
import pytest
import torch
from PIL import Image

import clipzoo
from clipzoo.embed import loader as loader_mod
from clipzoo.embed.batches import image_batches
from clipzoo.embed.distributed import DistributedInfo
from clipzoo.embed.handover import Uint8Crop, split_transform
from clipzoo.embed.loader import ImageFiles, decode_in_threads, image_loader
from clipzoo.embed.thread_loader import THREAD_PREFIX, ThreadedLoader
from clipzoo.index import build_index


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("thread-loader")
    paths = []
    for i in range(11):
        path = folder / f"{i:02d}.jpg"
        Image.new("RGB", (96 + 8 * i, 80), (20 * i, 255 - 20 * i, 7 * i)).save(path, quality=90)
        paths.append(str(path))
    (folder / "05.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # a corrupt one among them
    return paths


@pytest.fixture(scope="module")
def model():
    return clipzoo.load("clipzoo/tiny-shapes")


class Recording(ImageFiles):
    """ImageFiles noting which index each thread decoded, and when."""
    log: list = []

    def __getitem__(self, index):
        Recording.log.append((index, threading.current_thread().name))
        return super().__getitem__(index)


def decode_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def test_threads_give_the_dataloaders_batches_and_errors(files, model):
    split = split_transform(model.transform)
    ref = list(image_loader(files, Uint8Crop(split), batch_size=4, workers=0, draft_size=64))
    got = list(image_loader(files, Uint8Crop(split), batch_size=4, workers=2, draft_size=64, threads=True))
    assert [b[0] for b in got] == [b[0] for b in ref] == [[0, 1, 2, 3], [4, 6, 7], [8, 9, 10]]
    for (_, a, err_a), (_, b, err_b) in zip(ref, got):
        assert torch.equal(a, b) and err_a == err_b
    assert got[1][2] == ref[1][2] and len(got[1][2]) == 1 and got[1][2][0][0] == 5
    assert "05.jpg" in got[1][2][0][1]  # the corrupt file is named in its one-line error
    assert decode_threads() == []  # the pool is gone once the iteration ends


def test_threads_decode_one_batch_ahead_and_stop_with_the_caller(files, model):
    Recording.log = []
    batches = ThreadedLoader(Recording(files, Uint8Crop(split_transform(model.transform))), 3, 2,
                             loader_mod.collate_images)
    assert len(batches) == 4 and batches.num_workers == 2
    it = iter(batches)
    first = next(it)
    assert first[0] == [0, 1, 2]
    assert max(i for i, _ in Recording.log) <= 5  # the next batch at most, never further ahead
    assert {name.split("_")[0] for _, name in Recording.log} == {THREAD_PREFIX}
    second = next(it)
    assert second[0] == [3, 4] and max(i for i, _ in Recording.log) <= 8
    it.close()  # the caller stops early: nothing more is decoded, no thread is left
    seen = len(Recording.log)
    assert decode_threads() == [] and len(Recording.log) == seen and max(i for i, _ in Recording.log) <= 8


def test_no_threads_decodes_in_the_callers_thread(files, model):
    Recording.log = []
    rows = list(ThreadedLoader(Recording(files, Uint8Crop(split_transform(model.transform))), 4, 0,
                               loader_mod.collate_images))
    assert [b[0] for b in rows][0] == [0, 1, 2, 3]
    assert {name for _, name in Recording.log} == {threading.current_thread().name}


def test_threads_need_no_fork_so_they_decode_in_parallel_with_jax_loaded(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    assert image_loader(files, lambda im: im, batch_size=2, workers=2).num_workers == 0  # processes: none
    assert image_loader(files, lambda im: im, batch_size=2, workers=2, threads=True).num_workers == 2


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return clipzoo.load("clipzoo/tiny-shapes", runtime="onnx", cache_dir=str(tmp_path_factory.mktemp("onnx-cache")))


def test_an_engine_on_the_cpu_decodes_in_threads_torch_and_gpus_in_processes(files, model, onnx_model,
                                                                              monkeypatch, tmp_path):
    assert decode_in_threads(onnx_model) is True  # ONNX Runtime: one GIL-free call a batch
    assert decode_in_threads(model) is False  # torch eager takes the GIL between its operators
    onnx_model_on_gpu = types.SimpleNamespace(device="cuda:0")
    assert decode_in_threads(onnx_model_on_gpu) is False
    names = []
    decode = loader_mod.decode_file
    monkeypatch.setattr(loader_mod, "decode_file", lambda *a: names.append(threading.current_thread().name)
                        or decode(*a))
    good = [p for p in files if not p.endswith("05.jpg")]
    for comparator, threads in ((onnx_model, True), (model, False)):
        names.clear()
        rows = np.concatenate([b[1] for b in image_batches(comparator, good, 4, 2, True, False, False, True,
                                                           DistributedInfo())])
        assert rows.shape == (10, comparator.embed_dim)
        if threads:
            assert len(names) == 10 and all(n.startswith(THREAD_PREFIX) for n in names)
        else:  # forked workers (nothing recorded here), or this process once JAX is loaded: never decode threads
            assert not any(n.startswith(THREAD_PREFIX) for n in names)
            assert len(names) == (10 if "jax" in sys.modules else 0)
    from clipzoo.index import folder as index_folder

    names.clear()
    decode_bytes = index_folder.decode_bytes
    monkeypatch.setattr(index_folder, "decode_bytes", lambda *a: names.append(threading.current_thread().name)
                        or decode_bytes(*a))
    images = tmp_path / "images"
    images.mkdir()
    for p in good:
        shutil.copy(p, images)
    build_index(images, tmp_path / "index", model=onnx_model, workers=2)  # the index build decodes the same way
    assert len(names) == 10 and all(n.startswith(THREAD_PREFIX) for n in names)


def test_importing_the_embedding_pipeline_imports_no_torch():
    """``import clipzoo.embed`` stays light (``clipzoo models`` and the other quick commands import it): the
    loader's choice of threads imports the Comparator classes, and with them torch, only when it is asked."""
    import subprocess

    code = "import sys, clipzoo.embed; assert 'torch' not in sys.modules"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
