"""The command line of the tiny-model writers (``python -m clipzoo.testing.tiny OUT_DIR``, …).

One argparse entry for all of them, so ``--help`` prints help (and creates nothing) and a missing or
extra argument is a usage error, not a folder named after it.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path


def run_writer(prog: str, description: str, write: Callable[[Path], Mapping[str, Path]],
               argv: list[str] | None = None) -> None:
    """Parse ``OUT_DIR`` from ``argv``, call ``write(OUT_DIR)`` and print ``name<TAB>path`` per file written."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write the files into")
    args = parser.parse_args(argv)
    for name, path in write(args.out_dir).items():
        print(f"{name}\t{path}")
