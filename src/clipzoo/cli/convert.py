"""``clipzoo convert SRC DST --to FORMAT`` and ``clipzoo parity MODEL --against IMPL | --engines A,B``."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import CacheDirOpt, JsonOpt, ModelArg, ModelNameOpt, TrustPickleOpt, fail, note, print_json, user_errors


@user_errors
def convert(
    src: str = typer.Argument(..., metavar="SRC", help="Model to convert: any spec or local checkpoint clipzoo loads."),
    dst: Path | None = typer.Argument(None, metavar="[DST]", help="Output file or folder (see --to); or -o."),
    to: str = typer.Option(..., "--to", help="open_clip, hf, openai, safetensors, onnx, jax or mindspore."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Output file or folder (instead of DST)."),
    source_format: str | None = typer.Option(None, "--from",
                                             help="Read SRC as this format: jax (an open_clip_jax .pkl) or "
                                                  "mindspore (a MindSpore .ckpt)."),
    jax_model: str | None = typer.Option(None, "--model",
                                         help="With --from jax: SRC's JAX config, e.g. vit-base-patch32; with --from "
                                              "mindspore: its MindSpore CLIP config, e.g. ViT-B-32 (default: the "
                                              "config the .ckpt stores, else read from its shapes)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists."),
    vit_layout: str | None = typer.Option(None, "--vit-layout",
                                          help="With --to onnx: an open_clip ViT image tower as torch writes it "
                                               "(plain, the default), block by block in standard ops (standard: "
                                               "what OpenVINO runs fastest) or in ONNX Runtime's fused ops "
                                               "(contrib)."),
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
      clipzoo convert model.pt out-ov/ --to onnx --vit-layout standard   # clipzoo.load("out-ov", executor="openvino")
      clipzoo convert model.pt --to jax -o params.pkl          # open_clip_jax parameters (+ params.config.json)
      clipzoo convert params.pkl --from jax --model vit-base-patch32 --to open_clip -o model.safetensors
      clipzoo convert model.pt --to mindspore -o model.ckpt    # MindSpore-CLIP's names (+ the model config)
      clipzoo convert model.ckpt --from mindspore --to open_clip -o model.safetensors
    """
    from ..convert import TARGETS  # imported by the verb that runs it: `clipzoo search` starts without it
    from ..convert import convert as run_convert
    from ..convert.targets import SOURCE_FORMATS

    if to not in TARGETS:
        fail(f"unknown format {to!r} for --to: choose from {', '.join(TARGETS)}")
    if source_format is not None and source_format not in SOURCE_FORMATS:
        fail(f"unknown format {source_format!r} for --from: choose from {', '.join(SOURCE_FORMATS)}")
    if (dst is None) == (output is None):
        fail("name the output once: as DST or with -o/--output")
    out = run_convert(src, dst or output, to, model_name=model_name, trust_pickle=trust_pickle, overwrite=overwrite,
                      cache_dir=None if cache_dir is None else str(cache_dir), source_format=source_format,
                      model=jax_model, vit_layout=vit_layout)
    note(f"wrote {out} ({to})")


@user_errors
def parity(
    model: ModelArg,
    against: str | None = typer.Option(None, "--against", help="open_clip, openai, hf or onnx."),
    engines: str | None = typer.Option(None, "--engines",
                                       help="Two engines on the same weights, the reference first: torch,jax or "
                                            "torch,mindspore."),
    source_format: str | None = typer.Option(None, "--from", help="Read MODEL as this format: jax or mindspore."),
    jax_model: str | None = typer.Option(None, "--model",
                                         help="With --from jax / mindspore: MODEL's JAX / MindSpore CLIP config."),
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
      clipzoo parity model.pt --engines torch,jax --tol 1e-5     # PyTorch vs JAX on the same weights
      clipzoo parity model.pt --engines torch,mindspore           # PyTorch vs MindSpore
    """
    from ..convert.engines import parity_engines
    from ..convert.parity import AGAINST
    from ..convert.parity import parity as run_parity
    from ..convert.targets import load_source

    if (against is None) == (engines is None):
        fail("compare with one of --against IMPL (another library) or --engines A,B (e.g. torch,jax)")
    if against is not None and against not in AGAINST:
        fail(f"unknown implementation {against!r} for --against: choose from {', '.join(AGAINST)}")
    kwargs = {"model_name": model_name} if model_name else {}
    common = {"images": [str(p) for p in image] if image else None, "texts": text, "tol": tol,
              "trust_pickle": trust_pickle, "cache_dir": None if cache_dir is None else str(cache_dir), **kwargs}
    if source_format is not None or jax_model is not None:  # a JAX .pkl / .ckpt: loaded here, compared as any model
        model = load_source(model, source_format, jax_model, trust_pickle=trust_pickle,
                            cache_dir=None if cache_dir is None else str(cache_dir))
    report = parity_engines(model, engines, **common) if engines else run_parity(model, str(against), **common)
    if as_json:
        print_json(report.as_dict())
    else:
        typer.echo(report.markdown())
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("parity")(parity)
