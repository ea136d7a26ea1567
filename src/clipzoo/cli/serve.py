"""``clipzoo serve INDEX``: the HTTP service and web page; ``clipzoo demo``: shapes -> index -> searches -> page."""
from __future__ import annotations

import socket
from pathlib import Path

import typer

from ..constants import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_LIMIT_CONCURRENCY,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_TEMPLATE,
    DEFAULT_THUMB_SIZE,
    DEMO_IMAGES,
    SERVE_HOST,
    SERVE_PORT,
)
from ..constants import DEFAULT_MIN_COSINE as GUARD
from ..extras import require
from ._common import (
    DeviceOpt,
    LongTextOpt,
    MinCosineOpt,
    RuntimeOpt,
    fail,
    guarded_runtime,
    note,
    resolve_device,
    user_errors,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@user_errors
def serve(
    indices: list[str] = typer.Argument(..., metavar="[NAME=]INDEX", show_default=False, help=(
        "An index folder built by `clipzoo index build`; several as NAME=INDEX (the first serves /search)")),
    host: str = typer.Option(SERVE_HOST, "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(SERVE_PORT, "--port", help="TCP port."),
    token: str | None = typer.Option(None, "--token", envvar="CLIPZOO_TOKEN", show_default=False, help=(
        "Require 'Authorization: Bearer TOKEN' on the API (or set CLIPZOO_TOKEN). /health and the page stay open.")),
    labels: Path | None = typer.Option(None, "--labels", show_default=False,
                                          help="Vocabulary for /classify: a .txt (one label a line) or .json."),
    template: str = typer.Option(DEFAULT_TEMPLATE, "--template", help="Prompt template for the labels."),
    model: str | None = typer.Option(None, "--model", show_default=False,
                                     help="Model to embed queries with [default: the one the index was built with]."),
    max_body_mb: float = typer.Option(DEFAULT_MAX_BODY_BYTES / 2**20, "--max-body-mb",
                                      help="Largest request body (MiB); larger ones get 413."),
    thumb_size: int = typer.Option(DEFAULT_THUMB_SIZE, "--thumb-size", help="Longer side of thumbnails (pixels)."),
    max_image_mp: float = typer.Option(DEFAULT_MAX_PIXELS / 1e6, "--max-image-mp",
                                       help="Most megapixels one uploaded image may declare; more get 413."),
    max_request_mp: float = typer.Option(DEFAULT_MAX_REQUEST_PIXELS / 1e6, "--max-request-mp",
                                         help="Most megapixels the images of one request may declare together."),
    allow_url: bool = typer.Option(False, "--allow-url", help="Let /knn-service fetch 'image_url' (public "
                                   "http(s) addresses only, bounded in size and time)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", show_default=False, metavar="NAME",
                                           help="A Host name to answer besides the bound address and localhost "
                                                "(repeat; '*.example.org' for its subdomains, '*' for any); "
                                                "other Host headers get 400."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", show_default=False, metavar="ORIGIN",
                                          help="An origin (scheme://host[:port]) whose pages may call the API "
                                               "(repeat); CORS is off without it."),
    max_batch: int = typer.Option(DEFAULT_MAX_BATCH, "--max-batch",
                                  help="Most waiting requests encoded in one model call (1: unbatched)."),
    max_wait_ms: float = typer.Option(DEFAULT_MAX_WAIT_MS, "--max-wait-ms",
                                      help="Longest a request waits for others to fill its batch (ms)."),
    limit_concurrency: int = typer.Option(DEFAULT_LIMIT_CONCURRENCY, "--limit-concurrency",
                                          help="Most connections and requests at once; more get 503."),
    header_timeout: float = typer.Option(DEFAULT_HEADER_TIMEOUT_S, "--header-timeout",
                                         help="Seconds a connection has to send its request headers."),
    body_timeout: float = typer.Option(DEFAULT_BODY_TIMEOUT_S, "--body-timeout",
                                       help="Seconds a request has to send its whole body after its headers."),
    keep_alive_timeout: float = typer.Option(DEFAULT_KEEP_ALIVE_TIMEOUT_S, "--keep-alive-timeout",
                                             help="Seconds an idle keep-alive connection stays open."),
    verify: str = typer.Option("sizes", "--verify", help="Check the index's files against its manifest at start: "
                               "sizes, or full (also SHA-256); a mismatch refuses to start."),
    device: DeviceOpt = "cpu", long_text: LongTextOpt = None, runtime: RuntimeOpt = "auto", guard: MinCosineOpt = GUARD,
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: debug, info, warning, error."),
) -> None:
    """Serve INDEX over HTTP: search, classify, embed, rank, thumbnails, metrics, and a web page at /.

    Examples:

    \b
      clipzoo serve photos.index
      clipzoo serve photos.index --labels vocab.txt --port 8000
      CLIPZOO_TOKEN=s3cret clipzoo serve photos.index --host 0.0.0.0
      clipzoo serve main=photos.index art=art.index   # clip-retrieval's API serves both by name
    """
    require("fastapi", "the HTTP service")  # a missing extra is said first, before any index is read
    named = named_indices(indices)  # {name: folder}, each one there; the first is the main index
    check_options(host, port, max_body_mb, max_image_mp, max_request_mp, thumb_size, token)  # one line, exit 2
    from ..serve.connections import ConnectionLimits

    limits = ConnectionLimits(limit_concurrency=limit_concurrency, header_timeout=header_timeout,  # a bad value:
                              keep_alive_timeout=keep_alive_timeout, body_timeout=body_timeout)  # one line, exit 2
    verify_indices(named, verify)  # a mismatched file: one line naming it and `clipzoo index repair`
    import clipzoo.serve as serving  # the service's stack (FastAPI, the index, torch) loads when it runs
    comparator = query_model(named, model, device, guarded_runtime(runtime, guard))
    note(f"loading {', '.join(str(p) for p in named.values())} …")
    app = serving.create_app(named, labels=labels, token=token or None, max_body_bytes=int(max_body_mb * 2**20),
                             thumb_size=thumb_size, template=template, model=comparator, allow_url=allow_url,
                             max_image_pixels=int(max_image_mp * 1e6), max_request_pixels=int(max_request_mp * 1e6),
                             allowed_hosts=[host, *allowed_host], cors_origins=cors_origin, max_batch=max_batch,
                             max_wait_ms=max_wait_ms)
    service = set_long_text(app.state.service, long_text)
    if host not in LOOPBACK and not token:
        note(f"warning: serving on {host} without --token: anyone who can reach port {port} can query "
             "the index and see its thumbnails")
    note(f"serving {service.count} items ({service.model_name}) on http://{host}:{port}/ "
         f"(API docs: /docs){' with a bearer token' if token else ''}")
    if len(named) > 1:
        note("clip-retrieval's API (/knn-service, …) serves: " + app.state.indices.describe())
    serving.run(app, host=host, port=port, log_level=log_level, limits=limits)


def check_port(host: str, port: int) -> None:
    """Fail fast, in one line, when ``host:port`` cannot be listened on (before loading any model)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        fail(f"cannot resolve --host {host!r} ({exc})")
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another server using it? "
                 "choose another --port")


def check_options(host: str, port: int, max_body_mb: float, max_image_mp: float, max_request_mp: float,
                  thumb_size: int, token: "str | None" = None) -> None:
    """Fail in one line on an option out of range, a token no client could send, or a ``host:port`` that cannot
    be listened on — before any index or model loads."""
    from ..serve.middleware import check_token

    check_token(token)
    if not 0 < port < 65536:
        fail(f"--port must be between 1 and 65535, got {port}")
    if max_body_mb <= 0:
        fail(f"--max-body-mb must be positive, got {max_body_mb}")
    if max_image_mp <= 0 or max_request_mp <= 0:
        fail(f"--max-image-mp and --max-request-mp must be positive, got {max_image_mp} and {max_request_mp}")
    if thumb_size < 16 or thumb_size > 2048:
        fail(f"--thumb-size must be between 16 and 2048, got {thumb_size}")
    check_port(host, port)


def verify_indices(named: "dict[str, Path]", verify: str) -> None:
    """Check each index's files against its manifest (``--verify sizes|full``) before serving."""
    from ..index.repair import check_before_serving

    for path in named.values():
        check_before_serving(path, verify)


def named_indices(args: list[str]) -> "dict[str, Path]":
    """The INDEX / NAME=INDEX arguments -> ``{name: folder}``; fails in one line on a bad name or a missing folder."""
    from ..serve.names import parse_index_args

    named = parse_index_args(args)
    for path in named.values():
        if not path.exists():
            fail(f"index {str(path)!r} does not exist; build one with "
                 f"`clipzoo index build FOLDER --model MODEL --out {path}`")
    return named


def query_model(named: "dict[str, Path]", model: str | None, device: str, runtime: str = "eager"):
    """The Comparator ``--model`` / ``--device`` / ``--runtime`` ask for (None: each index loads its recorded
    model, eager — also for indices built with different models on the CPU)."""
    from ..runtime import normalize_runtime

    if not model and device == "cpu" and normalize_runtime(runtime) == "eager":
        return None
    from ..api import load
    from .embed_args import index_sample

    if not model and len({_recorded_spec(p) for p in named.values()}) > 1:
        if device == "cpu":
            return None
        fail("--device with indices built with different models: serve them separately, or give --model")
    first = next(iter(named.values()))
    sample = index_sample(runtime, first)  # auto measures on the images the index holds
    comparator = load(model or _recorded_spec(first), device=resolve_device(device), runtime=runtime, **sample)
    choice = getattr(comparator, "runtime_choice", None)
    if choice is not None and choice.measured:  # runtime auto measured (now or cached): what it chose and why
        note(f"runtime auto: {choice.reason}")
    return comparator


def _recorded_spec(index: Path) -> str:
    from ..index import open_index

    return open_index(index).model_spec


@user_errors
def demo(
    serve_page: bool = typer.Option(True, "--serve/--no-serve",
                                    help="Serve the web page after printing (--no-serve: stop)."),
    model: str | None = typer.Option(None, "--model", show_default=False,
                                        help="Model to index with [default: the embedded clipzoo/tiny-shapes]."),
    n: int = typer.Option(DEMO_IMAGES, "-n", "--count", help="How many shapes to generate."),
    host: str = typer.Option(SERVE_HOST, "--host", help="Address to serve on."),
    port: int = typer.Option(SERVE_PORT, "--port", help="TCP port to serve on."),
    folder: Path | None = typer.Option(None, "--dir", show_default=False,
                                          help="Where the shapes and index go [default: ~/.cache/clipzoo/demo]."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr."),
    device: DeviceOpt = "cpu",
) -> None:
    """Generate captioned shapes, index them, print searches and a classification, serve the page.

    Runs offline with no downloads: the default model is embedded in clipzoo.

    \b
      clipzoo demo              # then open http://127.0.0.1:5020/
      clipzoo demo --no-serve
    """
    if not 0 < port < 65536:
        fail(f"--port must be between 1 and 65535, got {port}")
    if serve_page:
        check_port(host, port)
    from ..demo import run_demo

    run_demo(n=n, model=model, folder=folder, serve=serve_page, host=host, port=port,
             device=resolve_device(device), echo=typer.echo, progress=progress)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("demo")(demo)


def set_long_text(service, policy: str | None):
    """``--long-text``: the policy of the service's text queries (/search) and texts (/embed, /rank without
    ``truncate``); None leaves the index's and the model's own. Returns the service."""
    from ..inputs import check_long_text

    if policy is not None:
        service.index.long_text = service.model.long_text = check_long_text(policy)
    return service
