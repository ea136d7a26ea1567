"""Writing generated shapes to disk: an image folder, a CSV, webdataset tar shards and TFRecord files,
plus ``classnames.txt``, ``zeroshot_classification_templates.txt`` and ``manifest.json``.

Every file is written to a temporary name and renamed, so an interrupted run leaves no half file, and
running the same command again resumes where it stopped (finished images and shards are kept).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..files import atomic_write
from ..progress import progress as progress_bar
from .shapes_dataset import ShapesDataset
from .shapes_spec import CSV_COLUMNS, DEFAULT_FORMATS, FORMATS, LABEL_KEYS, TEMPLATES, check_label_key, class_dirname
from .shapes_spec import classnames as class_names
from .tfrecord import write_tfrecord_samples

__all__ = ["write_shapes", "normalize_formats"]

GENERATOR = "clipzoo.shapes/1"
"""The ``generator`` a shapes manifest names (readers recognise a shapes folder by its prefix)."""


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _write_file(path: Path, data: "bytes | str") -> None:
    payload = data.encode("utf-8") if isinstance(data, str) else data
    atomic_write(path, lambda f: f.write(payload))


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def normalize_formats(formats: "str | Iterable[str]") -> tuple[str, ...]:
    """``"csv,wds"`` / ``["folder", "tar"]`` -> canonical :data:`FORMATS` names, in order, without repeats."""
    if isinstance(formats, str):
        formats = [formats]
    out: list[str] = []
    for f in formats:
        for part in str(f).split(","):
            part = part.strip().lower()
            if part in ("wds", "tar"):
                part = "webdataset"
            if part == "image-folder":
                part = "folder"
            if part not in FORMATS:
                raise DatasetError(f"unknown format {f!r}: choose from {', '.join(FORMATS)}")
            if part not in out:
                out.append(part)
    if not out:
        raise DatasetError(f"no output format given: choose from {', '.join(FORMATS)}")
    return tuple(out)


# ------------------------------------------------------------------ the steps of write_shapes
def _prepare_folder(out: Path, params: dict[str, Any], overwrite: bool) -> None:
    """Check ``out`` against an earlier run (same params: resume; else clear with ``overwrite``), remove
    files a killed run left half-written, and mark the data set incomplete until the end."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output {str(out)!r} is a file, not a folder: pass a folder path to --out")
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text("utf-8")).get("params", {})
        except (OSError, ValueError):
            old = None
        if old != params:
            if not overwrite:
                diff = ", ".join(f"{k} {old.get(k)!r} (now {v!r})" for k, v in params.items()
                                 if old.get(k) != v) if isinstance(old, dict) else "unreadable manifest.json"
                raise DatasetError(f"{str(out)!r} already holds a data set made with other arguments: {diff}; "
                                   f"use a new folder or pass --overwrite")
            for sub in ("images", "webdataset", "tfrecord"):
                shutil.rmtree(out / sub, ignore_errors=True)
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"output folder {str(out)!r} is not empty: use a new folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    stale_files = [pat for d in ("", "*/", "images/*/") for pat in (f"{d}.*.tmp-*", f"{d}*.part")]
    for stale in [p for pat in stale_files for p in out.glob(pat)]:
        stale.unlink(missing_ok=True)  # left by a run that was killed mid-write
    _write_file(manifest_path, json.dumps({"params": params, "complete": False}, indent=2))


@contextlib.contextmanager
def _ticker(progress: "bool | Callable[[int], None]", total: int) -> Iterator[Callable[[int], None]]:
    """``tick(k)`` after every ``k`` samples: a progress bar (``True``), a callable given the count done, or nothing."""
    if progress is True:
        with progress_bar(total, "shapes", unit="img") as advance:
            yield advance
    elif callable(progress):
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            progress(done[0])

        yield tick
    else:
        yield lambda k: None


@dataclass
class _Writer:
    """One run of :func:`write_shapes`: what to write, and the CSV rows and class counts gathered on the way."""

    ds: ShapesDataset
    out: Path
    fmts: tuple[str, ...]
    label_key: str
    names: list[str]
    rows: list[list[str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def want_images(self) -> bool:
        return "folder" in self.fmts or "csv" in self.fmts

    def make_folders(self) -> None:
        if self.want_images:
            for c in self.names:
                (self.out / "images" / class_dirname(c)).mkdir(parents=True, exist_ok=True)
        if "webdataset" in self.fmts:
            (self.out / "webdataset").mkdir(exist_ok=True)
        if "tfrecord" in self.fmts:
            (self.out / "tfrecord").mkdir(exist_ok=True)

    def write_shard(self, s: int, lo: int, hi: int, tick: Callable[[int], None]) -> None:
        """Samples ``lo..hi-1``: their images, tar shard ``s`` and TFRecord shard ``s`` (those not on disk yet)."""
        shard_path = self.out / "webdataset" / f"shard-{s:06d}.tar"
        tfr_path = self.out / "tfrecord" / f"shard-{s:06d}.tfrecord"
        tfr_samples: "list[dict[str, Any]] | None" = (
            [] if "tfrecord" in self.fmts and not tfr_path.exists() else None)
        if "webdataset" not in self.fmts or shard_path.exists():
            self._write_samples(lo, hi, None, tfr_samples, tick)
        else:
            tmp_tar = shard_path.with_name(f".{shard_path.name}.tmp-{os.getpid()}")
            try:
                with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as tar:
                    self._write_samples(lo, hi, tar, tfr_samples, tick)
            except BaseException:
                tmp_tar.unlink(missing_ok=True)
                raise
            os.replace(tmp_tar, shard_path)
        if tfr_samples is not None:
            write_tfrecord_samples(tfr_path, tfr_samples)  # written to a temporary name, then renamed

    def _write_samples(self, lo: int, hi: int, tar: "tarfile.TarFile | None",
                       tfr_samples: "list[dict[str, Any]] | None", tick: Callable[[int], None]) -> None:
        for i in range(lo, hi):
            p = self.ds.plan(i)
            labels = p["labels"]
            cls = labels[self.label_key]
            self.counts[cls] += 1
            key = f"{i:08d}"
            rel = f"images/{class_dirname(cls)}/{key}.png"
            img_path = self.out / rel
            need_img = self.want_images and not img_path.exists()
            if need_img or tar is not None or tfr_samples is not None:
                self._write_sample(i, key, cls, img_path if need_img else None, tar, tfr_samples)
            if "csv" in self.fmts:
                self.rows.append([rel, p["caption"], *(labels[k] for k in LABEL_KEYS)])
            tick(1)

    def _write_sample(self, i: int, key: str, cls: str, img_path: "Path | None", tar: "tarfile.TarFile | None",
                      tfr_samples: "list[dict[str, Any]] | None") -> None:
        sample = self.ds.render(i)
        png = _png_bytes(sample.image)
        if img_path is not None:
            _write_file(img_path, png)
        if tar is not None:
            meta = dict(sample.labels, index=i, caption=sample.caption, captions=sample.captions,
                        objects=sample.objects, background=sample.background)
            _tar_add(tar, f"{key}.png", png)
            _tar_add(tar, f"{key}.txt", sample.caption.encode("utf-8"))
            _tar_add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            _tar_add(tar, f"{key}.cls", str(self.names.index(cls)).encode("ascii"))
        if tfr_samples is not None:
            tfr_samples.append({"key": key, "image": png, "captions": [sample.caption],
                                "label": self.names.index(cls), "meta": dict(sample.labels)})

    def write_index_files(self, n_shards: int) -> dict[str, Any]:
        """``shapes.csv`` and ``webdataset/nshards.txt``; returns the manifest's ``files`` entry."""
        if "csv" in self.fmts:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(CSV_COLUMNS)
            w.writerows(self.rows)
            _write_file(self.out / "shapes.csv", buf.getvalue())
        if "webdataset" in self.fmts:
            _write_file(self.out / "webdataset" / "nshards.txt", f"{n_shards}\n")
        files: dict[str, Any] = {"classnames": "classnames.txt", "templates": "zeroshot_classification_templates.txt"}
        if self.want_images:
            files["images"] = "images"
        if "csv" in self.fmts:
            files["csv"] = "shapes.csv"
        if "webdataset" in self.fmts:
            files["webdataset"] = f"webdataset/shard-{{000000..{n_shards - 1:06d}}}.tar"
            files["shards"] = n_shards
        if "tfrecord" in self.fmts:
            files["tfrecord"] = f"tfrecord/shard-{{000000..{n_shards - 1:06d}}}.tfrecord"
            files["shards"] = n_shards
        return files


def write_shapes(
    out_dir: "str | os.PathLike[str]",
    n: int,
    seed: int = 0,
    image_size: int = 64,
    formats: "str | Iterable[str]" = DEFAULT_FORMATS,
    shard_size: int = 1000,
    label_key: str = "shape",
    two_object_prob: float = 0.25,
    overwrite: bool = False,
    progress: "bool | Callable[[int], None]" = False,
) -> dict[str, Any]:
    """Generate ``n`` samples and write them under ``out_dir``; returns the manifest (also written as
    ``out_dir/manifest.json``).

    Layout::

        out_dir/
          images/<class>/<KEY>.png               formats "folder" or "csv" (class: ``label_key``)
          shapes.csv                             format "csv": filepath (relative),caption,<labels>
          webdataset/shard-000000.tar …          format "webdataset": KEY.png KEY.txt KEY.json KEY.cls
          webdataset/nshards.txt
          tfrecord/shard-000000.tfrecord …       format "tfrecord": tf.train.Examples (png, txt, cls, key, labels)
          classnames.txt                         classes of ``label_key``, one a line (index = line)
          zeroshot_classification_templates.txt  "{c}" templates, one a line
          manifest.json

    Re-running with the same arguments resumes: finished images and shards are kept. Different
    arguments on a used folder raise :class:`DatasetError` unless ``overwrite=True``.
    ``progress``: ``True`` for a progress bar on stderr, or a callable given the number of samples done.
    """
    fmts = normalize_formats(formats)
    check_label_key(label_key)
    if not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise DatasetError(f"shard size must be a positive integer, got {shard_size!r}")
    ds = ShapesDataset(n, seed=seed, image_size=image_size, two_object_prob=two_object_prob)
    out = Path(out_dir)
    params = {"generator": GENERATOR, "n": ds.n, "seed": ds.seed, "image_size": ds.image_size,
              "two_object_prob": ds.two_object_prob, "label_key": label_key, "shard_size": int(shard_size),
              "formats": list(fmts)}
    _prepare_folder(out, params, overwrite)
    names = class_names(label_key)
    _write_file(out / "classnames.txt", "".join(f"{c}\n" for c in names))
    _write_file(out / "zeroshot_classification_templates.txt", "".join(f"{t}\n" for t in TEMPLATES))

    writer = _Writer(ds, out, fmts, label_key, names, counts={c: 0 for c in names})
    writer.make_folders()
    n_shards = math.ceil(ds.n / shard_size)
    with _ticker(progress, ds.n) as tick:
        for s in range(n_shards):
            writer.write_shard(s, s * shard_size, min(ds.n, (s + 1) * shard_size), tick)
    files = writer.write_index_files(n_shards)
    manifest = {"params": params, "complete": True, "files": files, "classnames": names,
                "class_counts": writer.counts}
    _write_file(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
