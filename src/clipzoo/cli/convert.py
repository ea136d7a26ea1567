"""``clipzoo convert SRC DST --to FORMAT`` and ``clipzoo parity MODEL --against IMPL``."""
from __future__ import annotations

from pathlib import Path

import typer

from ..convert import TARGETS
from ..convert import convert as run_convert
from ..convert.parity import AGAINST
from ..convert.parity import parity as run_parity
from ._common import CacheDirOpt, JsonOpt, ModelArg, ModelNameOpt, TrustPickleOpt, fail, note, print_json, user_errors


@user_errors
def convert(
    src: str = typer.Argument(..., metavar="SRC", help="Model to convert: any spec or local checkpoint clipzoo loads."),
    dst: Path = typer.Argument(..., metavar="DST", help="Output file or folder (see --to)."),
    to: str = typer.Option(..., "--to", help="open_clip, hf, openai, safetensors or onnx."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists."),
    trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Convert a checkpoint to another format, loadable by that format's own library.

    \b
      clipzoo convert model.pt out-hf/ --to hf                 # transformers.CLIPModel.from_pretrained("out-hf")
      clipzoo convert model.pt out-oc/ --to open_clip   # open_clip.create_model_and_transforms("local-dir:out-oc")
      clipzoo convert hf-folder/ model-openai.pt --to openai   # clip.load("model-openai.pt")
      clipzoo convert model.bin model.safetensors --to safetensors   # one file with its config; no pickle
      clipzoo convert model.pt out-onnx/ --to onnx             # clipzoo.load("out-onnx"), onnxruntime
    """
    if to not in TARGETS:
        fail(f"unknown format {to!r} for --to: choose from {', '.join(TARGETS)}")
    out = run_convert(src, dst, to, model_name=model_name, trust_pickle=trust_pickle, overwrite=overwrite,
              cache_dir=None if cache_dir is None else str(cache_dir))
    note(f"wrote {out} ({to})")


@user_errors
def parity(
    model: ModelArg,
    against: str = typer.Option(..., "--against", help="open_clip, openai, hf or onnx."),
    image: list[Path] | None = typer.Option(None, "--image",
                                            help="Images to compare on (repeatable) [default: 4 generated]."),
    text: list[str] | None = typer.Option(None, "--text",
                                          help="Texts to compare on (repeatable) [default: 5 built in]."),
    tol: float = typer.Option(1e-4, "--tol",
                              help="Largest max-abs difference accepted; above it the exit status is 1."),
    as_json: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Compare clipzoo's outputs with another implementation of the same weights: mean / max absolute and
    relative differences of image features, text features and probabilities. Exit status 1 above --tol.

    \b
      clipzoo parity model.pt --against open_clip
      clipzoo parity model.pt --against openai --image cat.jpg --text "a cat" --json
      clipzoo parity hf-folder/ --against hf --tol 1e-5
    """
    if against not in AGAINST:
        fail(f"unknown implementation {against!r} for --against: choose from {', '.join(AGAINST)}")
    kwargs = {"model_name": model_name} if model_name else {}
    report = run_parity(model, against, images=[str(p) for p in image] if image else None, texts=text, tol=tol,
                 trust_pickle=trust_pickle, cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)
    if as_json:
        print_json(report.as_dict())
    else:
        typer.echo(report.markdown())
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("parity")(parity)
