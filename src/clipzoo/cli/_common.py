"""What every command shares: the one-line user-error contract, common options, loading, output."""
from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ..constants import DEFAULT_MIN_COSINE
from ..errors import BadOptionError, ClipzooError, one_line
from ..json_text import json_text

USER_ERROR = 2
F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------ errors
def fail(message: "str | BaseException", code: int = USER_ERROR) -> NoReturn:
    """Print ``error: <message>`` on one line to stderr and exit with ``code`` (2: a user error)."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def user_errors(fn: F) -> F:
    """Turn errors a user can cause into one line on stderr and exit status 2 — never a traceback.

    Caught: :class:`~clipzoo.errors.ClipzooError` (unknown model, bad file, bad image, too-long text, …)
    and ``OSError`` of user paths and the machine (missing, a folder, no permission, a file where a folder
    goes, a full disk, a read-only file system).
    Ctrl-C exits 130 with one line.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with one_line_warnings():
                return fn(*args, **kwargs)
        except (ClipzooError, OSError) as exc:
            fail(getattr(exc, "cli_message", None) or exc)  # an error may say it in the CLI's words
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def one_line_warnings():
    """Show warnings meant for the user (``UserWarning``: e.g. "architecture inferred …") as one line
    ``warning: …`` on stderr; hide libraries' deprecation notices, which a CLI user cannot act on."""

    def show(message, category, filename, lineno, file=None, line=None):
        typer.echo(f"warning: {' '.join(str(message).split())}", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        previous, warnings.showwarning = warnings.showwarning, show
        try:
            yield
        finally:
            warnings.showwarning = previous


# ------------------------------------------------------------------ common options
ModelArg = Annotated[str, typer.Argument(
    metavar="MODEL", show_default=False,
    help="Model spec: an alias '[clip - openai - ViT-B/32]', 'openai/ViT-B-32', "
         "'open_clip:ViT-B-32/laion2b_s34b_b79k', 'hf-hub:org/name', or a local file or folder.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="Weights precision: fp32, fp16 or bf16.")]
TrustPickleOpt = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow a checkpoint pickle that needs more than tensors to load (it can run "
                           "code: only for files you trust).")]
ModelNameOpt = Annotated[str | None, typer.Option(
    "--model-name", help="open_clip model config for a bare checkpoint file, e.g. ViT-B-32.")]
CacheDirOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Where downloaded weights are cached (default: ~/.cache/clipzoo, HF's own cache).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LongTextOpt = Annotated[str | None, typer.Option(
    "--long-text", show_default=False,
    help="Texts longer than the model's context: error (clipzoo's default), truncate, or chunks (split at "
         "sentences, encode each, average the normalised features).")]
RuntimeOpt = Annotated[str, typer.Option(
    "--runtime", help="How the model runs: auto (the default: the fastest measured here under --min-cosine, "
                      "cached; eager for models under 25 M parameters), eager, compile (torch.compile), onnx "
                      "(ONNX Runtime), int8 (onnx-int8, torch-int8), onnx-int8-static, openvino-int8, bf16; "
                      "docs/embedding.md.")]
MinCosineOpt = Annotated[float, typer.Option(
    "--min-cosine", help="--runtime auto: the least cosine to eager fp32 a faster runtime must keep on the "
                         "measured inputs.")]


def guarded_runtime(runtime: str, min_cosine: float) -> str:
    """``--runtime auto --min-cosine X`` -> ``"auto:X"`` (the spelling that carries the guard through
    ``clipzoo.load`` and index builds); other runtimes as given. A bad name or guard fails in one line, and so does
    ``--min-cosine`` given with another runtime (as ``clipzoo.load`` refuses ``min_cosine=`` for one)."""
    from ..runtime import normalize_runtime, split_guard  # torch-free

    if normalize_runtime(runtime) != "auto":
        if min_cosine != DEFAULT_MIN_COSINE:  # given (typer cannot tell the default given from the default)
            raise BadOptionError(f"--min-cosine is only for --runtime auto, not {runtime!r}; drop it or pass "
                                 "--runtime auto")
        return runtime
    if split_guard(runtime)[1] is not None:
        return runtime
    from ..runtime.auto import check_guard

    return f"auto:{check_guard(min_cosine)!r}"


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: str, device: str = "auto", precision: str = "fp32", trust_pickle: bool = False,
               model_name: str | None = None, cache_dir: Path | None = None, runtime: str = "eager",
               long_text: str | None = None, **options: Any):
    """``clipzoo.load`` with the CLI's common options (``model_name``, ``long_text`` passed only when given;
    ``options``: more ``clipzoo.load`` keywords, e.g. ``--runtime auto``'s sample of the user's inputs)."""
    from ..api import load  # torch is imported when a verb loads a model, not at start-up

    kwargs: dict[str, Any] = {"model_name": model_name, **options} if model_name else dict(options)
    if long_text is not None:
        kwargs["long_text"] = long_text
    comparator = load(spec, device=resolve_device(device), precision=precision,
                      cache_dir=None if cache_dir is None else str(cache_dir), trust_pickle=trust_pickle,
                      runtime=runtime, **kwargs)
    choice = getattr(comparator, "runtime_choice", None)
    if choice is not None and choice.measured:  # runtime auto measured (now or cached): what it chose and why
        note(f"runtime auto: {choice.reason}")
    return comparator


# ------------------------------------------------------------------ output
def console(stderr: bool = False):
    """A rich console on the current stdout/stderr (made per call, so test runners capture it)."""
    from rich.console import Console

    return Console(file=sys.stderr if stderr else sys.stdout, soft_wrap=False)


def print_json(obj: Any) -> None:
    typer.echo(json_text(obj, indent=2, default=str))  # a non-UTF-8 file name: escaped, still valid JSON


def note(message: str) -> None:
    """A status line on stderr (keeps stdout clean for tables and JSON)."""
    typer.echo(message, err=True)
