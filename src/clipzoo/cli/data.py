"""``clipzoo data``: make data sets on disk. ``clipzoo data shapes``: the generated captioned shapes."""
from pathlib import Path

import typer

from ._common import note, user_errors

data_app = typer.Typer(help="Make data sets on disk (generated captioned shapes).", no_args_is_help=True,
                       rich_markup_mode=None)


@data_app.command("shapes")
@user_errors
def shapes(
    out: Path = typer.Option(..., "--out", "-o", show_default=False,
                             help="Output folder (created; re-running the same command resumes)."),
    n: int = typer.Option(5000, "-n", "--n", help="Number of samples."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same images and captions, byte for byte."),
    image_size: int = typer.Option(64, "--image-size", help="Image side in pixels (at least 16)."),
    formats: list[str] | None = typer.Option(
        None, "--format", "-f", show_default=False,
        help="folder, csv, webdataset or tfrecord; repeat for several [default: folder, csv, webdataset]."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per webdataset / TFRecord shard."),
    label_key: str = typer.Option(
        "shape", "--label-key", help="Class for the image folder and .cls: shape, color, size, position, shape_color."),
    two_object_prob: float = typer.Option(0.25, "--two-object-prob",
                                          help="Chance of a second object on the opposite side."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty or different data-set folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
) -> None:
    """Generate captioned shapes and write them as an image folder, a CSV and webdataset shards.

    Examples:

    \b
      clipzoo data shapes --out data/shapes -n 5000 --seed 0
      clipzoo data shapes --out data/wds -n 20000 --format webdataset --shard-size 2000
    """
    from clipzoo.datasets import DEFAULT_FORMATS, write_shapes

    manifest = write_shapes(out, n, seed=seed, image_size=image_size, formats=formats or DEFAULT_FORMATS,
                            shard_size=shard_size, label_key=label_key, two_object_prob=two_object_prob,
                            overwrite=overwrite, progress=progress)
    files = manifest["files"]
    what = ", ".join(f"{k}: {v}" for k, v in files.items() if k not in ("classnames", "templates", "shards"))
    note(f"wrote {n} samples ({image_size}×{image_size}, seed {seed}) to {out} — {what}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
