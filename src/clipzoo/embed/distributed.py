"""Sharding an embedding run over ``torchrun`` ranks, and joining the ranks' parts.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) each rank takes one contiguous share of the inputs,
writes ``OUT.parts/part-RRRRR-of-WWWWW.npy`` (+ ``.json``), waits for the others, and rank 0 joins the
parts into ``OUT.npy`` in rank order: the result equals a single-process run. The output folder must be
shared by all ranks (on several machines: a shared filesystem, or copy the parts and call
:func:`merge_parts`). Each part is checked before it is joined (:func:`read_part`): a part cut short by a partial
copy, or one that is not an array of rows, is a one-line error naming it, never rows out of step with the inputs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cards import TEXT
from ..errors import ClipzooError, one_line
from .results import check_outputs, npy_path, sidecar_path, write_sidecar
from .writers import COPY_ROWS, RowWriter

__all__ = ["DistributedInfo", "distributed_info", "shard_bounds", "barrier", "parts_dir", "part_name",
           "merge_parts", "read_part"]


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


def read_part(part: "str | os.PathLike") -> tuple[dict[str, Any], Any]:
    """One part's record (its JSON sidecar) and rows (memory-mapped), checked: the record reads, the rows load as a
    2-D array, their count equals the record's ``count`` and its list of ``inputs``, and their width its ``dim``.
    Anything else is a one-line :class:`ClipzooError` naming the file and what is wrong with it."""
    import numpy as np

    part = Path(part)
    side = sidecar_path(part)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        count, dim, inputs = int(meta["count"]), meta["dim"], meta["inputs"]
        meta["model"]  # noqa: B018 - shape check
        if not all(isinstance(v, t) for v, t in ((inputs, list), (meta.get("skipped", []), list),
                                                  (meta.get("part", {}), dict))):
            raise TypeError("inputs, skipped and part have the wrong types")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ClipzooError(f"part record {str(side)!r} is unreadable ({type(exc).__name__}: {one_line(exc, 120)})") \
            from None
    try:
        rows = np.load(part, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise ClipzooError(f"part {str(part)!r} is not a readable .npy file ({one_line(exc, 120)})") from None
    if rows.size == 0 and count == 0 and not inputs:  # a rank or shard with no rows
        return meta, np.zeros((0, int(dim or 0)), np.float32)
    if rows.ndim != 2:
        raise ClipzooError(f"part {str(part)!r} holds a {rows.ndim}-D array of shape {tuple(rows.shape)}, not rows "
                           "of embeddings")
    if not rows.shape[0] == count == len(inputs):
        raise ClipzooError(f"part {str(part)!r} holds {rows.shape[0]} rows but its record {side.name} counts {count} "
                           f"and lists {len(inputs)} inputs (cut short, or copied in part?)")
    if dim is not None and rows.shape[1] != dim:
        raise ClipzooError(f"part {str(part)!r} holds rows {rows.shape[1]} wide but its record {side.name} says {dim}")
    return meta, rows


def merge_parts(out: "str | os.PathLike", world_size: int) -> dict[str, Any]:
    """Join ``OUT.parts/part-*-of-WORLD.npy`` in rank order into ``OUT.npy`` + sidecar (the parts stay). Each part
    is checked first (:func:`read_part`), and the output places (:func:`~clipzoo.embed.results.check_outputs`); the
    sidecar is written just before the ``.npy`` is renamed into place, so a refused sidecar leaves no new ``.npy``."""
    import numpy as np

    npy = npy_path(out)
    folder = parts_dir(npy)
    parts = [folder / part_name(r, world_size) for r in range(world_size)]
    missing = [str(p) for p in parts if not p.is_file() or not sidecar_path(p).is_file()]
    if missing:
        raise ClipzooError(f"cannot merge {npy}: part(s) {', '.join(missing)} are missing; every rank must "
                           "finish, and on several machines the output folder must be shared (or copy the "
                           "parts there and call clipzoo.embed.merge_parts)")
    read = []
    for p in parts:
        try:
            read.append(read_part(p))
        except ClipzooError as exc:
            raise ClipzooError(f"cannot merge {npy}: {exc}; copy that part again from the machine that wrote it, "
                               "or rerun the run that wrote it (--engine ray redoes such a shard)") from None
    metas, arrays = [m for m, _ in read], [a for _, a in read]
    dims = {a.shape[1] for a in arrays if a.shape[0]} or {metas[0]["dim"]}
    weights = {str(m.get("part", {}).get("model_weights")) for m in metas}
    if len(dims) != 1 or len({m["model"] for m in metas}) != 1 or len(weights) != 1:
        raise ClipzooError(f"cannot merge {npy}: its parts were written by different models, weights or dimensions")
    meta = {k: v for k, v in metas[0].items() if k != "part"}
    meta.update(count=sum(a.shape[0] for a in arrays), inputs=[x for m in metas for x in m["inputs"]],
                skipped=[x for m in metas for x in m.get("skipped", [])], merged_from=world_size)
    check_outputs(npy, meta["inputs"] if meta.get("modality") != TEXT else ())  # a folder or an input there
    writer = RowWriter(npy, meta["count"])
    try:
        for a in arrays:
            for s in range(0, a.shape[0], COPY_ROWS):
                writer.append(np.asarray(a[s:s + COPY_ROWS]))
        writer.commit(dims.pop(), before_replace=lambda: write_sidecar(npy, meta))
    except BaseException:
        writer.abort()
        raise
    return meta
