"""Sharding an embedding run over ``torchrun`` ranks, and joining the ranks' parts.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) each rank takes one contiguous share of the inputs,
writes ``OUT.parts/part-RRRRR-of-WWWWW.npy`` (+ ``.json``), waits for the others, and rank 0 joins the
parts into ``OUT.npy`` in rank order: the result equals a single-process run. The output folder must be
shared by all ranks (on several machines: a shared filesystem, or copy the parts and call
:func:`merge_parts`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ClipzooError
from .results import npy_path, sidecar_path, write_sidecar
from .writers import COPY_ROWS, RowWriter

__all__ = ["DistributedInfo", "distributed_info", "shard_bounds", "barrier", "parts_dir", "part_name",
           "merge_parts"]


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


def barrier(info: DistributedInfo) -> None:
    """Wait for every rank (a gloo process group, made here when torchrun did not make one)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size)
    dist.barrier()


def parts_dir(out: "str | os.PathLike") -> Path:
    """``photos.npy`` -> ``photos.parts/``: where the ranks of a distributed run write their shares."""
    npy = npy_path(out)
    return npy.with_name(npy.stem + ".parts")


def part_name(rank: int, world_size: int) -> str:
    """The file name of one rank's part: ``part-RRRRR-of-WWWWW.npy``."""
    return f"part-{rank:05d}-of-{world_size:05d}.npy"


def merge_parts(out: "str | os.PathLike", world_size: int) -> dict[str, Any]:
    """Join ``OUT.parts/part-*-of-WORLD.npy`` in rank order into ``OUT.npy`` + sidecar (the parts stay)."""
    import numpy as np

    npy = npy_path(out)
    folder = parts_dir(npy)
    parts = [folder / part_name(r, world_size) for r in range(world_size)]
    missing = [str(p) for p in parts if not p.is_file() or not sidecar_path(p).is_file()]
    if missing:
        raise ClipzooError(f"cannot merge {npy}: part(s) {', '.join(missing)} are missing; every rank must "
                           "finish, and on several machines the output folder must be shared (or copy the "
                           "parts there and call clipzoo.embed.merge_parts)")
    metas = [json.loads(sidecar_path(p).read_text(encoding="utf-8")) for p in parts]
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    dims = {a.shape[1] for a in arrays if a.shape[0]} or {metas[0]["dim"]}
    if len(dims) != 1 or len({m["model"] for m in metas}) != 1:
        raise ClipzooError(f"cannot merge {npy}: its parts were written by different models or dimensions")
    total = sum(a.shape[0] for a in arrays)
    writer = RowWriter(npy, total)
    try:
        for a in arrays:
            for s in range(0, a.shape[0], COPY_ROWS):
                writer.append(np.asarray(a[s:s + COPY_ROWS]))
        writer.commit(dims.pop())
    except BaseException:
        writer.abort()
        raise
    meta = {k: v for k, v in metas[0].items() if k != "part"}
    meta.update(count=total, inputs=[x for m in metas for x in m["inputs"]],
                skipped=[x for m in metas for x in m["skipped"]], merged_from=world_size)
    write_sidecar(npy, meta)
    return meta
