"""Batches for the JAX engine, per host: CSV / TFRecord / any reader source streamed, or generated shapes.

**The uneven-file epoch problem.** open_clip_jax gives each host whole TFRecord files and takes
``n_samples // global_batch`` batches from each: with files of unequal size one host repeats samples while
another never reaches some (its README's caveat). Here an epoch is planned over *samples*, not files:
the shards are put in a seeded order for the epoch, their records laid end to end, the first
``steps × global_batch`` of them kept, and host ``p`` of ``P`` reads the contiguous ``p``-th ``1/P`` of that
range (whichever files it spans, starting mid-file where needed). Every host gets exactly
``steps × global_batch / P`` samples — equal batch counts — and every kept sample is read by exactly one host
once per epoch (:func:`plan_epoch`). The ``< global_batch`` records left over are the end of that epoch's
order, so which ones changes from epoch to epoch. Shard sizes are counted once (CSV rows are known; a
TFRecord file's records are counted by reading its length headers).

Within a host, records pass a seeded shuffle buffer (``shuffle_buffer_size``, default 16 × global batch) before
decoding, so resuming at batch ``b`` skips ``b`` batches of *records* without decoding them and replays exactly
what an uninterrupted run saw. Images are decoded with PIL in a thread pool; the training transform is
open_clip_jax's (a random resized crop, scale 0.9–1, ratio 3/4–4/3, bicubic; its random numbers drawn from
``(seed, epoch, sample)``), the validation transform resizes the shorter side and centre-crops.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ...datasets.readers import open_dataset
from ...datasets.records import Record, decode_image
from ...datasets.shards import TFRecordShard
from ...datasets.tfrecord import iter_tfrecord
from ...errors import DatasetError
from ...processes import fork_safe_workers
from ...tokenizers import OpenAITokenizer
from ..config import ConfigError
from ..data import shapes_data
from ..recipes import parse_shapes_spec

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "plan_epoch", "shard_sizes", "StreamBatches", "ShapesBatches",
           "open_batches", "transform_image"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------ the epoch plan
def plan_epoch(sizes: Sequence[int], global_batch: int, process_count: int, process_index: int, seed: int,
               epoch: int, shuffle: bool = True) -> tuple[list[tuple[int, int, int]], int]:
    """(this host's segments ``[(shard, start, stop), …]`` in reading order, steps in the epoch).

    Every host gets ``steps × global_batch / process_count`` samples; together the hosts read each of the
    epoch's first ``steps × global_batch`` samples (in the epoch's shard order) exactly once."""
    if global_batch % process_count:
        raise ConfigError(f"global batch size {global_batch} must divide by the number of processes {process_count}")
    order = list(range(len(sizes)))
    if shuffle:
        random.Random(seed * 7919 + epoch).shuffle(order)
    steps = sum(sizes) // global_batch
    per_host = steps * global_batch // process_count
    lo, hi = process_index * per_host, (process_index + 1) * per_host
    segments, offset = [], 0
    for shard in order:
        start, stop = max(lo, offset), min(hi, offset + sizes[shard])
        if start < stop:
            segments.append((shard, start - offset, stop - offset))
        offset += sizes[shard]
    return segments, steps


def shard_sizes(shards: Sequence) -> list[int]:
    """Records per shard: a list shard's length, a TFRecord file's record count (length headers only), else
    (webdataset tars) the samples counted by reading the shard once."""
    out = []
    for shard in shards:
        if hasattr(shard, "__len__"):
            out.append(len(shard))
        elif isinstance(shard, TFRecordShard):
            out.append(sum(1 for _ in iter_tfrecord(shard.url, verify=False)))
        else:
            out.append(sum(1 for _ in shard()))
    return out


# ------------------------------------------------------------------ transforms (PIL + numpy, no TensorFlow)
def transform_image(image, size: int, rng: "random.Random | None" = None) -> np.ndarray:
    """A PIL image -> normalised float32 HWC. ``rng``: open_clip_jax's training crop, else resize + centre crop."""
    from PIL import Image

    w, h = image.size
    if rng is not None:
        box = _random_box(w, h, rng)
        image = image.resize((size, size), Image.BICUBIC, box=box)
    else:
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.float32) / 255.0
    return (x - np.asarray(OPENAI_MEAN, np.float32)) / np.asarray(OPENAI_STD, np.float32)


def _random_box(w: int, h: int, rng: random.Random, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round((target * aspect) ** 0.5)), int(round((target / aspect) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return (x0, y0, x0 + cw, y0 + ch)
    return (0, 0, w, h)


# ------------------------------------------------------------------ streamed batches
@dataclass
class StreamBatches:
    """This host's batches of a reader source (CSV, TFRecord, shards, folders): ``(images NHWC, tokens)``."""

    shards: list
    sizes: list[int]
    tokenize: object
    image_size: int
    global_batch: int
    process_count: int = 1
    process_index: int = 0
    seed: int = 0
    train: bool = True
    buffer: "int | None" = None
    workers: int = 4

    @property
    def per_host(self) -> int:
        return self.global_batch // self.process_count

    def steps_per_epoch(self) -> int:
        return sum(self.sizes) // self.global_batch

    def records(self, epoch: int) -> Iterator[tuple[int, Record]]:
        """(position in this host's epoch, record), in this host's order of the epoch (shuffled when training)."""
        segments, _ = plan_epoch(self.sizes, self.global_batch, self.process_count, self.process_index, self.seed,
                                 epoch, shuffle=self.train)
        stream = (rec for shard, start, stop in segments
                  for rec in itertools.islice(self.shards[shard](), start, stop))
        if self.train:
            stream = _buffer_shuffle(stream, self.buffer or 16 * self.global_batch,
                                     random.Random(f"{self.seed}-{epoch}-{self.process_index}"))
        return enumerate(stream)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = self.per_host
        records = itertools.islice(self.records(epoch), start * n, None)
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            while True:
                chunk = list(itertools.islice(records, n))
                if len(chunk) < n:
                    return
                items = list(pool.map(lambda item: self._load(epoch, *item), chunk))
                images = np.stack([x for x, _ in items])
                yield images, self.tokenize([c for _, c in items])

    def _load(self, epoch: int, position: int, rec: Record) -> tuple[np.ndarray, str]:
        rng = random.Random(f"{self.seed}-{epoch}-{self.process_index}-{position}")
        image = decode_image(rec)  # an unreadable image stops the run, naming it (hosts must stay in step)
        if not rec.captions:
            raise DatasetError(f"{rec.source or rec.key}: the sample has no caption")
        caption = rec.captions[rng.randrange(len(rec.captions))] if self.train else rec.captions[0]
        return transform_image(image, self.image_size, rng if self.train else None), caption


def _buffer_shuffle(stream: Iterator, size: int, rng: random.Random) -> Iterator:
    buf: list = []
    for item in stream:
        buf.append(item)
        if len(buf) >= size:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


# ------------------------------------------------------------------ generated shapes, in memory
@dataclass
class ShapesBatches:
    """``shapes-classes:N`` / ``shapes:N`` held in memory (the torch trainer's MemoryData), as numpy NHWC."""

    memory: object
    global_batch: int
    process_count: int = 1
    process_index: int = 0
    skipped: int = 0

    def steps_per_epoch(self) -> int:
        return self.memory.steps_per_epoch(self.global_batch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for x, tokens in self.memory.batches(epoch, start, self.global_batch, self.process_index, self.process_count):
            yield x.permute(0, 2, 3, 1).numpy(), tokens.numpy().astype(np.int32)


def open_batches(path: str, cfg, *, train: bool, n_samples: "int | None", process_count: int,
                 process_index: int):
    """Batches of ``path`` for this host: generated shapes in memory, else a reader source streamed."""
    tokenizer = OpenAITokenizer(context_length=cfg.context_len)
    if parse_shapes_spec(path):
        model = SimpleNamespace(preprocess_cfg={"size": cfg.image_size, "mean": OPENAI_MEAN, "std": OPENAI_STD},
                                tokenizer=tokenizer)
        memory = shapes_data(path, model, cfg.seed, workers=fork_safe_workers(2))  # no fork under JAX
        return ShapesBatches(memory, cfg.global_batch_size, process_count, process_index)
    source = open_dataset(path, split="train" if train else "test", img_key=cfg.image_key, caption_key=cfg.text_key)
    sizes = shard_sizes(source.shards)
    if n_samples is not None:  # open_clip_jax: the first n_samples samples
        sizes = _first(sizes, n_samples)
    batches = StreamBatches(source.shards, sizes, lambda texts: tokenizer(texts).numpy().astype(np.int32),
                            cfg.image_size, cfg.global_batch_size, process_count, process_index, cfg.seed, train,
                            cfg.shuffle_buffer_size, cfg.workers)
    if batches.steps_per_epoch() < 1:
        raise ConfigError(f"{path} holds {sum(sizes)} samples, fewer than one global batch of "
                          f"{cfg.global_batch_size}")
    return batches


def _first(sizes: list[int], n: int) -> list[int]:
    out, left = [], n
    for s in sizes:
        out.append(min(s, max(0, left)))
        left -= s
    return out
