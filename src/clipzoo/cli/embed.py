"""``clipzoo embed``: images (files, folders, webdataset tars) or texts (a file) -> a .npy of features + a
JSON sidecar. Runs under torchrun too: each rank embeds its share and rank 0 merges the parts."""
import os
import shutil
from pathlib import Path

import typer

from ..audio import expand_audio_paths
from ..constants import DEFAULT_MIN_COSINE
from ..embed import (
    distributed_info,
    embed_audio,
    embed_to_file,
    expand_image_inputs,
    npy_path,
    parts_dir,
    read_texts,
    save_embeddings,
    sidecar_path,
)
from ..embed.results import check_outputs
from ..embed.run import read_paths
from ._common import (
    CacheDirOpt,
    DeviceOpt,
    LongTextOpt,
    MinCosineOpt,
    ModelArg,
    ModelNameOpt,
    PrecisionOpt,
    RuntimeOpt,
    TrustPickleOpt,
    fail,
    guarded_runtime,
    load_model,
    note,
    resolve_device,
    user_errors,
)
from .embed_args import WORKERS_HELP, auto_sample, check_args, check_one_input
from .embed_ray import AddressOpt, EngineOpt, NumWorkersOpt, check_engine, embed_on_ray


@user_errors
def embed(
    model: ModelArg,
    more_images: list[str] | None = typer.Argument(
        None, metavar="PATH", show_default=False,
        help="More image paths after --images (so `--images photos/*.jpg` works)."),
    images: list[str] | None = typer.Option(
        None, "--images", "-i", show_default=False,
        help="Image files, folders (their image files, recursively, sorted) or uncompressed webdataset .tar "
             "shards (brace patterns such as 'shards-{000..009}.tar' expand)."),
    audio: list[str] | None = typer.Option(
        None, "--audio", "-a", show_default=False,
        help="Audio files (wav/flac/ogg) or folders, for audio–text models (CLAP); repeat for more."),
    texts: Path | None = typer.Option(None, "--texts", "-t", show_default=False,
                                         help="A UTF-8 text file, one text per line (blank lines skipped)."),
    out: Path = typer.Option(..., "--out", "-o", show_default=False,
                             help="Output .npy file; the inputs are listed in a .json beside it."),
    format_: str = typer.Option("npy", "--format", help="npy, or clip-retrieval: a folder (--out) that autofaiss and "
                                "clip-retrieval read; --images with --texts pair row by row."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size [default: 64 images, 256 texts]."),
    workers: int | None = typer.Option(None, "--workers", help=WORKERS_HELP),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise the features."),
    truncate: bool = typer.Option(False, "--truncate",
                                  help="Cut texts longer than the model's context instead of failing."),
    long_text: LongTextOpt = None,
    skip_bad: bool = typer.Option(
        False, "--skip-bad",
        help="Leave out images that cannot be decoded (listed in the sidecar) instead of failing."),
    exact_decode: bool = typer.Option(
        False, "--exact-decode",
        help="Decode every JPEG at full size (rows equal the model's encode_image); the default decodes large "
             "JPEGs at reduced size, faster."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    runtime: RuntimeOpt = "auto",
    min_cosine: MinCosineOpt = DEFAULT_MIN_COSINE,
    trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None,
    cache_dir: CacheDirOpt = None,
    engine: EngineOpt = "local", address: AddressOpt = None, num_workers: NumWorkersOpt = None,
) -> None:
    """Embed images or texts with MODEL and write the features to a .npy file (one row per input, in order).

    Examples:

    \b
      clipzoo embed MODEL --images photos/ --out photos.npy --workers 4
      clipzoo embed MODEL --images photos/ --out photos.npy --engine ray --address auto
      clipzoo embed MODEL --texts captions.txt --out captions.npy
      clipzoo embed laion/clap-htsat-unfused --audio clips/ --out clips.npy
      clipzoo embed MODEL --images 'shards/{00000..00099}.tar' --out shards.npy --runtime int8
      torchrun --nproc_per_node 8 -m clipzoo embed MODEL --images photos/ --out photos.npy
    """
    image_paths = check_args(more_images, images, batch_size, workers, format_, long_text, truncate)
    runtime = guarded_runtime(runtime, min_cosine)
    check_engine(engine, address, num_workers)
    if engine == "ray":
        return embed_on_ray(address, num_workers, model, image_paths, audio, texts, out, format_, batch_size, normalize,
                            progress, skip_bad, exact_decode, device, precision, runtime, trust_pickle, model_name,
                            cache_dir, truncate=truncate)
    if format_ != "npy":
        return _embed_clip_retrieval(format_, model, image_paths, audio, texts, out, batch_size, workers, normalize,
                                     progress, skip_bad, truncate, exact_decode, device, precision, runtime,
                                     trust_pickle, model_name, cache_dir)
    check_one_input(image_paths, audio, texts)
    if audio:
        return _embed_audio(model, audio, out, batch_size, normalize, progress, skip_bad, device, precision,
                            trust_pickle, model_name, cache_dir)
    # before the model loads: a typo fails fast; expanded once (embed_to_file takes the items as they are)
    items = expand_image_inputs(image_paths, skip_bad=skip_bad) if image_paths else None
    lines = read_texts(texts) if texts else None
    check_outputs(out, [texts, *image_paths, *read_paths(items or ())])  # an input the output would replace
    info, device = _rank_device(device)
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir, runtime, long_text,
                            **auto_sample(runtime, items, lines, image_paths, texts))  # auto measures on them
    meta = embed_to_file(comparator, out, images=items, texts=lines, batch_size=batch_size, workers=workers,
                         normalize=normalize, progress=progress and info.rank == 0, skip_bad=skip_bad,
                         truncate=truncate, fast_decode=not exact_decode, info=info)
    if info.rank == 0:
        _report(meta, npy_path(out), info)


def _rank_device(device: str):
    """torchrun's rank facts, and the device resolved (``cuda:LOCAL_RANK`` under torchrun: one GPU per rank)."""
    info, device = distributed_info(), resolve_device(device)
    return info, f"cuda:{info.local_rank}" if info.active and device == "cuda" else device


def _report(meta: dict, npy: Path, info) -> None:
    """What was written, on stderr (rank 0 only)."""
    n, dim = meta["count"], meta["dim"]
    merged = f", merged from {info.world_size} ranks' parts in {parts_dir(npy)}" if info.active else ""
    note(f"wrote {n} {meta['modality']} embeddings ({n}×{dim}, float32) to {npy}{merged}; inputs listed in "
         f"{sidecar_path(npy)}")
    if meta["skipped"]:
        note(f"skipped {len(meta['skipped'])} image(s) that could not be decoded (listed in "
             f"{sidecar_path(npy)}), first: {meta['skipped'][0]['input']}")

def _embed_audio(model, audio, out, batch_size, normalize, progress, skip_bad, device, precision, trust_pickle,
                 model_name, cache_dir) -> None:
    paths = expand_audio_paths(audio)  # a typo fails before the model loads
    check_outputs(out, paths)
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    result = embed_audio(comparator, paths, batch_size=batch_size or 32, normalize=normalize, progress=progress,
                         skip_bad=skip_bad)
    npy, sidecar = save_embeddings(result, out)
    n, dim = result.features.shape
    note(f"wrote {n} audio embeddings ({n}×{dim}, float32) to {npy}; inputs listed in {sidecar}")
    if result.skipped:
        note(f"skipped {len(result.skipped)} audio file(s) that could not be decoded (listed in {sidecar}), first: "
             f"{result.skipped[0]['input']}")


def _embed_clip_retrieval(format_, model, image_paths, audio, texts, out, batch_size, workers, normalize, progress,
                          skip_bad, truncate, exact_decode, device, precision, runtime, trust_pickle, model_name,
                          cache_dir) -> None:
    """``--format clip-retrieval``: embed into a scratch .npy inside OUT, then lay it out as clip-retrieval does."""
    import numpy as np

    from ..embed.clip_retrieval import write_clip_retrieval

    if format_ != "clip-retrieval":
        fail(f"--format must be npy or clip-retrieval, got {format_!r}")
    if audio:
        fail("--format clip-retrieval holds images and texts; embed --audio with --format npy")
    if distributed_info().active:
        fail("--format clip-retrieval runs in one process; under torchrun use --format npy")
    if not image_paths and not texts:
        fail("pass --images PATH… and/or --texts FILE")
    if image_paths and texts and skip_bad:
        fail("--skip-bad would break the image–caption pairs of --images with --texts; leave it out")
    items = expand_image_inputs(image_paths, skip_bad=skip_bad) if image_paths else None
    lines = read_texts(texts) if texts else None
    if items is not None and lines is not None and len(items) != len(lines):
        fail(f"--images gives {len(items)} images but --texts {len(lines)} lines; clip-retrieval pairs them row by row")
    comparator = load_model(model, resolve_device(device), precision, trust_pickle, model_name, cache_dir, runtime,
                            **auto_sample(runtime, items, lines, image_paths, texts))
    scratch = Path(out) / ".clipzoo-embed"
    spec = os.path.abspath(os.path.expanduser(model)) if os.path.exists(os.path.expanduser(model)) else model
    try:
        arrays: dict[str, dict] = {}
        for name, kw in (("image", {"images": items}), ("text", {"texts": lines})):
            if next(iter(kw.values())) is None:
                continue
            meta = embed_to_file(comparator, scratch / f"{name}.npy", batch_size=batch_size, workers=workers,
                                 normalize=normalize, progress=progress, skip_bad=skip_bad, truncate=truncate,
                                 fast_decode=not exact_decode, **kw)
            arrays[name] = {"features": np.load(scratch / f"{name}.npy", mmap_mode="r"), "inputs": meta["inputs"]}
        image, text = arrays.get("image", {}), arrays.get("text", {})
        record = write_clip_retrieval(out, image_features=image.get("features"), image_paths=image.get("inputs"),
                                      text_features=text.get("features"), captions=text.get("inputs"),
                                      model=spec, normalized=normalize)
    finally:
        arrays = {}
        shutil.rmtree(scratch, ignore_errors=True)
    note(f"wrote {record['count']} {' + '.join(record['modalities'])} embeddings ({record['count']}×{record['dim']}, "
         f"float32) to {out} in clip-retrieval's layout ({record['shards']} shard(s))")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
