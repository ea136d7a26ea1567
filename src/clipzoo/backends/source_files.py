"""The local weights file of a card, for backends that read one publisher file (SLIP, KELIP, CLOOB): its
``source.path``, a hub file (``hf_repo`` + ``hf_file``), or a download from ``source.url`` (verified against
``source.sha256`` when the publisher gives one)."""
from __future__ import annotations

import os
from pathlib import Path

from ..cards import ModelCard
from ..download import download_url, hub_file
from ..errors import CheckpointError, ModelNotCachedError


def card_file(card: ModelCard, cache_dir: "str | os.PathLike | None", folder: str) -> Path:
    """The card's weights file on this machine; downloads land in ``cache_dir/folder`` (or the default
    cache's ``url`` folder)."""
    src = card.source
    if src.path:
        return Path(src.path)
    if src.hf_repo and src.hf_file:
        return hub_file(src.hf_repo, src.hf_file, cache_dir)
    if src.url:
        return download_url(src.url, src.sha256, None if cache_dir is None else os.path.join(str(cache_dir), folder))
    raise CheckpointError(f"{card.alias} has no weights file; register it with path=…, url=… or hf_repo + hf_file")


def cached_hub_file(repo: str, filename: str, cache_dir=None, revision: str | None = None) -> Path:
    """A hub file from the local Hugging Face cache only (sizes are computed offline and download nothing);
    :class:`ModelNotCachedError` naming it when absent."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=None if cache_dir is None else str(cache_dir),
                                   revision=revision)
    if isinstance(found, str) and os.path.isfile(found):
        return Path(found)
    raise ModelNotCachedError(f"{filename} of hub repo {repo!r} is not in the local Hugging Face cache, so the size "
                              f"cannot be computed offline; fetch it once (`hf download {repo} {filename}"
                              + (f" --revision {revision}" if revision else "") + "`)")
