"""``clipzoo embed … --engine ray`` (and ``clipzoo index build … --engine ray``): the options, and the run on a
Ray cluster (:mod:`clipzoo.embed.ray_engine`); docs/scale.md shows a multi-node run."""
import os
import shutil
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
                 cache_dir, truncate: bool = False) -> None:
    """Embed images (paths or fsspec URLs), texts or audio files on Ray into OUT (.npy + sidecar, the local engine's
    output), or images and texts paired row by row, into a clip-retrieval folder (``--format clip-retrieval``)."""
    from ..api import load
    from ..embed import npy_path, sidecar_path
    from ..embed.ray_engine import RayOptions
    from ..embed.remote_inputs import expand_inputs
    from ..embed.results import check_outputs
    from ..embed.run import read_paths
    from ..embed.sources import read_texts
    from ._common import load_model

    if format_ not in ("npy", "clip-retrieval"):
        fail(f"--format must be npy or clip-retrieval, got {format_!r}")
    if audio:
        return _ray_audio(address, num_workers, model, image_paths, audio, texts, out, format_, batch_size, normalize,
                          progress, skip_bad, device, precision, trust_pickle, model_name, cache_dir)
    if format_ == "npy" and bool(image_paths) == bool(texts):
        fail("pass exactly one of --images PATH… or --texts FILE (both, paired row by row: --format clip-retrieval)")
    if not image_paths and not texts:
        fail("pass --images PATH… and/or --texts FILE")
    if image_paths and texts and skip_bad:
        fail("--skip-bad would break the image–caption pairs of --images with --texts; leave it out")
    items = expand_inputs(image_paths) if image_paths else None  # a typo fails before the model loads
    lines = read_texts(texts) if texts else None
    if items is not None and lines is not None and len(items) != len(lines):
        fail(f"--images gives {len(items)} images but --texts {len(lines)} lines; clip-retrieval pairs them row by row")
    if format_ == "npy":  # an input the output or its sidecar would replace: refused before any work, as locally
        check_outputs(out, [texts, *image_paths, *read_paths(items or ())])
    device = resolve_device(device)
    kwargs = {"model_name": model_name} if model_name else {}
    comparator = load_model(model, "cpu", "fp32", trust_pickle, model_name, cache_dir)  # preprocessing, name, dim
    loader = partial(load, model, device=device, precision=precision, runtime=runtime, trust_pickle=trust_pickle,
                     cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)
    options = RayOptions(address=address, num_workers=num_workers, gpu=device.startswith("cuda"),
                         batch_size=batch_size or (64 if items is not None else 256))
    run = partial(_ray_run, comparator, loader, options, normalize, progress, skip_bad, not exact_decode, truncate)
    if format_ == "clip-retrieval":
        return _ray_clip_retrieval(run, model, items, lines, out, normalize, options)
    meta = run(out, items, lines)
    npy, ray, noun = npy_path(out), meta["ray"], "image" if items is not None else "text"
    note(f"wrote {meta['count']} {noun} embeddings ({meta['count']}×{meta['dim']}, float32) to {npy} on Ray: "
         f"{ray['embedded_shards']} shard(s) embedded, {ray['skipped_shards']} already done; inputs listed in "
         f"{sidecar_path(npy)}")
    if meta["skipped"]:
        note(f"skipped {len(meta['skipped'])} image(s) that could not be decoded, first: {meta['skipped'][0]['input']}")


def _ray_audio(address, num_workers, model, image_paths, audio, texts, out: Path, format_: str, batch_size, normalize,
               progress, skip_bad, device, precision, trust_pickle, model_name, cache_dir) -> None:
    """``clipzoo embed MODEL --audio CLIPS/ --engine ray``: audio files embedded on Ray into OUT (.npy + sidecar)."""
    from ..api import load
    from ..audio import expand_audio_paths
    from ..embed import npy_path, sidecar_path
    from ..embed.ray_audio import embed_audio_with_ray
    from ..embed.ray_engine import RayOptions
    from ..embed.results import check_outputs
    from ._common import load_model
    from .embed_args import check_one_input

    if format_ != "npy":
        fail("--format clip-retrieval holds images and texts; embed --audio with --format npy")
    check_one_input(image_paths, audio, texts)
    paths = expand_audio_paths(audio)  # a typo fails before the model loads
    check_outputs(out, paths)  # an input the output would replace: refused before any work, as locally
    device = resolve_device(device)
    kwargs = {"model_name": model_name} if model_name else {}
    comparator = load_model(model, "cpu", "fp32", trust_pickle, model_name, cache_dir)  # sample rate, name, dim
    loader = partial(load, model, device=device, precision=precision, trust_pickle=trust_pickle,
                     cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)
    options = RayOptions(address=address, num_workers=num_workers, gpu=device.startswith("cuda"),
                         batch_size=batch_size or 32)
    meta = embed_audio_with_ray(comparator, loader, out, paths, options=options, normalize=normalize,
                                progress=progress, skip_bad=skip_bad)
    npy, ray, n = npy_path(out), meta["ray"], meta["count"]
    note(f"wrote {n} audio embeddings ({n}×{meta['dim']}, float32) to {npy} on Ray: {ray['embedded_shards']} "
         f"shard(s) embedded, {ray['skipped_shards']} already done; inputs listed in {sidecar_path(npy)}")
    if meta["skipped"]:
        note(f"skipped {len(meta['skipped'])} audio file(s) that could not be decoded (listed in "
             f"{sidecar_path(npy)}), first: {meta['skipped'][0]['input']}")


def _ray_run(comparator, loader, options, normalize, progress, skip_bad, fast_decode, truncate, out, items, lines):
    """One modality on Ray into ``out``: images (``items``) or texts (``lines``)."""
    from ..embed.ray_engine import embed_texts_with_ray, embed_with_ray

    if items is not None:
        return embed_with_ray(comparator, loader, out, items, options=options, normalize=normalize, progress=progress,
                              skip_bad=skip_bad, fast_decode=fast_decode)
    return embed_texts_with_ray(comparator, loader, out, lines, options=options, normalize=normalize,
                                progress=progress, truncate=truncate)


def _ray_clip_retrieval(run, model, items, lines, out: Path, normalize: bool, options) -> None:
    """``--format clip-retrieval --engine ray``: each modality on Ray into a scratch .npy inside OUT (kept until the
    folder is written, so a rerun resumes its shards), then clip-retrieval's layout as the local engine writes it."""
    import numpy as np

    from ..embed.clip_retrieval import write_clip_retrieval

    scratch = Path(out) / ".clipzoo-embed"
    spec = os.path.abspath(os.path.expanduser(model)) if os.path.exists(os.path.expanduser(model)) else model
    arrays: dict[str, dict] = {}
    for name, given in (("image", items), ("text", lines)):
        if given is None:
            continue
        meta = run(scratch / f"{name}.npy", given if name == "image" else None, given if name == "text" else None)
        arrays[name] = {"features": np.load(scratch / f"{name}.npy", mmap_mode="r"), "inputs": meta["inputs"]}
    image, text = arrays.get("image", {}), arrays.get("text", {})
    record = write_clip_retrieval(out, image_features=image.get("features"), image_paths=image.get("inputs"),
                                  text_features=text.get("features"), captions=text.get("inputs"), model=spec,
                                  normalized=normalize)
    arrays.clear()
    shutil.rmtree(scratch, ignore_errors=True)
    note(f"wrote {record['count']} {' + '.join(record['modalities'])} embeddings ({record['count']}×{record['dim']}, "
         f"float32) to {out} in clip-retrieval's layout ({record['shards']} shard(s)) on Ray")


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
