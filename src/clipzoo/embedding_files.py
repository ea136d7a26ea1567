"""Embedding collections into ``.npy`` files: streamed to disk, webdataset tars as input, and
sharded over ``torchrun`` ranks.

- Rows go to the output file as they are computed (a memory-mapped ``.npy`` written under a temporary
  name and renamed when complete), so memory stays flat however many inputs there are.
- Inputs may be image files, folders, and uncompressed webdataset ``.tar`` shards (brace patterns such
  as ``shards-{000..009}.tar`` work): a tar's image members are indexed by offset and read at random
  by the DataLoader workers, so tar input decodes in parallel and in order.
- Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) each rank takes one contiguous share of the inputs,
  writes ``OUT.parts/part-RRRRR-of-WWWWW.npy`` (+ ``.json``), waits for the others, and rank 0 joins the
  parts into ``OUT.npy`` in rank order: the result equals a single-process run. The output folder must be
  shared by all ranks (on several machines: a shared filesystem, or copy the parts and call
  :func:`merge_parts`).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadImageError, ClipzooError

__all__ = ["TarMember", "tar_image_members", "expand_image_inputs", "shard_bounds", "DistributedInfo",
           "distributed_info", "embed_to_file", "merge_parts", "parts_dir"]

_TAR_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


# ------------------------------------------------------------------ webdataset tars
@dataclass(frozen=True)
class TarMember:
    """One image inside an uncompressed tar, addressed by byte offset (picklable for DataLoader workers)."""

    tar: str
    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.tar}#{self.name}"

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def open_rgb(self, draft_size: int | None = None):
        from .inputs import load_rgb

        try:
            return load_rgb(io.BytesIO(self.read()), draft_size)
        except Exception as exc:  # noqa: BLE001 - any decoder failure names the member
            raise BadImageError(f"image {str(self)!r} cannot be decoded ({type(exc).__name__}: {exc}); "
                                "is the tar member a corrupt or non-image file?") from None


def tar_image_members(path: "str | os.PathLike") -> list[TarMember]:
    """The image members of an uncompressed (webdataset) tar, in tar order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BadImageError(f"tar shard {path!r} does not exist; check the path (brace patterns such as "
                            "shards-{000..009}.tar are expanded)")
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = [TarMember(path, m.name, m.offset_data, m.size) for m in tar
                       if m.isfile() and os.path.splitext(m.name)[1].lower() in _TAR_IMAGE_EXTS]
    except tarfile.ReadError as exc:
        raise BadImageError(f"tar shard {path!r} is not an uncompressed tar ({exc}); webdataset shards are "
                            "plain .tar files — decompress it first") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadImageError(f"tar shard {path!r} cannot be read ({exc}); it may be truncated") from None
    return members


def expand_image_inputs(inputs: "str | os.PathLike | Iterable[str | os.PathLike]") -> list:
    """Files, folders (recursively, sorted) and ``.tar`` shards (brace patterns expanded) -> a list of
    image paths (str) and :class:`TarMember` s, in the order given."""
    from braceexpand import braceexpand

    from .embedding import expand_image_paths

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list = []
    for given in inputs:
        if isinstance(given, TarMember):  # already expanded
            out.append(given)
            continue
        text = os.fspath(given)
        if text.lower().endswith(".tar") or ("{" in text and ".tar" in text.lower()):
            for path in braceexpand(text):
                members = tar_image_members(os.path.expanduser(path))
                if not members:
                    raise BadImageError(f"tar shard {path!r} holds no image members ({', '.join(_TAR_IMAGE_EXTS)})")
                out.extend(members)
        else:
            out.extend(expand_image_paths(text))
    if not out:
        raise BadImageError("no images given; pass image files, folders or .tar shards")
    return out


# ------------------------------------------------------------------ ranks
@dataclass(frozen=True)
class DistributedInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def distributed_info() -> DistributedInfo:
    """Rank facts from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ClipzooError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ClipzooError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return DistributedInfo(rank, world, local)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``n`` items for ``rank``: sizes differ by at most one,
    and the shares of ranks 0, 1, … in order are the items in order."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _barrier(info: DistributedInfo) -> None:
    """Wait for every rank (a gloo process group, made here when torchrun did not make one)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size)
    dist.barrier()


# ------------------------------------------------------------------ streamed rows
class _RowWriter:
    """Rows appended to a memory-mapped ``.npy`` sized for ``capacity`` rows; :meth:`commit` trims it to
    the rows written and renames it into place, so ``path`` appears whole or not at all."""

    def __init__(self, path: Path, capacity: int):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.capacity = capacity
        self.rows = 0
        self.array = None

    def append(self, block) -> None:
        import numpy as np

        if self.array is None:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                   shape=(self.capacity, block.shape[1]))
        self.array[self.rows:self.rows + len(block)] = block
        self.rows += len(block)

    def commit(self, dim: int) -> None:
        import numpy as np

        if self.array is None:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(0, dim))
        self.array.flush()
        array, self.array = self.array, None
        if self.rows < self.capacity:  # some inputs were skipped: write the kept rows only
            trimmed = self.tmp.with_name(self.tmp.name + "-trim")
            out = np.lib.format.open_memmap(trimmed, mode="w+", dtype=np.float32, shape=(self.rows, array.shape[1]))
            for start in range(0, self.rows, 65536):
                stop = min(start + 65536, self.rows)
                out[start:stop] = array[start:stop]
            out.flush()
            del out, array
            os.replace(trimmed, self.tmp)
        else:
            del array
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.array = None
        for p in (self.tmp, self.tmp.with_name(self.tmp.name + "-trim")):
            p.unlink(missing_ok=True)


def parts_dir(out: "str | os.PathLike") -> Path:
    """``photos.npy`` -> ``photos.parts/``: where the ranks of a distributed run write their shares."""
    from .embedding import _npy_path

    npy = _npy_path(out)
    return npy.with_name(npy.stem + ".parts")


def _part_name(rank: int, world_size: int) -> str:
    return f"part-{rank:05d}-of-{world_size:05d}.npy"


# ------------------------------------------------------------------ the run
def embed_to_file(comparator, out: "str | os.PathLike", *, images: Any = None, texts: Sequence[str] | None = None,
                  batch_size: int | None = None, workers: int | None = None, normalize: bool = True,
                  progress: bool = False, skip_bad: bool = False, truncate: bool = False, fast_decode: bool = True,
                  info: DistributedInfo | None = None) -> dict[str, Any]:
    """Embed ``images`` (files, folders, tar shards) or ``texts`` with ``comparator`` straight into
    ``out`` (``.npy`` + JSON sidecar). Under torchrun each rank embeds its share and rank 0 merges.

    Returns the sidecar's metadata (for a rank other than 0 in a distributed run: its part's).
    """
    from .cards import IMAGE, TEXT
    from .embedding import _check_batch_size, _npy_path, write_sidecar

    if (images is None) == (texts is None):
        raise ClipzooError("pass exactly one of images= or texts=")
    info = info or distributed_info()
    items = expand_image_inputs(images) if images is not None else list(texts)
    modality = IMAGE if images is not None else TEXT
    comparator._require(modality)
    batch_size = _check_batch_size(batch_size or (64 if modality == IMAGE else 256))
    start, stop = shard_bounds(len(items), info.rank, info.world_size)
    mine = items[start:stop]
    npy = _npy_path(out)
    target = parts_dir(npy) / _part_name(info.rank, info.world_size) if info.active else npy
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = _RowWriter(target, len(mine))
    names: list[str] = []
    skipped: list[dict[str, str]] = []
    try:
        if modality == IMAGE:
            batches = image_batches(comparator, mine, batch_size, workers, normalize, progress, skip_bad,
                                     fast_decode, info)
        else:
            batches = text_batches(comparator, mine, batch_size, normalize, progress, truncate)
        for batch_names, feats, batch_skipped in batches:
            if len(batch_names):
                writer.append(feats)
                names.extend(batch_names)
            skipped.extend(batch_skipped)
        meta = {"model": comparator.card.alias, "modality": modality, "count": writer.rows,
                "dim": int(comparator.embed_dim), "dtype": "float32", "normalized": normalize,
                "inputs": names, "skipped": skipped}
        if info.active:
            meta["part"] = {"rank": info.rank, "world_size": info.world_size, "start": start, "stop": stop}
        writer.commit(int(comparator.embed_dim))
    except BaseException:
        writer.abort()
        raise
    write_sidecar(target, meta)
    if modality == IMAGE and not names and not info.active:
        raise BadImageError(f"none of the {len(items)} images could be decoded; first error: "
                            f"{skipped[0]['error'] if skipped else '(none)'}")
    if info.active:
        _barrier(info)
        if info.rank == 0:
            return merge_parts(npy, info.world_size)
    return meta


def merge_parts(out: "str | os.PathLike", world_size: int) -> dict[str, Any]:
    """Join ``OUT.parts/part-*-of-WORLD.npy`` in rank order into ``OUT.npy`` + sidecar (the parts stay)."""
    import numpy as np

    from .embedding import _npy_path, sidecar_path, write_sidecar

    npy = _npy_path(out)
    folder = parts_dir(npy)
    parts = [folder / _part_name(r, world_size) for r in range(world_size)]
    missing = [str(p) for p in parts if not p.is_file() or not sidecar_path(p).is_file()]
    if missing:
        raise ClipzooError(f"cannot merge {npy}: part(s) {', '.join(missing)} are missing; every rank must "
                           "finish, and on several machines the output folder must be shared (or copy the "
                           "parts there and call clipzoo.embedding_files.merge_parts)")
    metas = [json.loads(sidecar_path(p).read_text(encoding="utf-8")) for p in parts]
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    dims = {a.shape[1] for a in arrays if a.shape[0]} or {metas[0]["dim"]}
    if len(dims) != 1 or len({m["model"] for m in metas}) != 1:
        raise ClipzooError(f"cannot merge {npy}: its parts were written by different models or dimensions")
    total = sum(a.shape[0] for a in arrays)
    writer = _RowWriter(npy, total)
    try:
        for a in arrays:
            for s in range(0, a.shape[0], 65536):
                writer.append(np.asarray(a[s:s + 65536]))
        writer.commit(dims.pop())
    except BaseException:
        writer.abort()
        raise
    meta = {k: v for k, v in metas[0].items() if k != "part"}
    meta.update(count=total, inputs=[x for m in metas for x in m["inputs"]],
                skipped=[x for m in metas for x in m["skipped"]], merged_from=world_size)
    write_sidecar(npy, meta)
    return meta


def image_batches(comparator, items: list, batch_size: int, workers, normalize: bool, progress: bool,
                   skip_bad: bool, fast_decode: bool, info: DistributedInfo) -> Iterator[tuple[list[str], Any, list]]:
    import torch

    from .embedding import _progress, draft_size_for, image_loader

    device = torch.device(comparator.device)
    loader = image_loader(items, comparator.transform, batch_size, workers, pin_memory=device.type == "cuda",
                          draft_size=draft_size_for(comparator) if fast_decode else None)
    label = f"embedding {len(items)} images" + (f" (rank {info.rank}/{info.world_size})" if info.active else "")
    with _progress(len(items), label, progress) as advance:
        for indices, pixels, errors in loader:
            if errors and not skip_bad:
                raise BadImageError(f"{errors[0][1]} (to leave such images out: --skip-bad, skip_bad=True)")
            skipped = [{"input": str(items[i]), "error": err} for i, err in errors]
            if pixels is not None:
                feats = comparator.encode_image(pixels.to(device, non_blocking=True), normalize=normalize)
                yield [str(items[i]) for i in indices], feats.float().cpu().numpy(), skipped
            else:
                yield [], None, skipped
            advance(len(indices) + len(errors))


def text_batches(comparator, texts: list[str], batch_size: int, normalize: bool, progress: bool,
                  truncate: bool) -> Iterator[tuple[list[str], Any, list]]:
    from .embedding import _progress

    with _progress(len(texts), f"embedding {len(texts)} texts", progress) as advance:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            feats = comparator.encode_text(chunk, normalize=normalize, batch_size=batch_size, truncate=truncate)
            yield chunk, feats.float().cpu().numpy(), []
            advance(len(chunk))
