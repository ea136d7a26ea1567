"""``clipzoo embed``: images (files, folders) or texts (a file) -> a .npy of features + a JSON sidecar."""
from pathlib import Path
from typing import List, Optional

import typer

from ._common import (CacheDirOpt, DeviceOpt, ModelArg, ModelNameOpt, PrecisionOpt, TrustPickleOpt, fail,
                      load_model, note, user_errors)


@user_errors
def embed(
    model: ModelArg,
    more_images: Optional[List[str]] = typer.Argument(
        None, metavar="PATH", show_default=False,
        help="More image paths after --images (so `--images photos/*.jpg` works)."),
    images: Optional[List[str]] = typer.Option(
        None, "--images", "-i", show_default=False,
        help="Image files or folders (folders expand to their image files, recursively, sorted)."),
    texts: Optional[Path] = typer.Option(None, "--texts", "-t", show_default=False,
                                         help="A UTF-8 text file, one text per line (blank lines skipped)."),
    out: Path = typer.Option(..., "--out", "-o", show_default=False,
                             help="Output .npy file; the inputs are listed in a .json beside it."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size [default: 64 images, 256 texts]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image decode processes [default: CPU count, at most 8; 0: decode in the main process]."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise the features."),
    truncate: bool = typer.Option(False, "--truncate", help="Cut texts longer than the model's context instead of failing."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out images that cannot be decoded (listed in the sidecar) instead of failing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Embed images or texts with MODEL and write the features to a .npy file (one row per input, in order).

    Examples:

    \b
      clipzoo embed MODEL --images photos/ --out photos.npy --workers 4
      clipzoo embed MODEL --images photos/*.jpg --out photos.npy
      clipzoo embed MODEL --texts captions.txt --out captions.npy
    """
    from clipzoo import embedding

    if more_images and not images:
        fail(f"unexpected argument {more_images[0]!r}: image paths go after --images (e.g. --images {more_images[0]})")
    image_paths = [*(images or []), *(more_images or [])]
    if bool(image_paths) == bool(texts):
        fail("pass exactly one of --images PATH… or --texts FILE")
    if batch_size is not None and batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        fail(f"--workers must be 0 or more, got {workers}")

    # check the inputs before loading the model, so a typo fails fast
    if image_paths:
        paths = embedding.expand_image_paths(image_paths)
    else:
        lines = embedding.read_texts(texts)
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    if image_paths:
        result = embedding.embed_images(comparator, paths, batch_size=batch_size or 64, workers=workers,
                                        normalize=normalize, progress=progress, skip_bad=skip_bad)
    else:
        result = embedding.embed_texts(comparator, lines, batch_size=batch_size or 256, normalize=normalize,
                                       truncate=truncate, progress=progress)
    npy, sidecar = embedding.save_embeddings(result, out)
    n, dim = result.features.shape
    note(f"wrote {n} {result.modality} embeddings ({n}×{dim}, float32) to {npy}; inputs listed in {sidecar}")
    if result.skipped:
        note(f"skipped {len(result.skipped)} image(s) that could not be decoded (listed in {sidecar}), first: "
             f"{result.skipped[0]['input']}")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
