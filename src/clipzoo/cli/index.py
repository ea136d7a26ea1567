"""``clipzoo index build`` (a folder -> a search index), ``index verify`` / ``index repair`` (integrity),
``clipzoo search`` and ``clipzoo classify``."""
from pathlib import Path
from typing import Annotated

import typer

from ..constants import DEFAULT_MIN_COSINE
from ..embed import draft_size_for, expand_image_paths
from ..embed.decode import decode_file
from ..index import build_index, classify_images, load_vocabulary, open_index
from ..index.classify import check_template
from ._common import (
    CacheDirOpt,
    DeviceOpt,
    JsonOpt,
    LongTextOpt,
    MinCosineOpt,
    PrecisionOpt,
    RuntimeOpt,
    TrustPickleOpt,
    console,
    fail,
    guarded_runtime,
    load_model,
    note,
    print_json,
    user_errors,
)
from .embed_args import WORKERS_HELP
from .embed_ray import AddressOpt, EngineOpt, NumWorkersOpt, check_engine, index_embedder

index_app = typer.Typer(help="Build a search index over a folder of images.", no_args_is_help=True,
                        rich_markup_mode=None)
REMOVED_SHOWN = 10
"""Rows `index repair` names one a line when it removes them (the rest are counted; --json lists all)."""


VideoSegmentsOpt = Annotated[float | None, typer.Option(
    "--video-segments", show_default=False, metavar="SECONDS",
    help="Videos (mp4, webm, mkv, avi) get one row each; with this, also one row per SECONDS-long segment, "
         "found with its start time.")]


@user_errors
def build(
    folder: str | None = typer.Argument(None, metavar="DIR", show_default=False,
                                  help="Folder of images (jpg, png, webp, gif, bmp; recursive), or its fsspec URL "
                                       "(file://, memory://, s3://…). First-level "
                                       "subfolders become partitions; a same-name .txt is the caption."),
    model: str | None = typer.Option(None, "--model", "-m", show_default=False,
                                        help="Model spec (needed the first time; a rerun reuses the recorded one)."),
    out: Path = typer.Option(..., "--out", "-o", show_default=False, help="Index folder to create or update."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images embedded per batch."),
    workers: int | None = typer.Option(None, "--workers", help=WORKERS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show a progress bar with images/s on stderr."),
    runtime: RuntimeOpt = "auto",
    min_cosine: MinCosineOpt = DEFAULT_MIN_COSINE,
    exact_decode: bool = typer.Option(False, "--exact-decode", help="Decode every JPEG at full size (the default "
                                      "decodes large JPEGs at reduced size, faster)."),
    json_: JsonOpt = False,
    shard_rows: int = typer.Option(4096, "--shard-rows", hidden=True, help="Rows per committed shard."),
    from_embeddings: Path | None = typer.Option(
        None, "--from-embeddings", show_default=False,
        help="Index a clip-retrieval embedding folder (img_emb/, text_emb/, metadata/) instead of DIR, without "
             "re-embedding; --model names the model if the folder does not."),
    store: str | None = typer.Option(None, "--store", show_default=False,
                                     help="Vector store: faiss (embedded) or milvus [default: the one OUT already "
                                          "uses, else faiss]."),
    uri: str | None = typer.Option(None, "--uri", show_default=False,
                                   help="--store milvus: a Milvus Lite file [default: OUT/index.milvus.db] or "
                                        "http://HOST:19530."),
    wait: bool = typer.Option(False, "--wait", help="When another build is writing OUT, wait for it to finish "
                                                   "(default: fail naming its pid)."),
    long_text: LongTextOpt = None,
    engine: EngineOpt = "local", address: AddressOpt = None, num_workers: NumWorkersOpt = None,
    video_segments: VideoSegmentsOpt = None,
) -> None:
    """Index the images (and videos) under DIR with MODEL into the folder OUT (incremental: a rerun embeds only new or
    changed files and drops deleted ones; safe to kill and rerun).

    \b
      clipzoo index build photos/ --model openai/ViT-B-32 --out photos.index
    """
    if batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        fail(f"--workers must be 0 or more, got {workers}")
    runtime = guarded_runtime(runtime, min_cosine)  # a typo fails before any work
    if (folder is None) == (from_embeddings is None):
        fail("pass either a folder DIR of images or --from-embeddings DIR (one of them)")
    if uri and store != "milvus":
        fail("--uri is for --store milvus")
    options = {**({"vector_store": store} if store else {}), **({"uri": uri} if uri else {})}
    check_engine(engine, address, num_workers)
    embedder = index_embedder(model, address, num_workers, batch_size, runtime, from_embeddings) if engine == "ray" \
        else None
    if from_embeddings is not None:
        from ..index.from_embeddings import build_index_from_embeddings

        report = build_index_from_embeddings(from_embeddings, out, model=model, vector_options=options,
                                             progress=progress)
    else:
        report = build_index(folder, out, model=model, batch_size=batch_size, workers=workers, progress=progress,
                             shard_rows=max(1, shard_rows), fast_decode=not exact_decode, runtime=runtime,
                             vector_options=options, wait=wait, long_text=long_text, embedder=embedder,
                             video_segments=video_segments)
    if json_:
        print_json(report.to_dict())
        return
    recall = "" if report.recall_at_10 is None else f", recall@10 vs exact {report.recall_at_10:.3f}"
    rate = f" at {report.images_per_s:.1f} images/s" if report.images_per_s else ""
    repaired = f", {report.repaired} repaired (lost or corrupt vectors)" if report.repaired else ""
    note(f"indexed {_indexed(report)} in {out}: {report.added} added, {report.updated} updated, "
         f"{report.removed} removed, {report.unchanged} unchanged{repaired}{rate}; {report.index_kind} index{recall} "
         f"({report.seconds:.1f} s)")
    if report.skipped:
        note(f"skipped {len(report.skipped)} unreadable file(s):")
        for path, reason in report.skipped[:20]:
            note(f"  {path}: {' '.join(reason.split())}")
        if len(report.skipped) > 20:
            note(f"  … and {len(report.skipped) - 20} more")


def _indexed(report) -> str:
    """What a build indexed: ``N images``, or with videos ``N images and M videos`` (and the rows, when the videos'
    segments add rows: a video is one row plus one per segment)."""
    if not report.videos:
        return f"{report.total} images"
    images = report.total - report.video_rows
    rows = f" ({report.total} rows with the videos' segments)" if report.video_rows != report.videos else ""
    return (f"{images} image{'s' if images != 1 else ''} and {report.videos} video{'s' if report.videos != 1 else ''}"
            f"{rows}")


@user_errors
def build_vectors(
    vectors: Path = typer.Argument(..., metavar="VECTORS", show_default=False,
                                   help="Embeddings: a .npy file (float16/float32 rows), a folder of them, or "
                                        "clip-retrieval's folder (img_emb/img_emb_*.npy + metadata/)."),
    out: Path = typer.Option(..., "--out", "-o", show_default=False, help="Index folder to create or replace."),
    max_memory: str = typer.Option("4GB", "--max-memory", help="Memory budget of the build and of serving "
                                   "(e.g. 4GB, 512MB; K/M/G are powers of 1024 as in autofaiss)."),
    model: str | None = typer.Option(None, "--model", "-m", show_default=False,
                                     help="The model that made the vectors (for text/image queries) [default: the "
                                          "one the folder records]."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    json_: JsonOpt = False,
) -> None:
    """Index precomputed vectors within a memory budget: IVF-Flat or IVF-PQ chosen as autofaiss does, trained on
    a sample, filled chunk by chunk from disk; served memory-mapped, candidates re-scored exactly.

    \b
      clipzoo index build-vectors embeddings/ --max-memory 4GB --out big.index
    """
    from ..index.build_vectors import build_vectors_index

    report = build_vectors_index(vectors, out, max_memory, model=model, progress=progress)
    if json_:
        print_json(report.to_dict())
        return
    note(f"indexed {report.total} vectors of {report.dim} dims in {out}: {report.index_kind} index {report.key}, "
         f"nprobe {report.nprobe}, recall@10 vs exact {report.recall_at_10:.3f}, "
         f"~{report.index_bytes / 2**20:.0f} MB of {report.budget_bytes / 2**20:.0f} MB ({report.seconds:.1f} s)")


@user_errors
def verify(
    index: Path = typer.Argument(..., metavar="INDEX", show_default=False, help="An index folder."),
    sizes_only: bool = typer.Option(False, "--sizes", help="Check sizes only (fast; the default also hashes "
                                                          "every file)."),
    json_: JsonOpt = False,
) -> None:
    """Check every file of INDEX against its manifest (size and SHA-256), its ids, its embedding shards and
    its database. Exit 0 when all match; otherwise one line per bad file and exit 2.

    \b
      clipzoo index verify photos.index
    """
    from ..index.repair import verify_index

    result = verify_index(index, full=not sizes_only)
    if json_:
        print_json({"index": result.index, "ok": result.ok, "generation": result.generation, "files": result.files,
                    "problems": [{"file": f, "problem": p} for f, p in result.problems]})
    elif result.ok:
        note(f"index {index}: {result.files} files match (generation {result.generation})")
    else:
        for line in result.lines():
            typer.echo(line)
    if not result.ok:
        raise typer.Exit(2)


@user_errors
def repair(
    index: Path = typer.Argument(..., metavar="INDEX", show_default=False, help="An index folder."),
    model: str | None = typer.Option(None, "--model", "-m", show_default=False,
                                     help="Model to re-embed lost rows with [default: the recorded one]."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of failing."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar while re-embedding."),
    json_: JsonOpt = False,
) -> None:
    """Repair INDEX: re-embed rows whose vectors are lost (from their image files; rows whose file is gone
    are removed), rebuild everything derived (vector stores, snapshot, manifest) from the stored vectors,
    and publish it as a new generation. Also upgrades an index written before manifests.

    \b
      clipzoo index repair photos.index
    """
    from ..index.repair import repair_index, verify_index

    report = repair_index(index, model=model, wait=wait, progress=progress)
    if json_:
        print_json(report.to_dict())
    else:
        note(f"repaired {index}: {len(report.bad_shards)} bad shard(s), {report.reembedded} row(s) re-embedded, "
             f"{report.removed} removed; generation {report.generation} with {report.count} items")
    removed = report.removed_rows()
    for rel, why in removed[:REMOVED_SHOWN]:  # on stderr: which rows went, not only how many
        note(f"removed {rel}: {why}")
    if len(removed) > REMOVED_SHOWN:
        note(f"… and {len(removed) - REMOVED_SHOWN} more (--json lists them)")
    after = verify_index(index, full=True)
    if not after.ok:
        fail(f"index {index} still has problems after repair: {after.lines()[0]}")


def _print_hits(hits, json_: bool, query: str) -> None:
    if json_:
        print_json({"query": query, "hits": [h.to_dict() for h in hits]})
        return
    if not hits:
        note("no results")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for col, justify in (("#", "right"), ("score", "right"), ("id", "right"), ("path", "left"), ("caption", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), f"{h.score:.4f}", str(h.id), escape(h.relpath), escape(h.caption or ""))
    console().print(table)


@user_errors
def search(
    index: Path = typer.Argument(..., metavar="INDEX", show_default=False,
                                 help="An index folder from `clipzoo index build`."),
    query: str | None = typer.Argument(None, metavar="TEXT", show_default=False, help="Text to search for."),
    k: int = typer.Option(10, "-k", "--k", help="Number of results."),
    image: Path | None = typer.Option(None, "--image", "-i", show_default=False,
                                      help="Search by this image instead of text."),
    partition: str | None = typer.Option(None, "--partition", "-p", show_default=False,
                                         help="Search one partition (first-level subfolder) only."),
    dedup: float | None = typer.Option(None, "--dedup", show_default=False,
                                       help="Drop results whose cosine with a higher-ranked result is at least this "
                                            "(e.g. 0.95)."),
    long_text: LongTextOpt = None,
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Search an index by text (or by image with --image): the k most similar images, best first.

    \b
      clipzoo search photos.index "a dog on a beach" -k 5
      clipzoo search photos.index --image query.jpg --dedup 0.95
    """
    if (query is None) == (image is None):
        fail("pass either a search TEXT or --image PATH (one of them)")
    if k < 1:
        fail(f"-k must be at least 1, got {k}")
    if dedup is not None and not 0 < dedup <= 1:
        fail(f"--dedup must be in (0, 1], got {dedup}")
    idx = open_index(index)
    idx.check_partition(partition)
    idx.check_weights()  # other weights at the recorded model's path: refused before they load
    tower = None
    if image is None and device in ("auto", "cpu") and precision == "fp32":  # the embedded model: no torch
        from ..models.numpy_text import embedded_text_tower

        tower = embedded_text_tower(idx.model_spec)
        idx.check_recorded_model(tower)
    if tower is None:
        idx.set_model(load_model(idx.model_spec, device, precision, trust_pickle, None, cache_dir), recorded=True)
    if long_text is not None:
        from ..inputs import check_long_text

        idx.long_text = check_long_text(long_text)  # this search only; the index keeps what it recorded
    if image is not None:
        hits = idx.search_image(decode_file(image, draft_size_for(idx.model)), k=k, partition=partition,
                                dedup=dedup)  # decoded as the index build decoded its files (embed.decode)
    elif tower is not None:
        hits = idx.search_embedding(tower.query_vector(query, idx.long_text), k=k, partition=partition, dedup=dedup)
    else:
        hits = idx.search_text(query, k=k, partition=partition, dedup=dedup)
    _print_hits(hits, json_, str(image) if image is not None else query)


@user_errors
def classify(
    images: list[str] = typer.Argument(..., metavar="IMAGE...", show_default=False, help="Image files or folders."),
    model: str = typer.Option(..., "--model", "-m", show_default=False, help="Model spec."),
    labels: Path = typer.Option(..., "--labels", "-l", show_default=False,
                                help="Vocabulary: a .txt (one label a line, # comments) or a .json list / "
                                     "{\"labels\": [...]}."),
    template: str = typer.Option("a photo of a {}.", "--template", help="Prompt template; {} is the label."),
    k: int = typer.Option(5, "-k", "--k", help="Labels shown per image."),
    json_: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    trust_pickle: TrustPickleOpt = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Classify images over a vocabulary of labels: the top-k labels with probabilities (the vocabulary's
    text embeddings are cached, so a large vocabulary is embedded once per model and template).

    \b
      clipzoo classify cat.jpg dog.png --model openai/ViT-B-32 --labels vocab.txt -k 3
    """
    if k < 1:
        fail(f"-k must be at least 1, got {k}")
    check_template(template)
    vocab = load_vocabulary(labels)
    paths = expand_image_paths(images)
    comparator = load_model(model, device, precision, trust_pickle, None, cache_dir)
    from ..comparator import competition_ranks

    results = classify_images(comparator, paths, vocab, template=template, k=k + 1,  # +1: a tie just past k shows
                              cache_dir=None if cache_dir is None else Path(cache_dir) / "vocab")
    ranks = [competition_ranks(prob for _, prob in top) for top in results]  # ties share a rank
    results = [[(lab, prob, r, rank.count(r) > 1) for (lab, prob), r in zip(top, rank)][:k]
               for top, rank in zip(results, ranks)]
    if json_:
        print_json({"model": comparator.card.alias, "template": template, "results": [
            {"image": p, "labels": [{"label": lab, "probability": prob, "rank": r, "tie": tie}
                                    for lab, prob, r, tie in top]} for p, top in zip(paths, results)]})
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    table.add_column("image", overflow="fold")
    for i in range(min(k, len(vocab))):
        table.add_column(f"#{i + 1}", overflow="fold")
    for p, top in zip(paths, results):
        table.add_row(escape(p), *(f"{escape(lab)} {prob:.3f}" + (f" (tie, #{r})" if tie else "")
                                   for lab, prob, r, tie in top))
    console().print(table)


def register(app: typer.Typer) -> None:
    index_app.command("build")(build)
    index_app.command("build-vectors")(build_vectors)
    index_app.command("verify")(verify)
    index_app.command("repair")(repair)
    app.add_typer(index_app, name="index")
    app.command("search")(search)
    app.command("classify")(classify)
