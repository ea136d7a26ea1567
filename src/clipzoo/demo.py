"""``clipzoo demo``: the whole application in one command, offline.

Generates a few hundred captioned shapes (:func:`clipzoo.datasets.shapes.write_shapes`, with each
caption in a ``.txt`` beside its image), builds a search index over them with the embedded default
model ``clipzoo/tiny-shapes``, prints a few text searches and a zero-shot classification, then serves
the web page on http://127.0.0.1:5020. Everything lives in a cache folder (``~/.cache/clipzoo/demo``
by default) and a second run reuses it: the images and the index are incremental.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clipzoo.serve as serving

from .api import load
from .constants import DEMO_IMAGES, default_cache_dir
from .datasets.shapes import SHAPES, classnames, write_shapes
from .errors import ClipzooError
from .files import atomic_write
from .index import build_index, classify_images, open_index
from .serve import DEFAULT_HOST, DEFAULT_PORT
from .testing.tiny import write_open_clip_hub_folder

DEFAULT_MODEL = "clipzoo/tiny-shapes"
DEFAULT_N = DEMO_IMAGES
DEMO_QUERIES = ("a red circle", "a blue square", "a yellow star", "a green triangle")
DEMO_TEMPLATE = "a {}."


@dataclass
class DemoResult:
    """What the demo did: where its data and index are, the model used, the searches and classification."""

    folder: Path
    index: Path
    model: str
    fallback: bool
    build: Any
    searches: dict[str, list[dict]] = field(default_factory=dict)
    classified: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)


def default_demo_dir() -> Path:
    """Where the demo keeps its shapes and index: ``demo`` in the clipzoo cache."""
    return default_cache_dir() / "demo"


def make_shapes(root: "str | os.PathLike", n: int = DEFAULT_N, seed: int = 0, image_size: int = 64) -> Path:
    """Write ``n`` captioned shapes under ``root`` (resumable) -> the image folder (one subfolder per shape).

    Each image ``images/<shape>/<key>.png`` gets its caption in ``<key>.txt`` beside it, which the index
    build stores with the item.
    """
    root = Path(root)
    write_shapes(root, n, seed=seed, image_size=image_size, formats=("folder", "csv"), label_key="shape")
    with open(root / "shapes.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            txt = (root / row["filepath"]).with_suffix(".txt")
            if not txt.exists():
                data = (row["caption"] + "\n").encode("utf-8")
                atomic_write(txt, lambda f, data=data: f.write(data))
    return root / "images"


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-")[:60] or "model"


def load_demo_model(model: str | None, folder: Path, echo: Callable[[str], None], device: str = "cpu"):
    """``model`` or the embedded default -> (Comparator, spec, fell_back).

    Only the default falls back: when it cannot load, a tiny random-weight model stands in, with a
    warning that its results mean nothing. A model the user named that fails to load is an error.
    """
    if model:
        return load(model, device=device), model, False
    try:
        return load(DEFAULT_MODEL, device=device), DEFAULT_MODEL, False
    except (ClipzooError, OSError, ImportError, RuntimeError, KeyError) as exc:
        stand_in = folder / "tiny-random"
        if not (stand_in / "open_clip_config.json").exists():
            write_open_clip_hub_folder(stand_in)
        echo(f"warning: the default model {DEFAULT_MODEL} cannot be loaded ({' '.join(str(exc).split())}); "
             f"using a tiny random-weight model instead, so the results below are meaningless. "
             f"Pass --model to choose another.")
        return load(str(stand_in), device=device), str(stand_in), True


def run_demo(n: int = DEFAULT_N, model: str | None = None, folder: "str | os.PathLike | None" = None,
             serve: bool = True, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, device: str = "cpu",
             echo: Callable[[str], None] = print, progress: bool = True) -> DemoResult:
    """Run the demo (see the module docstring); returns what it did once ``serve`` is False or the server stops."""
    if n < 10:
        raise ClipzooError(f"the demo needs at least 10 images, got -n {n}")
    folder = Path(folder) if folder is not None else default_demo_dir()
    folder.mkdir(parents=True, exist_ok=True)

    echo(f"1. generating {n} captioned shapes in {folder / f'shapes-{n}'} …")
    images = make_shapes(folder / f"shapes-{n}", n)

    comparator, spec, fell_back = load_demo_model(model, folder, echo, device)
    name = Path(spec).name if os.path.exists(spec) else spec  # a local model: its folder or file name
    index_dir = folder / f"index-{n}-{_slug(name)}"
    echo(f"2. indexing them with {spec} into {index_dir} …")
    report = build_index(images, index_dir, model=comparator, progress=progress)
    echo(f"   {report.total} items ({report.added} added, {report.updated} updated, {report.removed} removed, "
         f"{report.unchanged} unchanged) in {report.seconds:.1f} s; {report.index_kind} index"
         + (f", recall@10 {report.recall_at_10:.3f}" if report.recall_at_10 is not None else ""))
    idx = open_index(index_dir, model=comparator)

    result = DemoResult(folder=folder, index=index_dir, model=spec, fallback=fell_back, build=report)
    echo("3. text searches (top 3: cosine, caption, file):")
    for query in DEMO_QUERIES:
        hits = idx.search_text(query, k=3)
        result.searches[query] = [h.to_dict() for h in hits]
        echo(f'   "{query}"')
        for h in hits:
            caption = h.caption or ""
            caption = caption if len(caption) <= 45 else caption[:44] + "…"
            echo(f"      {h.score:.3f}  {caption:<45}  {h.relpath}")

    labels = classnames("shape_color")
    sample = sorted(Path(images).glob(f"{SHAPES[0]}/*.png"))[0]
    caption_file = sample.with_suffix(".txt")
    truth = caption_file.read_text("utf-8").strip() if caption_file.exists() else sample.parent.name
    top = idx_classify(comparator, sample, labels)
    result.classified = {"image": str(sample), "caption": truth, "top": top}
    result.labels = labels
    echo(f"4. zero-shot classification of {sample.relative_to(images)} ({truth!r}) over {len(labels)} labels:")
    for label, p in top:
        echo(f"      {p:6.1%}  {label}")

    if serve:
        app = serving.create_app(idx, labels=labels, template=DEMO_TEMPLATE)
        echo(f"5. serving the web page on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops it")
        serving.run(app, host=host, port=port)
    return result


def idx_classify(model: Any, image: Any, labels: list[str], k: int = 3) -> list[tuple[str, float]]:
    """Top-``k`` labels of one image (the library's ``classify_images`` with the demo's template)."""
    return classify_images(model, [image], labels, template=DEMO_TEMPLATE, k=k)[0]
