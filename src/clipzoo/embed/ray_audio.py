"""Audio on a Ray cluster (``clipzoo embed MODEL --audio CLIPS/ --engine ray``): Ray Data tasks decode the files
(downmixed and resampled to the model's rate, as :func:`clipzoo.embed.embed_audio` does), an actor pool of audio
towers (CLAP; one model per actor) embeds them, and this process writes the rows shard by shard — sharded,
resumable and retried as images are (:mod:`clipzoo.embed.ray_engine`), with the local engine's ids in its order.

The decoded waves travel as raw float64 bytes (clips differ in length), so the actor sees the very samples the
local engine would encode.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from ..audio import expand_audio_paths, load_audio
from ..errors import BadAudioError
from ..modalities import AUDIO
from .batches import check_batch_size
from .ray_engine import RayOptions, data_context, default_workers, require_ray, run_shards

__all__ = ["embed_audio_with_ray", "decode_audio_batch", "AudioActor"]


def decode_audio_batch(batch: dict, rate: int) -> dict:
    """A Ray Data task: decode a batch of audio files at ``rate`` (an error is returned per row, not raised)."""
    import numpy as np

    waves, errors = [], []
    for path in batch["path"]:
        try:
            waves.append(np.ascontiguousarray(load_audio(str(path), rate), np.float64).tobytes())
            errors.append("")
        except BadAudioError as exc:
            waves.append(b"")
            errors.append(str(exc))
    return {"index": np.asarray(batch["index"], np.int64), "wave": np.asarray(waves, dtype=object),
            "error": np.asarray(errors, dtype=object)}


class AudioActor:
    """A Ray Data actor: loads the audio model once (``load()``), then embeds batches of decoded waves."""

    def __init__(self, load: Callable, normalize: bool):
        self.model, self.normalize = load(), normalize

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        ok = np.asarray([not e for e in batch["error"]], bool)
        feats = np.zeros((len(ok), int(self.model.embed_dim)), np.float32)
        waves = [np.frombuffer(bytes(w), np.float64) for w, good in zip(batch["wave"], ok, strict=True) if good]
        if waves:
            feats[ok] = self.model.encode_audio(waves, normalize=self.normalize,
                                                batch_size=len(waves)).float().cpu().numpy()
        return {"index": np.asarray(batch["index"], np.int64), "features": feats, "error": batch["error"]}


def embed_audio_with_ray(comparator, load: Callable, out, paths: "str | os.PathLike | Iterable", *,
                         options: RayOptions = RayOptions(), normalize: bool = True, progress: bool = False,
                         skip_bad: bool = False) -> dict[str, Any]:
    """Embed audio files and folders (expanded as :func:`clipzoo.embed.embed_audio` expands them) on Ray into
    ``out`` (``.npy`` + sidecar). ``comparator`` (loaded here, e.g. on CPU) gives the sample rate, the model's
    name and its width; ``load`` is a picklable zero-argument callable that loads the same model in each actor.
    A file that cannot be decoded stops the run naming it, or is left out (listed in the sidecar) with
    ``skip_bad``. Returns the sidecar's metadata plus ``"ray": {"shards", "skipped_shards", "embedded_shards"}``.
    """
    ray = require_ray()
    comparator.require(AUDIO)
    files = expand_audio_paths(paths)
    rate = int(comparator.sample_rate)
    batch = check_batch_size(options.batch_size)

    def dataset(todo, plan):
        import ray.data

        data_context(progress)
        rows = [{"index": i, "path": files[i]} for s in todo for i in range(*plan[s])]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch, 200)))
        ds = ds.map_batches(partial(decode_audio_batch, rate=rate), batch_size=batch, num_cpus=1)
        return ds.map_batches(AudioActor, fn_constructor_kwargs={"load": load, "normalize": normalize},
                              batch_size=batch, concurrency=options.num_workers or default_workers(ray, options.gpu),
                              num_gpus=1 if options.gpu else 0, num_cpus=0 if options.gpu else 1)

    meta = run_shards(ray, comparator, out, files, options, normalize, dataset, AUDIO, skip_bad, progress)
    if not meta["inputs"]:
        raise BadAudioError(f"none of the {len(files)} audio files could be decoded; first error: "
                            f"{meta['skipped'][0]['error'] if meta['skipped'] else '(none)'}")
    return meta
