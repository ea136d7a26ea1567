"""Decode workers are not forked once JAX is loaded (JAX is multithreaded: a forked child can deadlock, and
JAX warns so on stderr); the loader then decodes in the main process."""
from __future__ import annotations

import sys
import types

from PIL import Image

from clipzoo.embed import image_loader
from clipzoo.processes import fork_safe_workers


def test_workers_fork_without_jax_and_stay_in_process_with_it(monkeypatch, tmp_path):
    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(paths[-1])
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    assert fork_safe_workers(2) == 2
    assert image_loader(paths, lambda im: im, batch_size=2, workers=2).num_workers == 2
    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    assert fork_safe_workers(2) == 0
    assert image_loader(paths, lambda im: im, batch_size=2, workers=2).num_workers == 0
