"""The ``clipzoo`` command line: a typer app, one module per command group, thin over the library.

Each command module defines ``register(app)``; add a new group by writing its module and naming it in
:data:`COMMAND_MODULES`. Modules import torch and the backends inside their commands only, so
``clipzoo --help`` stays fast. A user error (:class:`~clipzoo.errors.ClipzooError`, a missing file)
prints one line ``error: …`` to stderr and exits with status 2 (see :mod:`clipzoo.cli._common`).
"""
from __future__ import annotations

import importlib

import typer

from ..constants import VERSION as __version__

COMMAND_MODULES = ("models", "embed", "compare", "data", "eval", "convert", "train", "index", "serve", "caption")

app = typer.Typer(
    name="clipzoo",
    help="Find, inspect and run CLIP-family models (open_clip, OpenAI, HF transformers, sentence-transformers).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clipzoo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                 help="Print the version and exit.")) -> None:
    """clipzoo: one API for CLIP-family models."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    """Console-script entry point (``clipzoo = "clipzoo.cli:main"``)."""
    app(prog_name="clipzoo")


__all__ = ["app", "main", "COMMAND_MODULES"]
