"""``clipzoo index build … --engine ray``: the index build's files decoded (and hashed) in Ray Data tasks and embedded
by an actor pool (:mod:`clipzoo.embed.ray_engine`), while this process keeps the build itself — what changed, the
rows committed shard by shard, the vectors published — so the index is the one a local build writes, and a build
killed at any moment is completed by the next one as usual."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from ..embed.ray_engine import RayOptions, connect, map_on_ray, require_ray
from .folder import IndexFiles

__all__ = ["RayIndexEmbedder", "index_decode_batch"]


def index_decode_batch(batch: dict, transform, draft: int | None) -> dict:
    """A Ray Data task: read, hash, decode and preprocess a batch of files as the local index build does."""
    import numpy as np

    paths = [str(p) for p in batch["path"]]
    items = [IndexFiles(paths, transform, draft)[k] for k in range(len(paths))]
    shape = next((tuple(x.shape) for _, x, err, *_ in items if err is None), (1,))
    pixels = np.zeros((len(items), *shape), np.float32)
    for k, (_, x, err, *_) in enumerate(items):
        if err is None:
            pixels[k] = x.numpy()
    return {"index": np.asarray(batch["index"], np.int64), "pixels": pixels,
            "error": np.asarray([err or "" for _, _, err, *_ in items], dtype=object),
            "sha": np.asarray([it[3] for it in items], dtype=object),
            "size": np.asarray([it[4] for it in items], np.int64),
            "mtime_ns": np.asarray([it[5] for it in items], np.int64)}


class RayIndexEmbedder:
    """``build_index(..., embedder=RayIndexEmbedder(load, options))``: called with the files to embed, the build's
    comparator and its decode size, yields ``([(index, sha256, size, mtime_ns)], features, [(index, reason)])``
    batches in order, as the local loader's batches after the model."""

    def __init__(self, load: Callable, options: RayOptions):
        require_ray()
        self.load, self.options = load, options

    def __call__(self, paths: list[str], comparator: Any, draft_size: int | None) -> Iterator[tuple]:
        ray = require_ray()
        started = connect(ray, self.options)
        try:
            rows = [{"index": i, "path": p} for i, p in enumerate(paths)]
            decode = partial(index_decode_batch, transform=comparator.transform, draft=draft_size)
            ds = map_on_ray(ray, rows, decode, self.load, self.options, True, False)
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                ok = [not e for e in b["error"]]
                good = [(int(i), str(s), int(n), int(t)) for i, s, n, t, g in
                        zip(b["index"], b["sha"], b["size"], b["mtime_ns"], ok, strict=True) if g]
                errors = [(int(i), str(e)) for i, e in zip(b["index"], b["error"], strict=True) if e]
                yield good, (b["features"][ok] if good else None), errors
        finally:
            if started:
                ray.shutdown()
