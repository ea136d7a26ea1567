"""``clipzoo embed``'s argument checks, and the sample of the user's inputs it hands ``--runtime auto``.

Split from :mod:`clipzoo.cli.embed` (whose command function is at the size limit): the checks that fail in one
line before any model loads, and :func:`auto_sample`, the ``clipzoo.load`` keywords that make ``--runtime auto``
measure on an evenly spread sample of the files of ``--images`` / the lines of ``--texts``
(:mod:`clipzoo.runtime.auto_sample`) instead of generated shapes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..inputs import check_long_text
from ._common import fail

__all__ = ["check_args", "check_one_input", "check_truncate_flag", "auto_sample", "index_sample", "WORKERS_HELP"]

WORKERS_HELP = ("Image decode workers: threads beside an ONNX Runtime model on the CPU, else processes "
                "[default: CPU count, at most 8; 0: decode in the main process].")


def check_args(more_images, images, batch_size, workers, format_="npy", long_text=None,
               truncate: bool = False) -> list[str]:
    """The image paths (after --images, and any after them); the counts and the long-text flags checked."""
    if format_ != "npy" and long_text is not None:
        fail("--long-text is for --format npy; with --format clip-retrieval use --truncate")
    check_truncate_flag(truncate, long_text)
    if more_images and not images:
        fail(f"unexpected argument {more_images[0]!r}: image paths go after --images (e.g. --images {more_images[0]})")
    if batch_size is not None and batch_size < 1:
        fail(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        fail(f"--workers must be 0 or more, got {workers}")
    return [*(images or []), *(more_images or [])]


def check_truncate_flag(truncate: bool, long_text: "str | None") -> None:
    """``--truncate`` is ``--long-text truncate``: with another ``--long-text`` the two contradict each other, and
    the run stops in one line before any model loads (``--truncate`` silently won)."""
    if long_text is not None:
        check_long_text(long_text)  # --long-text "" is no policy (not the model's default)
    if truncate and long_text not in (None, "truncate"):
        fail(f"--truncate contradicts --long-text {long_text}; pass one of them (--truncate is --long-text truncate)")


def check_one_input(image_paths, audio, texts) -> None:
    if sum(map(bool, (image_paths, audio, texts))) != 1:
        fail("pass exactly one of --images PATH…, --audio PATH… or --texts FILE")


def auto_sample(runtime: str, items=None, lines=None, image_paths=(), texts: "Path | None" = None) -> dict[str, Any]:
    """``clipzoo.load`` keywords giving ``--runtime auto`` a sample of the inputs about to be embedded (the
    expanded ``items`` of ``image_paths``, the ``lines`` of the ``texts`` file); ``{}`` for other runtimes."""
    from ..runtime.auto_sample import sample_options

    out: dict[str, Any] = {}
    if items:
        shown = ", ".join(map(str, image_paths[:2])) + (" …" if len(image_paths) > 2 else "")
        out.update(sample_options(runtime, images=items, origin=f"--images {shown}"))
    if lines:
        out.update(sample_options(runtime, texts=lines, origin=f"--texts {texts}"))
    return out


def index_sample(runtime: str, index: Path) -> dict[str, Any]:
    """``clipzoo serve INDEX --runtime auto``: the load keywords giving auto a spread sample of the images the
    index holds (its folder's files), ``{}`` for other runtimes or an index without items."""
    from ..index import open_index
    from ..runtime import normalize_runtime
    from ..runtime.auto_sample import sample_options, spread

    if normalize_runtime(runtime) != "auto":
        return {}
    with open_index(index) as idx:
        ids, _ = idx.store.all_vectors()
        items = idx.store.items(int(i) for i in spread(ids))
        paths = [str(idx.root / m["relpath"]) for m in items.values()]
    return sample_options(runtime, images=paths, origin=f"index {str(index)!r}")
