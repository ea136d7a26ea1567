"""The GPU embedding path (issue 22 §5): what ``clipzoo embed --device cuda`` runs on a batch of images.

- **handover**: decode workers stack uint8 crops in shared memory (:mod:`clipzoo.embed.handover`); the
  DataLoader pins them (``pin_memory``) and :func:`prefetch` copies the next batch to the GPU on a side stream
  while the model runs the current one — a quarter of float32's bytes cross PCIe;
- **normalisation on the GPU** (:func:`~clipzoo.embed.handover.normalize_uint8`), in **channels-last** layout
  for convolutional towers' (and ViT patch-embedding) convolutions;
- **autocast** fp16 / bf16 when asked (:class:`GpuOptions`; a model loaded in fp16 / bf16 runs as loaded);
- **a CUDA graph** (or ``torch.compile``) of the image tower for the fixed batch shape (:class:`FixedShapeRunner`),
  the last, smaller batch eager; a capture that fails falls back to eager and says why in ``runner.note``;
- **GPU JPEG decode** (nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``, :func:`gpu_decode`):
  files are read on the CPU, decoded and resized on the GPU (``Comparator.preprocess01``); used by
  ``benchmarks/gpu_embed.py`` and :func:`embed_jpegs_gpu`.

Without CUDA every part but the graphs, pinning and GPU decode runs on the CPU (the correctness path the tests
and ``benchmarks/gpu_embed.py`` run); :func:`cuda_unavailable` gives the one-line reason.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ClipzooError
from ..image_bytes import aspect_box
from .handover import normalize_uint8, split_transform

__all__ = ["GpuOptions", "FixedShapeRunner", "GpuEmbedder", "cuda_unavailable", "prefetch", "gpu_decode",
           "embed_jpegs_gpu"]

AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}
GRAPH_MODES = ("cuda-graphs", "compile", "none")


@dataclass(frozen=True)
class GpuOptions:
    autocast: "str | None" = None   # "fp16" | "bf16" | None (the model's own precision)
    channels_last: bool = True
    graphs: str = "cuda-graphs"      # GRAPH_MODES
    prefetch: int = 2                # batches copied ahead on a side stream

    def __post_init__(self):
        if self.autocast not in (None, *AUTOCAST):
            raise ClipzooError(f"unknown autocast {self.autocast!r}; use fp16, bf16 or none")
        if self.graphs not in GRAPH_MODES:
            raise ClipzooError(f"unknown graph mode {self.graphs!r}; use {', '.join(GRAPH_MODES)}")


def cuda_unavailable(device: Any = "cuda") -> "str | None":
    """None when ``device`` is a usable CUDA device, else the one-line reason the CUDA parts skip."""
    import torch

    if torch.device(device).type != "cuda":
        return f"device {device} is not a CUDA device"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def autocast_context(device_type: str, autocast: "str | None"):
    import torch

    if autocast is None:
        return contextlib.nullcontext()
    # no weight-cast cache: a CUDA graph captures the casts, and a cache would hold tensors across captures
    return torch.autocast(device_type, dtype=getattr(torch, AUTOCAST[autocast]), cache_enabled=False)


class FixedShapeRunner:
    """``fn(x)`` for the batches of one fixed shape through a captured CUDA graph (or ``torch.compile``); any
    other shape, and every batch when capture is impossible, eagerly. ``note`` says which, and why."""

    def __init__(self, fn, mode: str = "cuda-graphs"):
        self.fn, self.mode, self.graph, self.compiled = fn, mode, None, None
        self.shape = self.static_in = self.static_out = None
        self.note = "eager"

    def prepare(self, example) -> None:
        """Capture (or compile) for ``example``'s shape, dtype and device."""
        import torch

        self.shape = tuple(example.shape)
        if self.mode == "none":
            self.note = "eager (graphs off)"
            return
        if self.mode == "compile":
            self.compiled = torch.compile(self.fn, dynamic=False)
            self.note = "torch.compile (fixed shape)"
            return
        reason = cuda_unavailable(example.device)
        if reason:
            self.note = f"eager: CUDA graphs skipped, {reason}"
            return
        try:
            self.capture(example)
        except Exception as exc:  # noqa: BLE001 - capture is an optimisation: eager still answers
            self.graph = None
            self.note = f"eager: CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:120]})"

    def capture(self, example) -> None:
        import torch

        with torch.cuda.device(example.device):
            self.static_in = example.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up on a side stream: allocator and cuDNN / cuBLAS choices settle
                    self.fn(self.static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_out = self.fn(self.static_in)
            self.graph = graph
            self.note = "CUDA graph (fixed batch shape)"

    def __call__(self, x):
        if self.shape is None:
            self.prepare(x)
        if tuple(x.shape) == self.shape:
            if self.graph is not None:
                self.static_in.copy_(x)
                self.graph.replay()
                return self.static_out.clone()
            if self.compiled is not None:
                return self.compiled(x)
        return self.fn(x)


def prefetch(batches: Iterable, device: Any, depth: int = 2) -> Iterator:
    """``(indices, pixels, errors)`` batches with ``pixels`` already on ``device``: on CUDA, copied (from pinned
    memory, ``non_blocking``) on a side stream ``depth`` batches ahead of the one being used; elsewhere ``.to``."""
    import torch

    device = torch.device(device)
    if cuda_unavailable(device):
        for indices, pixels, errors in batches:
            yield indices, None if pixels is None else pixels.to(device), errors
        return
    stream, queue = torch.cuda.Stream(device), []
    it = iter(batches)

    def push() -> bool:
        try:
            indices, pixels, errors = next(it)
        except StopIteration:
            return False
        with torch.cuda.stream(stream):
            moved = None if pixels is None else pixels.to(device, non_blocking=True)
        queue.append((indices, moved, errors))
        return True

    while len(queue) < max(1, depth) and push():
        pass
    while queue:
        torch.cuda.current_stream(device).wait_stream(stream)
        indices, pixels, errors = queue.pop(0)
        if pixels is not None:
            pixels.record_stream(torch.cuda.current_stream(device))
        push()
        yield indices, pixels, errors


class GpuEmbedder:
    """Normalised uint8 batches -> features, with :class:`GpuOptions` (autocast, channels-last, fixed-shape graph)."""

    def __init__(self, comparator, options: "GpuOptions | None" = None):
        import torch

        self.comparator, self.options = comparator, options or GpuOptions()
        self.split = split_transform(comparator.transform)
        if self.split is None:
            raise ClipzooError(f"{comparator.card.alias}: its image transform is not a resize / crop / normalise "
                               "one, which the GPU path needs")
        self.device = torch.device(comparator.device)
        model = getattr(comparator, "model", None)
        if self.options.channels_last and isinstance(model, torch.nn.Module):
            model.to(memory_format=torch.channels_last)
        self.runner = FixedShapeRunner(self._raw, self.options.graphs if isinstance(model, torch.nn.Module)
                                       else "none")

    def _raw(self, x):
        import torch

        with torch.no_grad(), autocast_context(self.device.type, self.options.autocast):
            return self.comparator.encode_pixels(x)

    def pixels(self, batch_uint8):
        """uint8 (N, H, W, 3) on the device -> the model's input (normalised; channels-last; the model's dtype)."""
        return normalize_uint8(batch_uint8, self.split, channels_last=self.options.channels_last,
                               dtype=self.comparator.dtype)

    def encode(self, x, normalize: bool = True):
        """Model input -> float32 features (L2-normalised when ``normalize``)."""
        import torch

        feats = self.runner(x).float()
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats


def gpu_decode(blobs: list, device: Any) -> list:
    """JPEG bytes -> uint8 (3, H, W) images decoded by nvJPEG on ``device`` (torchvision), one list; an image
    longer than MAX_ASPECT_RATIO : 1 keeps its central part, as every CPU decode (``image_bytes.within_aspect``)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    return [within_aspect_tensor(im) for im in decode_jpeg(data, mode=ImageReadMode.RGB, device=torch.device(device))]


def within_aspect_tensor(image):
    """A (C, H, W) image's part that :func:`clipzoo.image_bytes.within_aspect` keeps (a view)."""
    box = aspect_box(image.shape[-1], image.shape[-2])
    return image if box is None else image[..., box[1]:box[3], box[0]:box[2]]


def embed_jpegs_gpu(comparator, blobs: list, embedder: GpuEmbedder, normalize: bool = True):
    """JPEG bytes -> float32 features: decoded by nvJPEG, resized / cropped / normalised in torch on the GPU
    (``Comparator.preprocess01``, the model's eval preprocessing), then :meth:`GpuEmbedder.encode`."""
    import torch

    images = gpu_decode(blobs, embedder.device)
    x = torch.cat([comparator.preprocess01(im[None].float().div(255)) for im in images])
    if embedder.options.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return embedder.encode(x.to(comparator.dtype), normalize=normalize)
