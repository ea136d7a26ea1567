"""What an index imported from a clip-retrieval embedding folder (``clipzoo index build --from-embeddings``) records
of its source, and the command that mends it: such an index is rebuilt by importing again, never by a folder build
over the embeddings folder.

- ``source = "clip-retrieval"``; ``embeddings``: the embedding folder's absolute path (indices imported before it
  was recorded kept it in ``root``); ``root``: the folder the rows' ``image_path`` values lie under.
- ``importing``: true from the start of an import until its last row is written; an import killed (or failed)
  meanwhile leaves a mix of old and new rows, which ``clipzoo index repair`` must not publish.
"""
from __future__ import annotations

import shlex
from typing import Any

__all__ = ["SOURCE", "SOURCE_META", "EMBEDDINGS_META", "IMPORTING_META", "imported_from", "import_command",
           "unfinished_import"]

SOURCE = "clip-retrieval"
SOURCE_META = "source"
EMBEDDINGS_META = "embeddings"
IMPORTING_META = "importing"


def imported_from(store: Any) -> str | None:
    """The embedding folder an index was imported from (None: not an import)."""
    if store.get_meta(SOURCE_META) != SOURCE:
        return None
    return store.get_meta(EMBEDDINGS_META) or store.get_meta("root")


def import_command(store: Any) -> str:
    """``clipzoo index build --from-embeddings EMB --out INDEX``, quoted for a shell."""
    emb = shlex.quote(str(imported_from(store) or "EMBEDDINGS"))
    return f"clipzoo index build --from-embeddings {emb} --out {shlex.quote(str(store.path))}"


def unfinished_import(store: Any) -> str | None:
    """The one line for an index whose import did not finish, or None."""
    if not store.get_meta(IMPORTING_META):
        return None
    return (f"the import into index {str(store.path)!r} did not finish (it was killed or failed), so its rows are "
            f"a mix of two imports; rerun it: `{import_command(store)}`")
