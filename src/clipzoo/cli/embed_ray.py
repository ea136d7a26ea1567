"""``clipzoo embed … --engine ray`` (and ``clipzoo index build … --engine ray``): the options, and the run on a
Ray cluster (:mod:`clipzoo.embed.ray_engine`); docs/scale.md shows a multi-node run."""
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from ._common import fail, note, resolve_device

__all__ = ["EngineOpt", "AddressOpt", "NumWorkersOpt", "ENGINES", "embed_on_ray", "check_engine", "index_embedder"]

ENGINES = ("local", "ray")

EngineOpt = Annotated[str, typer.Option(
    "--engine", help="local (this machine; under torchrun, its ranks) or ray: a Ray cluster's actors embed and this "
                     "process writes resumable shards (docs/scale.md).")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", show_default=False,
    help="--engine ray: the Ray cluster (auto, or ray://HOST:10001) [default: start a local Ray].")]
NumWorkersOpt = Annotated[int | None, typer.Option(
    "--num-workers", show_default=False,
    help="--engine ray: embedding actors [default: the cluster's GPUs with --device cuda, else half its CPUs].")]


def check_engine(engine: str, address: str | None, num_workers: int | None) -> None:
    """The engine options checked before any work; ``--engine ray`` without Ray fails naming the extra."""
    if engine not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and (address is not None or num_workers is not None):
        fail("--address and --num-workers are for --engine ray")
    if num_workers is not None and num_workers < 1:
        fail(f"--num-workers must be at least 1, got {num_workers}")
    if engine == "ray":
        from ..embed.ray_engine import require_ray

        require_ray()


def embed_on_ray(address, num_workers, model, image_paths, audio, texts, out: Path, format_: str, batch_size,
                 normalize, progress, skip_bad, exact_decode, device, precision, runtime, trust_pickle, model_name,
                 cache_dir) -> None:
    """Embed images on Ray into OUT (.npy + sidecar, the local engine's output)."""
    from ..api import load
    from ..embed import expand_image_inputs, npy_path, sidecar_path
    from ..embed.ray_engine import RayOptions, embed_with_ray
    from ._common import load_model

    if format_ != "npy" or audio or texts or not image_paths:
        fail("--engine ray embeds --images PATH… into --format npy; embed texts and audio with --engine local")
    items = expand_image_inputs(image_paths)  # a typo fails before the model loads
    device = resolve_device(device)
    kwargs = {"model_name": model_name} if model_name else {}
    comparator = load_model(model, "cpu", "fp32", trust_pickle, model_name, cache_dir)  # preprocessing, name, dim
    loader = partial(load, model, device=device, precision=precision, runtime=runtime, trust_pickle=trust_pickle,
                     cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)
    options = RayOptions(address=address, num_workers=num_workers, gpu=device.startswith("cuda"),
                         batch_size=batch_size or 64)
    meta = embed_with_ray(comparator, loader, out, items, options=options, normalize=normalize, progress=progress,
                          skip_bad=skip_bad, fast_decode=not exact_decode)
    npy, ray = npy_path(out), meta["ray"]
    note(f"wrote {meta['count']} image embeddings ({meta['count']}×{meta['dim']}, float32) to {npy} on Ray: "
         f"{ray['embedded_shards']} shard(s) embedded, {ray['skipped_shards']} already done; inputs listed in "
         f"{sidecar_path(npy)}")
    if meta["skipped"]:
        note(f"skipped {len(meta['skipped'])} image(s) that could not be decoded, first: {meta['skipped'][0]['input']}")


def index_embedder(model, address, num_workers, batch_size, runtime, from_embeddings):
    """``clipzoo index build DIR --engine ray``: the embedder that decodes and embeds the build's files on Ray."""
    from ..api import load
    from ..embed.ray_engine import RayOptions
    from ..index.ray_build import RayIndexEmbedder

    if from_embeddings is not None:
        fail("--engine ray embeds a folder DIR; --from-embeddings reads rows already embedded")
    if not model:
        fail("--engine ray needs --model MODEL (the actors load it)")
    device = resolve_device("auto")
    options = RayOptions(address=address, num_workers=num_workers, gpu=device.startswith("cuda"), batch_size=batch_size)
    return RayIndexEmbedder(partial(load, model, device=device, runtime=runtime), options)
