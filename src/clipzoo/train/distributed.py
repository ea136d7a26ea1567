"""One process or many (torchrun): the device, the process group, and what DDP needs of the model and the logs.

Under torchrun (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set) each process trains on its share of the global
batch; the objectives gather features across processes themselves, so N processes give one process's result.
"""
from __future__ import annotations

import copy
import os

import torch

from ..api import absent_device, check_device
from ..models.spec import ConfigError

__all__ = ["dist_env", "pick_device", "init_distributed", "mean_over_ranks", "barrier", "wrap_ddp",
           "freeze_unused"]


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 when run alone)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(name: str) -> torch.device:
    """``auto``: this process's GPU (its local rank) when CUDA is there, else the CPU. A name torch does not know
    (``tpu``) or a device this machine lacks (``cuda`` without CUDA, ``mps`` off a Mac) is a
    :class:`~clipzoo.errors.ClipzooError` now — it was a torch RuntimeError once the model was built."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_env()[2])
        return torch.device("cpu")
    check_device(name)
    device = torch.device(name)
    absent = absent_device(name)
    backend = getattr(torch, device.type, None)  # torch.mps, torch.xpu, …
    if absent is None and device.type not in ("cpu", "cuda") and not getattr(backend, "is_available", bool)():
        absent = f"device {name!r}: torch has no {device.type} device here; use device='cpu'"
    if absent is not None:
        raise ConfigError(absent)
    return device


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on the CPU); (rank, world size)."""
    import torch.distributed as dist

    rank, world, _ = dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return rank, world


def mean_over_ranks(value: float, device) -> float:
    """The mean of a number over all processes."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _probe(module, n: int, dim: int, teacher, device) -> tuple[dict, dict]:
    """Random model outputs (and teacher features) of the right shapes, to call an objective on."""
    g = torch.Generator().manual_seed(0)
    probe = {"image_features": torch.randn(n, dim, generator=g), "text_features": torch.randn(n, dim, generator=g),
             "logit_scale": torch.tensor(10.0)}
    if getattr(module, "logit_bias", None) is not None:
        probe["logit_bias"] = torch.tensor(-10.0)
    probe = {k: v.to(device).requires_grad_() for k, v in probe.items()}
    extra = {}
    if teacher is not None:
        if "image" in teacher.modalities:
            extra["teacher_image_features"] = torch.randn(n, teacher.embed_dim, generator=g).to(device)
        if "text" in teacher.modalities:
            extra["teacher_text_features"] = torch.randn(n, teacher.embed_dim, generator=g).to(device)
    return probe, extra


def _output_of(name: str) -> str:
    """The model output a parameter feeds."""
    if name.startswith(("visual.", "image.", "image_head.")):
        return "image_features"
    if name in ("logit_scale", "logit_bias"):
        return name
    return "text_features"


def freeze_unused(module, loss_fn, n: int, dim: "int | None", teacher, device) -> list[str]:
    """Under DDP: freeze the parameters behind model outputs the objective never reads (distillation objectives
    leave the logit scale, often a whole tower, without gradient), which DDP would otherwise wait for. A single
    process leaves their gradients None, so AdamW never touches them either: the result is the same.

    Which outputs are read is found by calling a copy of the objective on random features of the right shapes."""
    if not dim:
        return []
    probe, extra = _probe(module, n, dim, teacher, device)
    try:
        loss = copy.deepcopy(loss_fn)(**probe, **extra)["loss"]
        grads = torch.autograd.grad(loss, list(probe.values()), allow_unused=True)
    except Exception:  # the objective cannot run on random features: leave the model as it is
        return []
    unused = {k for k, gr in zip(probe, grads) if gr is None}
    frozen = []
    for name, p in module.named_parameters():
        if _output_of(name) in unused and p.requires_grad:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
