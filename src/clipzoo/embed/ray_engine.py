"""Embedding on a Ray cluster (``clipzoo embed … --engine ray``): Ray Data reads and decodes images in tasks, an
actor pool (one model per actor, one GPU each on CUDA) embeds them, and this process writes the rows shard by shard.

The inputs are listed exactly as the local engine lists them (:func:`clipzoo.embed.sources.expand_image_inputs`:
files, folders, webdataset tars, CSV / parquet tables; fsspec URLs of the same, :mod:`clipzoo.embed.remote_inputs`)
or are texts (:func:`embed_texts_with_ray`: an actor pool of text towers), then cut into contiguous shards of
``shard_rows`` rows.
Each shard is written as ``OUT.parts/part-SSSSS-of-WWWWW.npy`` + its JSON sidecar (the sidecar last: it is the
shard's completion record), and when all are there they are joined in order into ``OUT.npy`` + ``OUT.json`` —
the same ids in the same order as the local engine (:func:`clipzoo.embed.distributed.merge_parts`).

- **Resumable**: a rerun keeps every shard whose record matches (same model, same weights for a local model —
  :func:`clipzoo.files.model_fingerprint` —, bounds, and the same inputs in the same order) and whose rows check
  out (:func:`clipzoo.embed.distributed.read_part`), and embeds the rest only.
- **Safe outputs**: ``OUT.npy`` and its sidecar may not be an input or a folder
  (:func:`clipzoo.embed.results.check_outputs`, before any work, as the local engine checks).
- **Fault tolerant**: the actors are restarted by Ray (Ray Data's actor pools default to ``max_restarts=-1``) and
  their batch retried (``max_task_retries=-1``); decode tasks are retried as Ray tasks are. Rows are keyed by
  input index, so a retried batch can neither duplicate nor drop a row, and a shard is committed only when every
  one of its rows is in.
- **Fault injection** (tests): ``CLIPZOO_RAY_KILL_AT=ROW:MARKER`` makes the actor that embeds input ``ROW`` kill
  its own process once (the ``MARKER`` file says it has happened).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..cards import IMAGE, TEXT
from ..errors import BadAudioError, BadImageError, BadTextError, ClipzooError
from ..extras import require
from ..files import atomic_write, model_fingerprint
from ..modalities import AUDIO
from ..progress import progress as progress_bar
from .batches import check_batch_size
from .distributed import merge_parts, part_name, parts_dir, read_part
from .handover import Uint8Crop, normalize_uint8, split_transform
from .loader import ImageFiles, draft_size_for
from .remote_inputs import RemoteFile, RemoteTarMember, expand_inputs
from .results import check_outputs, npy_path, write_sidecar
from .run import read_paths
from .sources import TarMember

__all__ = ["RayOptions", "require_ray", "shard_plan", "finished_shards", "embed_with_ray", "embed_texts_with_ray",
           "KILL_ENV", "DEFAULT_SHARD_ROWS", "connect", "map_on_ray", "EmbedActor", "TextActor", "decode_batch",
           "collect_shards", "run_shards", "default_workers", "data_context", "inputs_digest", "weights_of"]

KILL_ENV = "CLIPZOO_RAY_KILL_AT"
DEFAULT_SHARD_ROWS = 4096
FEATURE = "--engine ray"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` (None: a local Ray started here; ``auto``; ``ray://HOST:10001``),
    ``num_workers`` embedding actors (None: the cluster's GPUs on CUDA, else half its CPUs), ``gpu`` (one GPU
    per actor), ``batch_size`` and ``shard_rows``."""

    address: str | None = None
    num_workers: int | None = None
    gpu: bool = False
    batch_size: int = 64
    shard_rows: int = DEFAULT_SHARD_ROWS
    init_kwargs: dict = field(default_factory=dict)


def require_ray():
    """``ray`` with Ray Data, or the one-line error naming the extra."""
    ray = require("ray", FEATURE)
    require("ray.data", FEATURE)
    return ray


def shard_plan(n: int, shard_rows: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` shards of ``shard_rows`` rows (the last may be shorter) covering ``n`` inputs."""
    if shard_rows < 1:
        raise ClipzooError(f"shard rows must be at least 1, got {shard_rows}")
    return [(s, min(s + shard_rows, n)) for s in range(0, n, shard_rows)]


def inputs_digest(names: list[str]) -> str:
    """SHA-256 of a shard's inputs in their order (its record keeps it: a reordered list is another shard)."""
    return hashlib.sha256(json.dumps(list(names), ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


def weights_of(comparator) -> str | None:
    """The fingerprint of a local model's files (:func:`clipzoo.files.model_fingerprint`; None for a hub model):
    other weights written to the same path give another fingerprint under the same alias."""
    path = getattr(getattr(getattr(comparator, "card", None), "source", None), "path", None)
    return model_fingerprint(os.path.abspath(path)) if path else None


def finished_shards(out, names: list[str], plan: list[tuple[int, int]], model: str,
                    normalized: bool = True, weights: str | None = None) -> set[int]:
    """The shards of ``plan`` already written for these inputs, in this order, by ``model`` with these ``weights``;
    a part whose rows do not check out (:func:`~clipzoo.embed.distributed.read_part`: cut short, unreadable, not
    rows) is left out, so the run redoes it."""
    folder, done = parts_dir(npy_path(out)), set()
    for i, (start, stop) in enumerate(plan):
        part = folder / part_name(i, len(plan))
        try:
            meta, _ = read_part(part)
        except ClipzooError:
            continue
        bounds = meta.get("part", {})
        same = (meta.get("model"), meta.get("normalized"), bounds.get("start"), bounds.get("stop"),
                bounds.get("model_weights"), len(meta["inputs"]) + len(meta.get("skipped", [])))
        if same == (model, normalized, start, stop, weights, stop - start) \
                and bounds.get("inputs_sha256") == inputs_digest(names[start:stop]):
            done.add(i)
    return done


# ------------------------------------------------------------------ what runs in the tasks and actors
def item_row(index: int, item) -> dict[str, Any]:
    """One input as a Ray Data row (plain values: a path or URL, a tar member's name, offset and size, and the
    bytes of an input read here: see :data:`~clipzoo.embed.remote_inputs.INLINE_PROTOCOLS`)."""
    row = {"index": index, "path": str(item), "member": "", "offset": -1, "size": -1, "remote": False, "data": b""}
    if isinstance(item, (TarMember, RemoteTarMember)):
        row.update(path=getattr(item, "tar", None) or item.url, member=item.name, offset=item.offset, size=item.size)
    if isinstance(item, (RemoteFile, RemoteTarMember)):
        row.update(remote=True, data=item.data or b"")
    return row


def row_item(path: str, member: str, offset: int, size: int, remote: bool = False, data: bytes = b""):
    data = bytes(data) if data else None
    if remote:
        return RemoteTarMember(str(path), str(member), int(offset), int(size), data) if member \
            else RemoteFile(str(path), data)
    return TarMember(str(path), str(member), int(offset), int(size)) if member else str(path)


def decode_batch(batch: dict, transform, draft: int | None) -> dict:
    """A Ray Data task: decode and preprocess a batch of inputs (errors returned per row, as the local loader does)."""
    import numpy as np

    items = [row_item(*r) for r in zip(batch["path"], batch["member"], batch["offset"], batch["size"], batch["remote"],
                                       batch["data"], strict=True)]
    decoded = [ImageFiles(items, transform, draft)[k] for k in range(len(items))]
    shape = next((tuple(x.shape) for _, x, err in decoded if err is None), None)
    dtype = next((x.numpy().dtype for _, x, err in decoded if err is None), np.uint8)
    pixels = np.zeros((len(items), *(shape or (1,))), dtype)
    for k, (_, x, err) in enumerate(decoded):
        if err is None:
            pixels[k] = x.numpy()
    return {"index": np.asarray(batch["index"], np.int64), "pixels": pixels,
            "error": np.asarray([err or "" for _, _, err in decoded], dtype=object)}


class EmbedActor:
    """A Ray Data actor: loads the model once (``load()``), then embeds decoded batches."""

    def __init__(self, load: Callable, normalize: bool, kill_at: tuple[int, str] | None = None):
        self.model = load()
        self.split = split_transform(self.model.transform)
        self.normalize = normalize
        self.kill_at = kill_at

    def _fault(self, indices) -> None:
        row, marker = self.kill_at or (None, "")
        if row is not None and row in set(int(i) for i in indices) and not os.path.exists(marker):
            atomic_write(marker, lambda f: f.write(str(os.getpid()).encode()))
            os.kill(os.getpid(), signal.SIGKILL)  # as an OOM kill or a lost node would

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        self._fault(batch["index"])
        ok = np.asarray([not e for e in batch["error"]], bool)
        feats = np.zeros((len(ok), int(self.model.embed_dim)), np.float32)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])).to(self.model.device)
            if self.split is not None and pixels.dtype == torch.uint8:  # uint8 crops; float pixels are ready
                pixels = normalize_uint8(pixels, self.split)
            with torch.no_grad():
                feats[ok] = self.model.encode_image(pixels, normalize=self.normalize).float().cpu().numpy()
        return {**{k: v for k, v in batch.items() if k != "pixels"}, "features": feats}  # other columns pass on


class TextActor:
    """A Ray Data actor: loads the model once, then embeds batches of texts (an error is returned per row)."""

    def __init__(self, load: Callable, normalize: bool, truncate: bool):
        self.model, self.normalize, self.truncate = load(), normalize, truncate

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        texts = [str(t) for t in batch["text"]]
        feats = np.zeros((len(texts), int(self.model.embed_dim)), np.float32)
        error = ""
        try:
            feats[:] = self.model.encode_text(texts, normalize=self.normalize, batch_size=len(texts),
                                              truncate=self.truncate).float().cpu().numpy()
        except ClipzooError as exc:  # a text over the context: the driver raises it as the local engine does
            error = str(exc)
        return {"index": np.asarray(batch["index"], np.int64), "features": feats,
                "error": np.asarray([error] * len(texts), dtype=object)}


# ------------------------------------------------------------------ the driver
def connect(ray, options: RayOptions) -> bool:
    """Join ``options.address`` (or start a local Ray) unless this process is connected; True when it joined here."""
    if ray.is_initialized():
        return False
    local = {"include_dashboard": False} if options.address is None else {}
    ray.init(address=options.address, **{**local, **options.init_kwargs})
    return True


def embed_with_ray(comparator, load: Callable, out, images: Any, *, options: RayOptions = RayOptions(),
                   normalize: bool = True, progress: bool = False, skip_bad: bool = False,
                   fast_decode: bool = True) -> dict[str, Any]:
    """Embed ``images`` on Ray into ``out`` (``.npy`` + sidecar, as :func:`clipzoo.embed.embed_to_file` writes).

    ``comparator`` (loaded here, e.g. on CPU) gives the preprocessing and the model's name; ``load`` is a
    picklable zero-argument callable that loads the same model in each actor (on its GPU with ``options.gpu``).
    ``images``: paths, folders, tars, tables, or fsspec URLs of them (:mod:`clipzoo.embed.remote_inputs`).
    Returns the sidecar's metadata plus ``"ray": {"shards", "skipped_shards", "embedded_shards"}``.
    """
    ray = require_ray()
    comparator.require(IMAGE)
    items = expand_inputs(images)

    def dataset(todo, plan):
        return _dataset(ray, comparator, load, items, plan, todo, options, normalize, fast_decode, progress)

    meta = run_shards(ray, comparator, out, [str(x) for x in items], options, normalize, dataset, IMAGE,
                      skip_bad, progress, reads=read_paths(items))
    if not meta["inputs"]:
        raise BadImageError(f"none of the {len(items)} images could be decoded; first error: "
                            f"{meta['skipped'][0]['error'] if meta['skipped'] else '(none)'}")
    return meta


def embed_texts_with_ray(comparator, load: Callable, out, texts, *, options: RayOptions = RayOptions(),
                         normalize: bool = True, progress: bool = False, truncate: bool = False) -> dict[str, Any]:
    """Embed ``texts`` on Ray into ``out``: the rows :func:`clipzoo.embed.embed_to_file` writes for them (an
    actor pool of text towers; sharded, resumable and retried as images are). A text over the model's context
    stops the run (as locally) unless ``truncate``."""
    ray = require_ray()
    comparator.require(TEXT)
    texts = [str(t) for t in texts]
    if not texts:
        raise BadTextError("no texts given; pass a file with one text per line")

    def dataset(todo, plan):
        import ray.data

        rows = [{"index": i, "text": texts[i]} for s in todo for i in range(*plan[s])]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // options.batch_size, 200)))
        return ds.map_batches(TextActor, fn_constructor_kwargs={"load": load, "normalize": normalize,
                                                                "truncate": truncate},
                              batch_size=check_batch_size(options.batch_size),
                              concurrency=options.num_workers or default_workers(ray, options.gpu),
                              num_gpus=1 if options.gpu else 0, num_cpus=0 if options.gpu else 1)

    return run_shards(ray, comparator, out, texts, options, normalize, dataset, TEXT, False, progress)


def run_shards(ray, comparator, out, names: list[str], options: RayOptions, normalize: bool, dataset: Callable,
               modality: str, skip_bad: bool, progress: bool, reads: list[str] | None = None) -> dict[str, Any]:
    """The shards of ``names`` not yet written -> ``dataset(todo, plan)`` on Ray -> shard files -> ``out``.
    ``reads``: the files the run reads (default: ``names``, texts none), which ``out`` may not replace."""
    npy = check_outputs(out, (names if modality != TEXT else ()) if reads is None else reads)  # before any work
    plan = shard_plan(len(names), options.shard_rows)
    weights = weights_of(comparator)
    done = finished_shards(npy, names, plan, comparator.card.alias, normalize, weights)
    todo = [i for i in range(len(plan)) if i not in done]
    parts_dir(npy).mkdir(parents=True, exist_ok=True)
    if todo:
        started = connect(ray, options)
        try:
            collect_shards(dataset(todo, plan), comparator, names, plan, todo, npy, normalize, skip_bad, progress,
                           modality, weights=weights)
        finally:
            if started:
                ray.shutdown()
    meta = merge_parts(npy, len(plan))
    return {**meta, "ray": {"shards": len(plan), "skipped_shards": len(done), "embedded_shards": len(todo)}}


def _dataset(ray, comparator, load, items, plan, todo, options: RayOptions, normalize: bool, fast_decode: bool,
             progress: bool):
    """The Ray Data pipeline over the rows of the shards still to do: read -> decode (tasks) -> embed (actors)."""
    rows = [item_row(i, items[i]) for s in todo for i in range(*plan[s])]
    split = split_transform(comparator.transform)
    transform = Uint8Crop(split, fast=fast_decode) if split is not None else comparator.transform
    draft = draft_size_for(comparator) if fast_decode else None
    return map_on_ray(ray, rows, partial(decode_batch, transform=transform, draft=draft), load, options, normalize,
                      progress)


def map_on_ray(ray, rows: list[dict], decode: Callable, load: Callable, options: RayOptions, normalize: bool,
               progress: bool):
    """``rows`` (each with an ``index``) -> ``decode`` in Ray Data tasks (a batch dict in, ``index``, ``pixels``,
    ``error`` and any other columns out) -> :class:`EmbedActor` s (``features`` in place of ``pixels``), in order."""
    import ray.data

    data_context(progress)
    batch = check_batch_size(options.batch_size)
    workers = options.num_workers or default_workers(ray, options.gpu)
    kill = os.environ.get(KILL_ENV)
    kill_at = (int(kill.split(":", 1)[0]), kill.split(":", 1)[1]) if kill else None
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch, 200)))
    ds = ds.map_batches(decode, batch_size=batch, num_cpus=1)
    return ds.map_batches(EmbedActor, fn_constructor_kwargs={"load": load, "normalize": normalize, "kill_at": kill_at},
                          batch_size=batch, concurrency=workers,
                          num_gpus=1 if options.gpu else 0, num_cpus=0 if options.gpu else 1)
    # Ray Data's actor pool restarts a dead actor and retries its batch (max_restarts=-1, max_task_retries=-1)


def data_context(progress: bool) -> None:
    """Ray Data's settings for a run: rows in order (shards complete one after another: bounded memory here),
    progress bars only with ``progress``, and ``builtins.print`` left alone."""
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")  # Ray's progress bars would replace builtins.print
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = progress


def default_workers(ray, gpu: bool) -> int:
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU", 1))) if gpu else max(1, int(resources.get("CPU", 2)) // 2)


def collect_shards(ds, comparator, names, plan, todo, npy, normalize: bool, skip_bad: bool, progress: bool,
                   modality: str = IMAGE, weights: str | None = None) -> None:
    """Take the actors' rows as they come and commit each shard when all its rows are in (once per row);
    ``weights``: the model's fingerprint (:func:`weights_of`), kept in each shard's record."""
    pending: dict[int, dict[int, tuple]] = {i: {} for i in todo}
    starts = [start for start, _ in plan]
    total = sum(plan[i][1] - plan[i][0] for i in todo)
    noun = {IMAGE: "images", TEXT: "texts", AUDIO: "audio files"}[modality]
    with progress_bar(total, f"embedding {total} {noun} on Ray", enabled=progress, unit=noun) as advance:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for index, feats, err in zip(batch["index"], batch["features"], batch["error"], strict=True):
                index = int(index)
                if err and modality == TEXT:
                    raise BadTextError(str(err))
                if err and not skip_bad and modality == AUDIO:
                    raise BadAudioError(f"{err} (to leave such files out: --skip-bad, skip_bad=True)")
                if err and not skip_bad:
                    raise BadImageError(f"{err} (to leave such images out: --skip-bad, skip_bad=True)")
                shard = bisect.bisect_right(starts, index) - 1
                pending[shard][index] = (feats, str(err or ""))
                if len(pending[shard]) == plan[shard][1] - plan[shard][0]:
                    _write_shard(npy, shard, plan, pending.pop(shard), names, comparator, normalize, modality,
                                 weights)
            advance(len(batch["index"]))
    if pending:
        raise ClipzooError(f"the Ray run ended with {len(pending)} shard(s) of {npy} incomplete; rerun the same "
                           "command to embed them (finished shards are kept)")


def _write_shard(npy, shard: int, plan, rows: dict[int, tuple], names, comparator, normalize: bool,
                 modality: str = IMAGE, weights: str | None = None) -> None:
    """One shard's rows in input order -> ``part-….npy``, then its sidecar (the completion record: with the digest
    of the shard's inputs in order and the weights' fingerprint, what a rerun compares)."""
    import numpy as np

    start, stop = plan[shard]
    dim = int(comparator.embed_dim)
    kept = [i for i in range(start, stop) if not rows[i][1]]
    array = np.stack([rows[i][0] for i in kept]).astype(np.float32) if kept else np.zeros((0, dim), np.float32)
    part = parts_dir(npy) / part_name(shard, len(plan))
    atomic_write(part, lambda f: np.save(f, array))
    write_sidecar(part, {"model": comparator.card.alias, "modality": modality, "count": len(kept), "dim": dim,
                         "dtype": "float32", "normalized": normalize, "inputs": [names[i] for i in kept],
                         "skipped": [{"input": names[i], "error": rows[i][1]} for i in range(start, stop)
                                     if rows[i][1]],
                         "part": {"rank": shard, "world_size": len(plan), "start": start, "stop": stop,
                                  "inputs_sha256": inputs_digest(names[start:stop]), "model_weights": weights}})
