"""The training loop: one process or many (torchrun), exact resume, atomic checkpoints.

Per step: this rank's share of the global batch → features → the objective (features gathered
across ranks by the loss itself) → backward → clip → AdamW → cosine schedule → logit-scale clamp →
EMA. Gradient accumulation caches the features of every micro-batch first (as open_clip does), so a
contrastive loss still sees the whole batch and the gradient equals the unaccumulated one.

Checkpoints (``OUTPUT/checkpoints/step_000123.pt``, ``OUTPUT/checkpoints/latest``) hold the model,
optimizer, schedule, scaler, EMA, objective state (queues, centres), RNG state and the data position,
written to a temporary file and renamed. ``resume="latest"`` continues exactly where the run stopped.
A NaN / inf loss stops the run naming the step; the last good checkpoint stays.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ClipzooError
from .config import ConfigError, TrainConfig
from .model import TrainModel, build_model, param_groups, save_trained
from .storage import Location, MetricsLog, torch_load_url, url_exists

__all__ = ["train", "TrainResult", "TrainingError", "latest_checkpoint"]


class TrainingError(ClipzooError):
    """Training cannot go on: a non-finite loss, a checkpoint that does not fit."""


@dataclass
class TrainResult:
    output: "Path | str"  # a local folder, or the fsspec URL of a remote one
    model_dir: "Path | str"
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    skipped_images: int = 0


# ------------------------------------------------------------------ distributed
def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _init_distributed(device: torch.device) -> tuple[int, int]:
    import torch.distributed as dist

    rank, world, _ = _dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return rank, world


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _dist_env()[2])
        return torch.device("cpu")
    return torch.device(name)


# ------------------------------------------------------------------ schedule, EMA
def lr_lambda(warmup: int, total: int, schedule: str) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


class EMA:
    """Exponential moving average of the floating-point weights."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for k, v in sd.items():
            self.shadow[k].copy_(v)


# ------------------------------------------------------------------ checkpoints
def _checkpoints(output: "str | os.PathLike", checkpoint_dir: "str | None" = None) -> Location:
    return Location(checkpoint_dir) if checkpoint_dir else Location(output).child("checkpoints")


def latest_checkpoint(output: "str | os.PathLike", checkpoint_dir: "str | None" = None) -> "Path | str | None":
    """The checkpoint ``latest`` names (else the highest step): a Path, or a URL for remote folders."""
    return _latest(_checkpoints(output, checkpoint_dir))


def _latest(ckpt: Location) -> "Path | str | None":
    if ckpt.exists("latest"):
        name = ckpt.read_text("latest").strip()
        if name and ckpt.exists(name):
            return _named(ckpt, name)
    found = ckpt.glob_names("step_*.pt")
    return _named(ckpt, found[-1]) if found else None


def _named(ckpt: Location, name: str) -> "Path | str":
    return ckpt.local / name if ckpt.local is not None else ckpt.name_of(name)


def _save_checkpoint(ckpt: Location, state: dict[str, Any], step: int) -> "Path | str":
    """``step_NNNNNNN.pt`` then the ``latest`` marker, each written to a temporary name and renamed / moved."""
    name = f"step_{step:07d}.pt"
    ckpt.torch_save(name, state)
    ckpt.write_text("latest", name + "\n")
    return _named(ckpt, name)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} (checkpoint) vs {b!r} (now)"]


# ------------------------------------------------------------------ the comparator of the model in training
def comparator_of(model: TrainModel, name: str = "training"):
    from ..backends.open_clip import OpenClipComparator
    from ..cards import ModelCard

    if model.kind == "composite":
        from ..backends.composite import comparator_for

        card = ModelCard(architecture="clip", publisher="local", id=name, backend="composite")
        return comparator_for(card, model.module, model.tokenizer, model.preprocess_cfg)
    card = ModelCard(architecture="clip", publisher="local", id=name, backend="open_clip")
    return OpenClipComparator(card, model.module, transform=model.eval_transform, tokenizer=model.tokenizer,
                              precision="fp32", model_name=None, model_config=model.model_cfg,
                              preprocess_config=model.preprocess_cfg)


# ------------------------------------------------------------------ the loop
def _lock(module: torch.nn.Module, cfg: TrainConfig) -> None:
    if cfg.lock_image:
        module.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_layers, freeze_bn_stats=True)
    if cfg.lock_text:
        module.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)


def convolutional_layout(module) -> torch.memory_format:
    """Channels-last for an image tower made of convolutions (ResNets, ConvNeXts): oneDNN's and cuDNN's
    convolutions run faster on NHWC tensors (the tiny-shapes ResNet's forward and backward: 1.5× on 2
    CPU cores), with the same maths. The weights are converted in place; returns the format for the
    input images (``torch.contiguous_format`` for towers with at most one convolution, e.g. a ViT's
    patch embedding)."""
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    if convs <= 1:
        return torch.contiguous_format
    module.to(memory_format=torch.channels_last)
    return torch.channels_last


def trim_text_padding(module) -> bool:
    """Let an open_clip CLIP with a causal, end-of-text-pooled text tower run its text transformer only up
    to each batch's longest caption (:func:`clipzoo.backends.open_clip._encode_text_trimmed`): the same
    features and gradients — the columns after the last end-of-text token never reach the pooled output —
    for less work (captions of ~10 tokens in a context of 24 or 77). Returns whether it applies."""
    from ..backends.open_clip import _trimmable

    if not _trimmable(module):
        return False
    # a partial (not a closure) so that copy.deepcopy (EMA) binds the copy to the copied module
    module.__dict__["encode_text"] = functools.partial(_encode_text_trimmed, module)
    return True


def _encode_text_trimmed(module, text, normalize: bool = False):
    from ..backends.open_clip import encode_text_padding_free

    x = encode_text_padding_free(module, text)
    return torch.nn.functional.normalize(x, dim=-1) if normalize else x


def _features(module, images, tokens):
    out = module(images, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    return out[0], out[1], out[2], (out[3] if len(out) > 3 else None)


def train(cfg: TrainConfig, data=None, model: "TrainModel | None" = None,
          on_step: "Callable[[int, dict], None] | None" = None, teacher=None) -> TrainResult:
    """Train as ``cfg`` says; ``data`` (a :class:`~clipzoo.train.data.MemoryData` / ``StreamData``) and
    ``model`` default to what the config names; ``teacher`` (a loaded Comparator) overrides ``cfg.teacher``.
    Returns where the trained model folder is."""
    from .data import StreamData, open_sources
    from .distill import attach_teacher, check_teacher, fill_loss_options, load_teacher, student_dim
    from .losses import build_loss

    t_start = time.perf_counter()
    device = _device(cfg.device)
    rank, world = _init_distributed(device)
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"batch_size {cfg.batch_size} must divide by processes × grad_accum = {world * cfg.grad_accum}")
    if teacher is None:
        check_teacher(cfg)
    torch.manual_seed(cfg.seed)
    out = Location(cfg.output)
    output = out.local if out.local is not None else out.url
    ckpt_dir = _checkpoints(cfg.output, cfg.checkpoint_dir)
    model = model or build_model(cfg)
    module = model.module.to(device)
    trim_text_padding(module)
    memory_format = convolutional_layout(module)
    _lock(module, cfg)
    if cfg.grad_checkpointing:
        module.set_grad_checkpointing(True)
    if hasattr(module, "output_dict"):
        module.output_dict = True
    from .recipes import parse_shapes_spec, shapes_data, write_heldout

    if data is None and cfg.data and parse_shapes_spec(cfg.data[0]):
        if len(cfg.data) > 1:
            raise ConfigError("generated shapes (shapes:N, shapes-classes:N) cannot be mixed with other data sources")
        data = shapes_data(cfg.data[0], model, cfg.seed, cfg.workers)
    if cfg.eval_data and cfg.eval_data.startswith("shapes-heldout:"):
        size = model.preprocess_cfg["size"]
        held = out.local / "heldout" if out.local is not None else Path(_scratch(cfg)) / "heldout"
        if rank == 0:
            write_heldout(cfg.eval_data, held, size[0] if isinstance(size, (list, tuple)) else size)
        cfg = cfg.replace(eval_data=str(held))
    if data is None:
        sources = open_sources(cfg.data, cfg.img_key, cfg.caption_key, cfg.separator)
        data = StreamData(sources, model.train_transform, model.tokenizer, cfg.seed, cfg.workers,
                          cfg.train_num_samples, cfg.data_weights)
    if teacher is not None or cfg.teacher:
        teacher = load_teacher(teacher if teacher is not None else cfg.teacher, model.preprocess_cfg["mean"],
                               model.preprocess_cfg["std"], device)
        attach_teacher(data, teacher)
    steps_per_epoch = data.steps_per_epoch(cfg.batch_size)
    if steps_per_epoch < 1:
        raise ConfigError(f"the data holds fewer samples than one batch of {cfg.batch_size}")
    total = cfg.steps or steps_per_epoch * cfg.epochs
    start_weights = ({k: v.detach().clone() for k, v in module.state_dict().items()} if cfg.wise_ft is not None
                     else None)

    groups = param_groups(module, cfg.weight_decay, cfg.lr, cfg.layer_decay)
    params = [p for g in groups for p in g["params"]]
    # the fused kernel: one pass over all tensors (PyTorch's CPU default loops tensor by tensor — on the
    # tiny-shapes recipe that loop took 46 ms of a 0.32 s step)
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() and p.device == params[0].device
                                                    for p in params)
    optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=cfg.lr,
                                  betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup, total, cfg.schedule))
    use_scaler = cfg.precision == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    options = dict(cfg.loss_options)
    if cfg.loss.lower() in ("infonce", "clip"):
        # gradients through the gather: with DDP's averaging, N processes then give one process's gradient
        options.setdefault("gather_with_grad", True)
    options = fill_loss_options(cfg.loss, options, student_dim(module, model.model_cfg),
                                teacher.embed_dim if teacher is not None else None)
    loss_fn = build_loss(cfg.loss, **options).to(device)
    if hasattr(module, "raw_head_scores"):  # composite models: DINO heads' prototype scores, unnormalised
        module.raw_head_scores = bool(getattr(loss_fn, "head_scores", False))
    refresh = _proto_refresh(cfg, loss_fn, steps_per_epoch)
    bank: dict[str, list[torch.Tensor]] = {"image": [], "text": [], "teacher_text": []}
    ema = EMA(module, cfg.ema) if cfg.ema else None

    step, epoch, batch_in_epoch = 0, 0, 0
    if cfg.resume:
        path = _latest(ckpt_dir) if cfg.resume == "latest" else cfg.resume
        if path is None or not url_exists(str(path)):
            raise TrainingError(f"nothing to resume: no checkpoint {'in ' + str(ckpt_dir) if cfg.resume == 'latest' else cfg.resume}")
        state = torch_load_url(str(path))
        diffs = _diff(state["architecture"], cfg.architecture())
        if diffs:
            raise ConfigError(f"cannot resume from {path}: the model differs — " + "; ".join(diffs[:5]))
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        if state.get("loss"):
            loss_fn.load_state_dict(state["loss"])
        if start_weights is not None and state.get("start_weights"):
            start_weights = state["start_weights"]
        torch.set_rng_state(state["rng"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if refresh and state.get("proto_bank"):
            bank = {k: [v.to(device)] if v is not None else [] for k, v in state["proto_bank"].items()}

    train_module = module
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        _freeze_unused(module, loss_fn, cfg.batch_size // world, student_dim(module, model.model_cfg), teacher, device)
        train_module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    writer = _tensorboard(out, cfg) if rank == 0 else None
    model_dir = out.local / "model" if out.local is not None else out.name_of("model")
    result = TrainResult(output, model_dir, total)
    last_ckpt = _latest(ckpt_dir) if rank == 0 else None
    metrics = (MetricsLog(cfg.metrics_log or out.name_of("metrics.jsonl"), step if cfg.resume else None)
               if rank == 0 else None)
    micro = cfg.batch_size // world // cfg.grad_accum
    t_last, seen = time.perf_counter(), 0
    progress = _progress(total, step, cfg.progress and rank == 0)

    def state_dict_now() -> dict[str, Any]:
        return {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "model": module.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema else None,
                "loss": loss_fn.state_dict(), "rng": torch.get_rng_state(), "config": cfg.as_dict(),
                "architecture": cfg.architecture(), "start_weights": start_weights,
                "proto_bank": ({k: torch.cat(v).cpu() if v else None for k, v in bank.items()} if refresh else None)}

    with progress as advance:
        while step < total:
            for batch in data.batches(epoch, batch_in_epoch, cfg.batch_size, rank, world):
                if step >= total:
                    break
                images, tokens = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                images = images.contiguous(memory_format=memory_format)
                targets = {}
                if teacher is not None:  # the frozen teacher's features of the same batch
                    t_img, t_txt = teacher.features(images, batch[2] if len(batch) > 2 else None)
                    targets = {"teacher_image_features": t_img, "teacher_text_features": t_txt}
                loss_value, parts, scale, feats = _step(train_module, loss_fn, images, tokens, micro, cfg.grad_accum,
                                                        device, amp_dtype, scaler, targets)
                if world > 1:  # report the global loss: the mean of the ranks' losses
                    loss_value = _mean_over_ranks(loss_value, device)
                if not math.isfinite(loss_value):
                    where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else ""
                    raise TrainingError(f"the loss became {loss_value} at step {step + 1}: training stopped"
                                        f"{where} (lower the lr, add --grad-clip, or use fp32)")
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                with torch.no_grad():
                    module.logit_scale.clamp_(0, math.log(cfg.logit_scale_max))
                if ema is not None:
                    ema.update(module)
                step += 1
                batch_in_epoch += 1
                if refresh:  # ProtoCLIP: this step's features join the episode's bank; re-cluster at its end
                    bank["image"].append(feats[0])
                    bank["text"].append(feats[1])
                    if targets.get("teacher_text_features") is not None:
                        bank["teacher_text"].append(targets["teacher_text_features"].detach().float())
                    if step % refresh == 0:
                        loss_fn.update_prototypes(torch.cat(bank["image"]), torch.cat(bank["text"]),
                                                  torch.cat(bank["teacher_text"]) if bank["teacher_text"] else None)
                        bank = {k: [] for k in bank}
                seen += images.shape[0] * world
                advance(1)
                record = {"step": step, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                          "logit_scale": scale, **parts}
                if step % cfg.log_every == 0 or step == total:
                    now = time.perf_counter()
                    record["samples_per_s"] = seen / max(now - t_last, 1e-9)
                    record["elapsed_s"] = now - t_start
                    t_last, seen = now, 0
                    result.history.append(record)
                    if metrics is not None:
                        metrics.add(record)
                    if writer is not None:
                        for k, v in record.items():
                            if k != "step":
                                writer.add_scalar(f"train/{k}", v, step)
                if on_step is not None:
                    on_step(step, record)
                if rank == 0 and cfg.save_every and step % cfg.save_every == 0 and step < total:
                    last_ckpt = _save_checkpoint(ckpt_dir, state_dict_now(), step)
                    metrics.flush()
                    _sync_tensorboard(writer, out)
                if cfg.eval_every and cfg.eval_data and step % cfg.eval_every == 0 and rank == 0:
                    result.evals.append(_evaluate(model, cfg, step, writer))
                    _log_eval(metrics, result.evals[-1], t_start)
                    module.train()
            else:
                epoch += 1
                batch_in_epoch = 0
                continue
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    result.skipped_images = getattr(data, "skipped", 0)
    if rank == 0:
        _save_checkpoint(ckpt_dir, state_dict_now(), step)
        metrics.flush()
        final = dict(ema.state_dict()) if ema is not None else None
        weights = {k: v for k, v in module.state_dict().items()}
        if final:
            weights.update(final)
        if start_weights is not None:
            a = cfg.wise_ft
            weights = {k: ((1 - a) * start_weights[k].to(v) + a * v) if v.is_floating_point() else v
                       for k, v in weights.items()}
        info = {"config": cfg.as_dict(), "steps": step, "world_size": world, "history": result.history[-20:],
                "evals": result.evals}
        if out.local is not None:
            save_trained(model, result.model_dir, weights, info)
        else:  # written locally, then uploaded file by file
            import shutil
            import tempfile

            staging = Path(tempfile.mkdtemp(prefix="clipzoo-model-"))
            try:
                save_trained(model, staging / "model", weights, info)
                out.child("model").upload_dir(staging / "model")
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if cfg.eval_data and (not result.evals or result.evals[-1]["step"] != step):
            result.evals.append(_evaluate(model, cfg, step, writer))
            _log_eval(metrics, result.evals[-1], t_start)
            metrics.flush()
        if writer is not None:
            writer.close()
            _sync_tensorboard(writer, out)
    return result


def _step(module, loss_fn, images, tokens, micro: int, accum: int, device, amp_dtype, scaler, targets=None):
    """One optimisation step's forward/backward (with feature caching for accumulation). ``targets``: teacher
    features of the whole local batch, passed to the objective as they are. Returns (loss, components, logit
    scale, the local batch's features as the objective saw them, detached)."""
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    targets = targets or {}
    module.train()
    if accum == 1:
        with autocast:
            img, txt, scale, bias = _features(module, images, tokens)
            out = loss_fn(img.float(), txt.float(), logit_scale=scale.float(),
                          logit_bias=None if bias is None else bias.float(), **targets)
        scaler.scale(out["loss"]).backward()
        return float(out["loss"].detach()), _parts(out), float(scale.detach()), (img.detach().float(), txt.detach().float())
    chunks = list(zip(images.split(micro), tokens.split(micro)))
    with torch.no_grad(), autocast:
        cached = [_features(module, x, t)[:2] for x, t in chunks]
    total = 0.0
    for j, (x, t) in enumerate(chunks):
        sync = contextlib.nullcontext() if (j == len(chunks) - 1 or not hasattr(module, "no_sync")) else module.no_sync()
        with sync, autocast:
            img, txt, scale, bias = _features(module, x, t)
            all_img = torch.cat([c[0] for c in cached[:j]] + [img] + [c[0] for c in cached[j + 1:]]).float()
            all_txt = torch.cat([c[1] for c in cached[:j]] + [txt] + [c[1] for c in cached[j + 1:]]).float()
            if j:  # the logit scale / bias get their gradient once, not once per micro-batch
                scale = scale.detach()
                bias = None if bias is None else bias.detach()
            out = loss_fn(all_img, all_txt, logit_scale=scale.float(), logit_bias=None if bias is None else bias.float(),
                          **targets)
            scaler.scale(out["loss"]).backward()
        total = float(out["loss"].detach())
    return total, _parts(out), float(scale.detach()), (all_img.detach(), all_txt.detach())


def _freeze_unused(module, loss_fn, n: int, dim: "int | None", teacher, device) -> list[str]:
    """Under DDP: freeze the parameters behind model outputs the objective never reads (distillation objectives
    leave the logit scale, often a whole tower, without gradient), which DDP would otherwise wait for. A single
    process leaves their gradients None, so AdamW never touches them either: the result is the same.

    Which outputs are read is found by calling a copy of the objective on random features of the right shapes."""
    import copy

    if not dim:
        return []
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
    try:
        loss = copy.deepcopy(loss_fn)(**probe, **extra)["loss"]
        grads = torch.autograd.grad(loss, list(probe.values()), allow_unused=True)
    except Exception:  # the objective cannot run on random features: leave the model as it is
        return []
    unused = {k for k, gr in zip(probe, grads) if gr is None}
    frozen = []
    for name, p in module.named_parameters():
        if name.startswith(("visual.", "image.", "image_head.")):
            out = "image_features"
        elif name in ("logit_scale", "logit_bias"):
            out = name
        else:
            out = "text_features"
        if out in unused and p.requires_grad:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def _proto_refresh(cfg: TrainConfig, loss_fn, steps_per_epoch: int) -> "int | None":
    """Steps per ProtoCLIP episode (``proto_refresh_every``, default one epoch); None for other objectives."""
    from .losses import ProtoCLIPLoss

    if not isinstance(loss_fn, ProtoCLIPLoss):
        if cfg.proto_refresh_every is not None:
            raise ConfigError(f"proto_refresh_every is for the protoclip loss; the loss is {cfg.loss!r}")
        return None
    every = cfg.proto_refresh_every or steps_per_epoch
    if every * cfg.batch_size < loss_fn.num_prototypes:
        raise ConfigError(f"protoclip: an episode of {every} step(s) × batch {cfg.batch_size} holds fewer samples "
                          f"than num_prototypes={loss_fn.num_prototypes}; raise proto_refresh_every or lower "
                          "num_prototypes")
    return every


def _mean_over_ranks(value: float, device) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _parts(out: dict) -> dict[str, float]:
    return {f"loss/{k}": float(v.detach()) for k, v in out.items() if k != "loss" and torch.is_tensor(v) and v.ndim == 0}


def _tensorboard(out: Location, cfg: TrainConfig):
    """A SummaryWriter on OUTPUT/tensorboard; for a remote OUTPUT it writes to a local staging folder that
    :func:`_sync_tensorboard` uploads at every checkpoint and at the end."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: scalars still go to the history
        return None
    if out.local is not None:
        return SummaryWriter(str(out.local / "tensorboard"))
    return SummaryWriter(str(Path(_scratch(cfg)) / "tensorboard"))


def _sync_tensorboard(writer, out: Location) -> None:
    if writer is None or out.local is not None:
        return
    writer.flush()
    out.child("tensorboard").upload_dir(Path(writer.log_dir))


_SCRATCH: dict[str, str] = {}


def _scratch(cfg: TrainConfig) -> str:
    """A local folder for what a remote run stages before upload (tensorboard events, held-out images)."""
    import tempfile

    if cfg.output not in _SCRATCH:
        _SCRATCH[cfg.output] = tempfile.mkdtemp(prefix="clipzoo-run-")
    return _SCRATCH[cfg.output]


@contextlib.contextmanager
def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("train", total=total, completed=start)
        yield lambda n: bar.advance(task, n)


def _log_eval(metrics: "MetricsLog | None", evaluation: dict[str, Any], t_start: float) -> None:
    if metrics is not None:
        metrics.add({"step": evaluation["step"], "elapsed_s": time.perf_counter() - t_start,
                     **{f"eval/{k}": v for k, v in evaluation.items() if k != "step"}})


def _evaluate(model: TrainModel, cfg: TrainConfig, step: int, writer) -> dict[str, Any]:
    from ..datasets.readers import open_dataset
    from ..eval.runner import Evaluator

    comparator = comparator_of(model, f"step {step}")
    model.module.eval()
    data = open_dataset(cfg.eval_data, classnames=cfg.eval_classnames, templates=cfg.eval_templates)
    ev = Evaluator(comparator, workers=0, batch_size=256)
    metrics = dict(ev.zeroshot(data).metrics) if data.classnames else {}
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"eval/{k}", v, step)
    return {"step": step, **metrics}
