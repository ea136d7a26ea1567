"""Names of the indices one server holds: ``clipzoo serve main=INDEX other=INDEX2``.

clip-retrieval's clients choose an index by name (``indice_name``). A plain ``clipzoo serve INDEX`` serves
one index named :data:`DEFAULT_NAME`; several are each given as ``NAME=INDEX``. The first is the one our
own routes (``/search``, ``/classify``, …) use. Pure functions: the CLI checks the names before it loads
anything (and without FastAPI installed).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ClipzooError

DEFAULT_NAME = "default"
"""The name of the index of a plain ``clipzoo serve INDEX`` (or ``create_app(index)``)."""
MAX_NAME_CHARS = 64
NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_NAME_CHARS - 1}}}$")
NAME_RULE = f"letters, digits, '_', '.' and '-', starting with a letter or digit, at most {MAX_NAME_CHARS}"


def check_name(name: str) -> str:
    """``name`` when it is a valid index name (else :class:`~clipzoo.errors.ClipzooError`)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ClipzooError(f"index name {name!r} is not valid: names are {NAME_RULE} characters")
    return name


def parse_index_args(args: Sequence[str]) -> dict[str, Path]:
    """The CLI's ``INDEX`` or ``NAME=INDEX ...`` arguments -> ``{name: path}`` in their order.

    An argument that is an existing path is a path even when it holds ``=``; otherwise ``NAME=INDEX``
    splits at the first ``=``. One plain ``INDEX`` is named :data:`DEFAULT_NAME`; several indices must
    each be named."""
    if not args:
        raise ClipzooError("give an index folder: clipzoo serve INDEX (or NAME=INDEX ... for several)")
    out: dict[str, Path] = {}
    for arg in args:
        if "=" in arg and not os.path.exists(arg):
            name, path = arg.split("=", 1)
            check_name(name)
            if not path:
                raise ClipzooError(f"{arg!r}: no index after '='; write NAME=INDEX")
        elif len(args) == 1:
            name, path = DEFAULT_NAME, arg
        else:
            raise ClipzooError(f"{arg!r} has no name: name each index when serving several, as NAME=INDEX "
                               f"(e.g. main={arg})")
        if name in out:
            raise ClipzooError(f"index name {name!r} is given twice; give each index its own name")
        out[name] = Path(path)
    return out


def named_indices(index: Any) -> list[tuple[str, Any]]:
    """What ``create_app`` was given -> ``[(name, index)]``: a mapping ``{name: index}`` (the first is the
    main index), or one index (a path or an open SearchIndex) named :data:`DEFAULT_NAME`."""
    if isinstance(index, Mapping):
        if not index:
            raise ClipzooError("no index to serve: the mapping of named indices is empty")
        return [(check_name(name), value) for name, value in index.items()]
    return [(DEFAULT_NAME, index)]
