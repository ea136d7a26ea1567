"""``clipzoo compare``: a probability table of images (or audio clips) × texts (softmax for CLIP and CLAP,
sigmoid for SigLIP)."""

import typer

from ..audio import expand_audio_paths
from ..embed import expand_image_paths
from ..templates import require_placeholder
from ._common import (
    CacheDirOpt,
    DeviceOpt,
    JsonOpt,
    LongTextOpt,
    ModelArg,
    ModelNameOpt,
    PrecisionOpt,
    TrustPickleOpt,
    console,
    fail,
    load_model,
    print_json,
    user_errors,
)
from .embed_args import check_truncate_flag


def compare_probabilities(comparator, images, texts, templates=None, truncate: bool = False, modality: str = "image"):
    """``(probabilities, logits)`` [N_images, N_texts] as the model defines them (``modality="audio"``: the
    rows are audio clips, for CLAP).

    Without templates the texts are compared as given: ``probabilities(score(image, text))`` —
    a softmax over the texts for CLIP, an independent sigmoid per pair for SigLIP. With templates
    (``"a photo of a {}."``) the texts are labels and this is exactly ``comparator.predict``. Either way a text
    (a prompt) longer than the context follows ``truncate``, else the model's ``long_text`` (``--long-text``).
    """
    if templates:
        text_features = comparator.classifier(texts, templates, truncate=truncate)
    else:
        text_features = comparator.encode_text(texts, truncate=truncate)
    logits = comparator.score(images, text_features, modality)  # the model's own scorer (BLIP-2: ITC)
    return comparator.probabilities(logits), logits


@user_errors
def compare(
    model: ModelArg,
    image: list[str] | None = typer.Option(None, "--image", "-i", show_default=False,
                                              help="An image file or folder; repeat for more."),
    audio: list[str] | None = typer.Option(None, "--audio", "-a", show_default=False,
                                              help="An audio file (.wav/.flac/.ogg) or folder, for audio–text "
                                                   "models (CLAP); repeat for more. Instead of --image."),
    text: list[str] | None = typer.Option(None, "--text", "-t", show_default=False,
                                             help="A text to compare with; repeat for more."),
    template: list[str] | None = typer.Option(
        None, "--template", show_default=False,
        help="Treat the texts as labels and average these prompt templates, e.g. 'a photo of a {}.' (repeatable)."),
    truncate: bool = typer.Option(False, "--truncate",
                                  help="Cut texts longer than the model's context instead of failing "
                                       "(the same as --long-text truncate)."),
    long_text: LongTextOpt = None,
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False,
    model_name: ModelNameOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Compare images (or audio clips) with texts: one row per image, one column per text, model probabilities
    in the cells.

    CLIP and CLAP models give a softmax over the texts (each row sums to 1); SigLIP models a sigmoid per pair.
    Examples:

    \b
      clipzoo compare MODEL --image cat.jpg --text "a cat" --text "a dog"
      clipzoo compare laion/clap-htsat-unfused --audio bark.wav --text "a dog barking" --text "rain"
    """
    if image and audio:
        fail("pass --image or --audio, not both")
    if not image and not audio:
        fail("pass at least one --image PATH (or --audio PATH for an audio–text model)")
    if not text:
        fail("pass at least one --text TEXT")
    check_truncate_flag(truncate, long_text)
    if template:
        for t in template:
            require_placeholder(t)  # one line: TemplateError is a ClipzooError
    if audio:
        modality, paths = "audio", expand_audio_paths(audio)
    else:
        modality, paths = "image", expand_image_paths(image)
    from ..comparator import competition_ranks

    comparator = load_model(model, device, precision, trust_pickle, model_name, cache_dir, long_text=long_text)
    probs, logits = compare_probabilities(comparator, paths, list(text), template, truncate, modality)
    ranks = [competition_ranks(row) for row in probs.tolist()]  # ties share a rank: no arbitrary winner

    if json_:
        print_json({"model": comparator.card.alias, "probability": comparator.probability,
                    ("audio" if audio else "images"): paths, "texts": list(text),
                    "templates": list(template or []), "probabilities": probs.tolist(), "logits": logits.tolist(),
                    "ranks": ranks})
        return
    from rich.markup import escape
    from rich.table import Table

    kind = ("softmax over the texts (rows sum to 1)" if comparator.probability == "softmax"
            else f"sigmoid per {modality}-text pair")
    name = comparator.card.display_name  # clipzoo/tiny-shapes, never its cache folder
    table = Table()
    table.add_column(modality, overflow="fold")
    for t in text:
        table.add_column(escape(t), justify="right", overflow="fold")
    for path, row, rank in zip(paths, probs.tolist(), ranks):
        table.add_row(escape(path), *(f"[bold]{_prob(p)}[/bold]" if r == 1 else _prob(p) for p, r in zip(row, rank)))
    out = console()
    out.print(escape(f"{name}: {kind}"), highlight=False)
    out.print(table)
    for line in tie_lines(paths, list(text), probs.tolist(), ranks):
        out.print(escape(line), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)


def tie_lines(paths: list[str], texts: list[str], probs: list[list[float]], ranks: list[list[int]]) -> list[str]:
    """One line per image whose best texts tie (equal probabilities: no winner), naming them."""
    lines = []
    for path, row, rank in zip(paths, probs, ranks):
        best = [j for j, r in enumerate(rank) if r == 1]
        if len(best) > 1:
            names = " = ".join(repr(texts[j]) for j in best)
            lines.append(f"tie for {path}: {names} ({_prob(row[best[0]])} each; the model cannot tell them apart)")
    return lines


def _prob(p: float) -> str:
    """Four decimals; tiny non-zero values (common for SigLIP's sigmoids) in scientific notation."""
    return f"{p:.2e}" if 0 < p < 5e-5 else f"{p:.4f}"
