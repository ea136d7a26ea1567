"""``clipzoo caption IMAGES --model M``: captions from a CoCa model (beam search or top-k / top-p sampling)."""
from __future__ import annotations

import typer

from ..embed import expand_image_paths
from ._common import (
    CacheDirOpt,
    DeviceOpt,
    JsonOpt,
    ModelNameOpt,
    PrecisionOpt,
    TrustPickleOpt,
    fail,
    load_model,
    print_json,
    user_errors,
)


@user_errors
def caption(
    images: list[str] = typer.Argument(..., show_default=False, help="Image files or folders."),
    model: str = typer.Option(..., "--model", "-m", show_default=False,
                              help="A CoCa model spec (alias, open_clip pair, hub id or local file)."),
    generation_type: str = typer.Option("beam_search", "--generation-type",
                                        help="beam_search, top_k or top_p (open_clip's generate)."),
    seq_len: int = typer.Option(30, "--seq-len", help="Longest caption in tokens (SOT and EOS included)."),
    num_beams: int = typer.Option(6, "--num-beams", help="Beams for beam_search."),
    num_beam_groups: int = typer.Option(3, "--num-beam-groups", help="Beam groups for beam_search."),
    top_k: int = typer.Option(1, "--top-k", help="Tokens kept per step for top_k sampling."),
    top_p: float = typer.Option(0.1, "--top-p", help="Nucleus mass for top_p sampling (open_clip's default)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for top_k / top_p sampling (same seed, same caption)."),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Caption images with a CoCa model; one line per image (PATH<TAB>caption), or JSON.

    \b
      clipzoo caption photos/ --model "[coca - laion - coca_ViT-B-32/mscoco_finetuned_laion2b_s13b_b90k]"
      clipzoo caption cat.jpg --model M --generation-type top_p --top-p 0.9 --seed 0
    """
    paths = expand_image_paths(images)
    if not paths:
        fail("no images found in " + ", ".join(images))
    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir)
    ids = comparator.generate(paths, generation_type=generation_type, seq_len=seq_len, num_beams=num_beams,
                              num_beam_groups=num_beam_groups, top_k=top_k, top_p=top_p, temperature=temperature,
                              seed=seed)
    captions = comparator.decode(ids)
    if json_:
        print_json({"model": comparator.card.alias, "generation_type": generation_type, "seed": seed,
                    "captions": [{"image": p, "caption": c} for p, c in zip(paths, captions)]})
        return
    for path, text in zip(paths, captions):
        typer.echo(f"{path}\t{text}")


def register(app: typer.Typer) -> None:
    app.command("caption")(caption)
