"""Training batches: from data sets on disk or remote (the readers), or from generated shapes in memory.

Both yield, for each step, this process's share of the global batch as ``(pixels, tokens)`` (plus the
captions tokenised for a distillation teacher, once ``set_teacher_tokenizer`` was called), in an
order fixed by ``(seed, epoch)``: resuming at step ``s`` replays exactly the batches an uninterrupted
run would have seen, and ``N`` processes together see the batches one process would.

- :class:`MemoryData`: images held as uint8 in memory (generated shapes): global batch ``b`` of epoch
  ``e`` is ``perm(seed, e)[b·B:(b+1)·B]``, split by rank; each sample's caption is one of its phrasings,
  drawn by the same seed.
- :class:`StreamData`: records from :func:`clipzoo.datasets.readers.open_dataset` sources, shards
  shuffled per epoch and split across ranks and DataLoader workers, decoded with the training
  transform; unreadable images are skipped and counted (``strict``: raise). Several sources mix by
  weight.
"""
from __future__ import annotations

import multiprocessing as mp
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..datasets import ShapesDataset
from ..datasets.readers import open_dataset
from ..datasets.records import decode_image
from ..errors import ClipzooError, DatasetError
from .recipes import class_captions, parse_shapes_spec

__all__ = ["MemoryData", "StreamData", "render_shapes", "shapes_data", "open_sources", "spread_groups"]


# ------------------------------------------------------------------ generated shapes in memory
def _render_range(args):
    n0, n1, seed, size, two = args
    ds = ShapesDataset(n1, seed=seed, image_size=size, two_object_prob=two)
    images, captions, labels = [], [], []
    for i in range(n0, n1):
        s = ds.render(i)
        images.append(np.asarray(s.image, dtype=np.uint8))
        captions.append(list(s.captions))
        labels.append(dict(s.labels))
    return np.stack(images), captions, labels


def render_shapes(n: int, seed: int = 0, image_size: int = 64, two_object_prob: float = 0.25, workers: int = 2):
    """``n`` generated samples as (uint8 images [n, S, S, 3], captions per sample, labels per sample)."""
    chunks = [(i, min(n, i + 500), seed, image_size, two_object_prob) for i in range(0, n, 500)]
    if workers > 1 and len(chunks) > 1:
        with mp.get_context("fork").Pool(min(workers, len(chunks))) as pool:  # no idle process per chunk short
            parts = pool.map(_render_range, chunks)
    else:
        parts = [_render_range(c) for c in chunks]
    return (np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]],
            [label for p in parts for label in p[2]])


def shapes_data(spec: str, model, seed: int = 0, workers: int = 2) -> "MemoryData":
    """A :class:`MemoryData` of ``shapes:N[:SEED]`` / ``shapes-classes:N[:SEED]`` samples for ``model`` (a
    :class:`~clipzoo.train.model.TrainModel`: its image size, normalisation and tokenizer)."""
    n, data_seed, kind = parse_shapes_spec(spec)
    size = model.preprocess_cfg["size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    single = {"two_object_prob": 0.0} if kind == "shapes-classes" else {}  # else the generator's default
    images, captions, labels = render_shapes(n, seed=data_seed, image_size=size, workers=max(1, workers), **single)
    groups = None
    if kind == "shapes-classes":
        captions = [class_captions(lab) for lab in labels]
        classes = {k: i for i, k in enumerate(sorted({lab["shape_color"] for lab in labels}))}
        groups = [classes[lab["shape_color"]] for lab in labels]  # batches spread over the classes
    return MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"],
                      seed=seed, groups=groups)


class MemoryData:
    """Images (uint8 NHWC) and their captions in memory; deterministic batches per (seed, epoch, step)."""

    def __init__(self, images: np.ndarray, captions: Sequence[Sequence[str]], tokenizer: Callable,
                 mean: Sequence[float], std: Sequence[float], image_size: "int | None" = None, seed: int = 0,
                 groups: "Sequence[int] | None" = None):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.n = len(self.images)
        if self.n == 0:
            raise DatasetError("no training samples")
        phrasings = max(len(c) for c in captions)
        flat = [c[i % len(c)] for c in captions for i in range(phrasings)]
        self.tokens = _tokenize_unique(tokenizer, flat).reshape(self.n, phrasings, -1)
        self.phrasings = phrasings
        self._captions = flat
        self.teacher_tokens: "torch.Tensor | None" = None
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.image_size = image_size
        self.seed = seed
        self.skipped = 0
        self.groups = None if groups is None else torch.as_tensor(groups, dtype=torch.long)
        if self.groups is not None and len(self.groups) != self.n:
            raise DatasetError(f"{len(self.groups)} groups for {self.n} samples")

    def set_teacher_tokenizer(self, tokenizer: Callable) -> None:
        """Also yield each caption tokenised for a distillation teacher (a third batch element)."""
        self.teacher_tokens = _tokenize_unique(tokenizer, self._captions).reshape(self.n, self.phrasings, -1)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.n // batch_size

    def batches(self, epoch: int, start: int, batch_size: int, rank: int = 0, world_size: int = 1
                ) -> Iterator[tuple[torch.Tensor, ...]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(self.n, generator=g) if self.groups is None else spread_groups(self.groups, g)
        choice = torch.randint(0, self.phrasings, (self.n,), generator=g)
        per_rank = batch_size // world_size
        for b in range(start, self.steps_per_epoch(batch_size)):
            idx = perm[b * batch_size:(b + 1) * batch_size][rank * per_rank:(rank + 1) * per_rank]
            x = self.images[idx].permute(0, 3, 1, 2).float().div_(255)
            if self.image_size and x.shape[-1] != self.image_size:
                x = torch.nn.functional.interpolate(x, size=self.image_size, mode="bilinear", antialias=True,
                                                    align_corners=False)
            x = (x - self.mean) / self.std
            if self.teacher_tokens is not None:
                yield x, self.tokens[idx, choice[idx]], self.teacher_tokens[idx, choice[idx]]
            else:
                yield x, self.tokens[idx, choice[idx]]


def _tokenize_unique(tokenizer: Callable, texts: Sequence[str]) -> torch.Tensor:
    """``tokenizer(texts)``, tokenising each distinct text once (generated captions repeat: 100,000
    captions of the tiny-shapes recipe hold 847 distinct ones; 6.7 s -> 0.1 s)."""
    distinct = list(dict.fromkeys(texts))
    where = {t: i for i, t in enumerate(distinct)}
    return tokenizer(distinct)[torch.tensor([where[t] for t in texts], dtype=torch.long)]


def spread_groups(groups: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random order of the samples in which each group (class) comes once per round: round ``r`` holds
    the ``r``-th sample of every group still holding one, the groups in a fresh random order each round.

    With groups of equal size, a batch as large as a round holds every group once; in general a batch holds
    each group about equally often, so a contrastive batch holds far fewer same-class "negatives" than a
    uniform shuffle gives (77 classes of unequal size, batch 128: a sample meets ~1.65 captions of its own
    class in a uniform batch, ~1.0 here).
    """
    n = len(groups)
    perm = torch.randperm(n, generator=g)
    order = perm[torch.sort(groups[perm], stable=True).indices]          # by group, random within a group
    sorted_groups = groups[order]
    starts = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    rank_in_group = torch.arange(n) - starts
    n_groups = int(groups.max()) + 1
    rounds = int(rank_in_group.max()) + 1
    shuffle = torch.rand(rounds, n_groups, generator=g)
    key = rank_in_group.double() + shuffle[rank_in_group, sorted_groups].double()
    return order[torch.argsort(key)]


# ------------------------------------------------------------------ streamed from the readers
class _Fatal:
    """An error that ends training, carried out of a DataLoader worker as an item and raised again, as it was,
    in the training process (:meth:`StreamData.batches`)."""

    def __init__(self, err: ClipzooError):
        self.kind, self.message = type(err), str(err)

    def error(self) -> ClipzooError:
        try:
            return self.kind(self.message)
        except Exception:  # noqa: BLE001 - an error class that takes other arguments: the message still reads
            return DatasetError(self.message)


class _TrainStream(IterableDataset):
    def __init__(self, shards, transform, tokenizer, seed, epoch, rank, world_size, buffer, strict):
        self.shards, self.transform, self.tokenizer = shards, transform, tokenizer
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.buffer, self.strict = buffer, strict

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = list(range(len(self.shards)))
        random.Random(self.seed * 7919 + self.epoch).shuffle(order)
        slot, slots = self.rank * nw + wid, self.world_size * nw
        mine = [order[i] for i in range(len(order)) if i % slots == slot]
        rng = random.Random(f"{self.seed}-{self.epoch}-{slot}")
        buf: list = []
        n = 0
        for si in mine:
            records = self.shards[si]()
            while True:
                try:  # a shard-level error comes back as an item: raised in a worker, PyTorch wrapped it in its
                    rec = next(records)  # own one-line traceback ("Caught DatasetError in DataLoader worker …")
                except StopIteration:
                    break
                except ClipzooError as err:
                    yield None, None, _Fatal(err)
                    return
                if not rec.captions:  # counted with the unreadable images (it was dropped without a word)
                    yield None, None, f"{rec.source or rec.key}: the sample has no caption"
                    continue
                n += 1
                try:
                    pixels = self._augmented(rec, slot, n)
                except ClipzooError as err:
                    if self.strict:
                        yield None, None, _Fatal(err)
                        return
                    yield None, None, str(err)
                    continue
                caption = rec.captions[rng.randrange(len(rec.captions))]
                buf.append((pixels, caption))
                if len(buf) >= self.buffer:
                    j = rng.randrange(len(buf))
                    buf[j], buf[-1] = buf[-1], buf[j]
                    p, c = buf.pop()
                    yield p, c, None
        rng.shuffle(buf)
        for p, c in buf:
            yield p, c, None


    def _augmented(self, rec, slot: int, n: int):
        """The training transform of the ``n``-th sample of this stream, its random crop drawn from a generator
        seeded by (seed, epoch, slot, n) — not torch's global one, whose state a resumed run replays differently
        (the crops, so the losses after a resume, differed from the run that was not stopped)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((((self.seed * 1_000_003 + self.epoch) * 1_000_003 + slot) * 1_000_003 + n) % 2**63)
            return self.transform(decode_image(rec))


@dataclass
class StreamData:
    """Training batches from reader sources (CSV, webdataset, TFRecord, folders; local or fsspec)."""

    sources: list  # DataSource
    transform: Callable
    tokenizer: Callable
    seed: int = 0
    workers: int = 2
    num_samples: "int | None" = None
    weights: "list[float] | None" = None
    strict: bool = False
    shuffle_buffer: int = 1000
    skipped: int = 0
    skipped_examples: list = field(default_factory=list)
    teacher_tokenizer: "Callable | None" = None  # distillation: captions also tokenised for the teacher

    def __post_init__(self):
        if self.num_samples is None:
            sizes = [s.size for s in self.sources]
            if any(s is None for s in sizes):
                raise DatasetError("streamed shards have no known size: set train_num_samples "
                                   "(--train-num-samples) to define an epoch")
            self.num_samples = int(sum(sizes))

    def set_teacher_tokenizer(self, tokenizer: Callable) -> None:
        """Also yield each caption tokenised for a distillation teacher (a third batch element)."""
        self.teacher_tokenizer = tokenizer

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.num_samples // batch_size

    def _collate(self, items):
        good = [(p, c) for p, c, e in items if e is None]
        errors = [e for p, c, e in items if e is not None]
        if not good:
            return None, None, errors
        tokens = self.tokenizer([c for _, c in good])
        if self.teacher_tokenizer is not None:
            tokens = (tokens, self.teacher_tokenizer([c for _, c in good]))
        return torch.stack([p for p, _ in good]), tokens, errors

    def _source_iter(self, src, epoch, rank, world_size, per_rank):
        stream = _TrainStream(src.shards, self.transform, self.tokenizer, self.seed, epoch, rank, world_size,
                              self.shuffle_buffer, self.strict)
        workers = max(0, min(self.workers, len(src.shards) // max(1, world_size)))
        loader = DataLoader(stream, batch_size=per_rank, num_workers=workers, collate_fn=self._collate)
        return iter(loader)

    def batches(self, epoch: int, start: int, batch_size: int, rank: int = 0, world_size: int = 1):
        per_rank = batch_size // world_size
        iters = [self._source_iter(s, epoch, rank, world_size, per_rank) for s in self.sources]
        weights = self.weights or [1.0] * len(self.sources)
        pick = random.Random(f"mix-{self.seed}-{epoch}")
        pending: list = []
        step = 0
        while step < self.steps_per_epoch(batch_size):
            active = [i for i, it in enumerate(iters) if it is not None]
            if not active:
                break  # every source ran out: the epoch ends early
            i = pick.choices(active, weights=[weights[j] for j in active])[0]
            try:
                pixels, tokens, errors = next(iters[i])
            except StopIteration:
                iters[i] = None
                continue
            fatal = next((e for e in errors if isinstance(e, _Fatal)), None)
            if fatal is not None:
                raise fatal.error()
            if errors:
                self.skipped += len(errors)
                self.skipped_examples.extend(errors[: max(0, 5 - len(self.skipped_examples))])
            if pixels is None:
                continue
            teacher_tokens = None
            if isinstance(tokens, tuple):
                tokens, teacher_tokens = tokens
            pending.append((pixels, tokens, teacher_tokens))
            have = sum(len(p[0]) for p in pending)
            if have < per_rank:
                continue
            x = torch.cat([p[0] for p in pending])
            t = torch.cat([p[1] for p in pending])
            tt = torch.cat([p[2] for p in pending]) if teacher_tokens is not None else None
            pending = [(x[per_rank:], t[per_rank:], None if tt is None else tt[per_rank:])] if have > per_rank else []
            if step >= start:
                yield (x[:per_rank], t[:per_rank]) if tt is None else (x[:per_rank], t[:per_rank], tt[:per_rank])
            step += 1


def open_sources(specs: Sequence[str], img_key=None, caption_key=None, separator=None) -> list:
    """The readers' sources of the training data specs (a :class:`DatasetError` when there are none)."""
    if not specs:
        raise DatasetError("no training data: pass --data (a CSV, shards, TFRecord files or a folder) or a recipe")
    return [open_dataset(s, split="train", img_key=img_key, caption_key=caption_key, separator=separator)
            for s in specs]
