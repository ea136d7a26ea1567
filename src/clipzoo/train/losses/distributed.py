"""Collective helpers shared by every objective: gathers with and without gradients, means, neighbour exchange.

All helpers are no-ops when ``torch.distributed`` is unavailable or not initialised, so the objectives run
unchanged in a single process. Every rank must pass tensors of the same shape (equal local batch sizes): under
``torch.distributed`` each gather first all-gathers the local shape (:func:`check_same_shape`, a few numbers) and
raises a :class:`~clipzoo.train.losses.base.LossInputError` naming the ranks' sizes, where gloo aborted the process
("Received data size doesn't match expected size") and NCCL could hang.

Gradient semantics (open_clip's ``gather_features``):

* :func:`all_gather_with_grad` — forward concatenates every rank's tensor; backward sums the incoming gradient
  over ranks and hands each rank the slice of its own input. So after each rank calls ``loss_r.backward()``, the
  gradient on rank r's local input is ``d(sum_q loss_q) / d x_r``.
* :func:`all_gather_no_grad` — the gathered copy carries no gradient; ``gather_features(..., local_loss=False)``
  puts the local tensor (with its gradient) back into its own slot, as open_clip does.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .base import LossInputError

__all__ = ["is_distributed", "world_info", "check_same_shape", "all_gather_with_grad", "all_gather_no_grad",
           "gather_features", "all_reduce_mean", "all_reduce_sum", "broadcast_", "neighbour_exchange_with_grad"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def check_same_shape(*xs: torch.Tensor) -> None:
    """Raise, on every rank alike, unless every rank's tensors ``xs`` have this rank's rows and sizes (call it only
    under ``torch.distributed``): one all-gather of two numbers a tensor and one read of them on the host, however
    many tensors are checked (:func:`gather_features` checks its image and text features at once)."""
    local = torch.tensor([n for x in xs for n in (x.shape[0] if x.ndim else 1, x.numel())], dtype=torch.long,
                         device=xs[0].device)
    shapes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, local)
    table = torch.stack(shapes).tolist()  # one device-to-host copy (an int() per number synchronised each)
    for k in range(len(xs)):
        rows, sizes = [r[2 * k] for r in table], [r[2 * k + 1] for r in table]
        if len(set(rows)) > 1:
            raise LossInputError(f"the ranks hold different local batch sizes {rows} (rank order); every rank needs "
                                 "the same number of samples per step: make the global batch a multiple of the world "
                                 "size and drop the last partial batch")
        if len(set(sizes)) > 1:
            raise LossInputError(f"the ranks' features differ in width: "
                                 f"{[n // max(r, 1) for n, r in zip(sizes, rows)]} values per sample (rank order); "
                                 "every rank must run the same model")


class _AllGatherGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        world = dist.get_world_size()
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow back to every rank's input."""
    if not is_distributed():
        return x
    check_same_shape(x)
    return _AllGatherGrad.apply(x)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient."""
    if not is_distributed():
        return x.detach()
    check_same_shape(x)
    return _gather_checked(x)


@torch.no_grad()
def _gather_checked(x: torch.Tensor) -> torch.Tensor:
    """:func:`all_gather_no_grad` of a tensor whose shape :func:`check_same_shape` has checked."""
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, dim=0)


def gather_features(image_features, text_features, *, local_loss=False, gather_with_grad=False):
    """open_clip's ``gather_features`` (torch.distributed path): global image and text feature matrices.

    ``gather_with_grad=True``: every slot carries gradient. Otherwise the gathered copies are detached and, when
    ``local_loss=False``, this rank's own slot is replaced by its local (gradient-carrying) tensor. Both features'
    shapes are checked in one collective.
    """
    if not is_distributed():
        return image_features, text_features
    check_same_shape(image_features, text_features)
    if gather_with_grad:
        return _AllGatherGrad.apply(image_features), _AllGatherGrad.apply(text_features)
    rank, world = world_info()
    out = []
    for x in (image_features, text_features):
        parts = list(_gather_checked(x).chunk(world, dim=0))
        if not local_loss:
            parts[rank] = x
        out.append(torch.cat(parts, dim=0))
    return out[0], out[1]


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (no gradient)."""
    return all_reduce_sum(x) / world_info()[1]


@torch.no_grad()
def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src`` (no-op in a single process)."""
    if is_distributed():
        dist.broadcast(x, src=src)
    return x


def _exchange(from_rank: int, to_rank: int, tensor: torch.Tensor) -> torch.Tensor:
    recv = torch.empty_like(tensor)
    ops = [dist.P2POp(dist.isend, tensor.contiguous(), to_rank), dist.P2POp(dist.irecv, recv, from_rank)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return recv


class _NeighbourExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, from_rank, to_rank, tensor):
        ctx.from_rank, ctx.to_rank = from_rank, to_rank
        return _exchange(from_rank, to_rank, tensor)

    @staticmethod
    def backward(ctx, grad):
        return None, None, _NeighbourExchange.apply(ctx.to_rank, ctx.from_rank, grad.contiguous())


def neighbour_exchange_with_grad(from_rank: int, to_rank: int, tensor: torch.Tensor) -> torch.Tensor:
    """Send ``tensor`` to ``to_rank`` and receive one from ``from_rank``; the gradient travels back the other way
    (open_clip's ``neighbour_exchange_with_grad``)."""
    check_same_shape(tensor)
    return _NeighbourExchange.apply(from_rank, to_rank, tensor)
