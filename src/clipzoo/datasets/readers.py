"""Open a data set from a path or URL: image folders, CSV/TSV, webdataset tars, TFRecord files,
CLIP_benchmark's webdataset layout and clipzoo's generated shapes — local, or remote through fsspec.

:func:`open_dataset` returns a :class:`DataSource`: a list of *shards* (callables yielding
:class:`~clipzoo.datasets.records.Record`s, split across DataLoader workers and ranks), plus class
names and templates when the data set carries them. Which reader is used:

=============================================  ==============================================
``DIR`` with ``manifest.json`` (clipzoo shapes)  its CSV (or its webdataset shards)
``DIR/<split>/nshards.txt``                      CLIP_benchmark: ``DIR/<split>/{0..n-1}.tar``
``DIR`` holding ``*.tar`` / ``*.tfrecord``       every shard in it, sorted
``DIR/<class>/<image>``                          image folder (class = subfolder, sorted)
``*.csv`` / ``*.tsv``                            CSV with ``img_key`` / ``caption_key`` / ``label_key``
``*.tar``, ``a-{000..009}.tar``, globs           webdataset shards (brace-expanded)
``*.tfrecord[.gz]``, ``*.tfrec``                 TFRecord ``tf.train.Example``s
=============================================  ==============================================

``classnames.txt`` and ``zeroshot_classification_templates.txt`` next to the data (or one folder
up, as CLIP_benchmark writes them) are picked up; ``dataset_type.txt`` = ``retrieval`` marks a
retrieval set, whose ``txt`` holds one caption per line.
"""
from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Sequence
from typing import Any

from ..constants import IMAGE_FOLDER_SUFFIXES
from ..errors import DatasetError
from ..files import NOT_REGULAR, special_file
from .classes import read_lines, resolve_classnames, resolve_templates
from .csv_records import default_csv_label, read_csv_records
from .locations import (
    TAR_SUFFIXES,
    TFRECORD_SUFFIXES,
    exists,
    expand_urls,
    file_size,
    find_sidecar,
    is_tfrecord,
    isdir,
    join_url,
    listdir,
    parent_url,
    read_text,
)
from .records import Record
from .shapes_spec import LABEL_KEYS
from .shapes_spec import classnames as shape_classnames
from .shards import DataSource, ListShard, SampleFields, TarShard, TFRecordShard, chunk

__all__ = ["DataSource", "open_dataset", "ListShard", "TarShard", "TFRecordShard", "expand_urls",
           "read_csv_records", "read_image_folder"]


def read_image_folder(root: str) -> tuple[list[Record], list[str]]:
    """``root/<class>/…/<image>`` -> (records sorted by class then path, class folder names), as torchvision's
    ``ImageFolder`` reads it: every subfolder is a class, its images found at any depth; a class folder without
    images is an error once any class has images (skipping it shifted every later class's index)."""
    classes = [d for d in listdir(root) if isdir(d)]
    found = [_class_images(d) for d in classes]
    if any(found) and not all(found):
        empty = next(d for d, images in zip(classes, found) if not images)
        raise DatasetError(f"image folder {root!r}: class folder {_base(empty)!r} holds no images "
                           f"({' '.join(IMAGE_FOLDER_SUFFIXES)}); remove it or add its images (every subfolder is a "
                           "class, as torchvision's ImageFolder reads it)")
    records: list[Record] = []
    for label, images in enumerate(found if any(found) else []):
        for img, present in images:
            stem = img.rsplit(".", 1)[0]
            txt = stem + ".txt"
            captions = read_lines(txt, "caption") if txt in present and file_size(txt) else []
            records.append(Record(key=os.path.basename(stem), image=img, captions=captions, label=label, source=img))
    return records, [_base(d) for d in classes] if any(found) else []


def _base(url: str) -> str:
    return posixpath.basename(url.rstrip("/")) if "://" in url else os.path.basename(url)


def _class_images(folder: str) -> list[tuple[str, set]]:
    """(image, the entries beside it) under ``folder`` at any depth: a folder's own images first, sorted, then
    its subfolders' in turn (torchvision's ``sorted(os.walk(...))`` order)."""
    entries = listdir(folder)
    present = set(entries)
    is_image = [e.lower().endswith(IMAGE_FOLDER_SUFFIXES) for e in entries]  # as torchvision tells them
    out = [(e, present) for e, image in zip(entries, is_image) if image]
    for sub in (e for e, image in zip(entries, is_image) if not image and isdir(e)):
        out.extend(_class_images(sub))
    return out


# ------------------------------------------------------------------ dispatch
def open_dataset(spec: "str | os.PathLike | Sequence[str]", split: str = "test", *, img_key: "str | None" = None,
                 caption_key: "str | None" = None, label_key: "str | None" = None, separator: "str | None" = None,
                 classnames: Any = None, templates: Any = None, name: "str | None" = None,
                 shard_size: int = 64) -> DataSource:
    """Open a data set (see the module docstring for the layouts); raises :class:`DatasetError`."""
    if not isinstance(spec, (str, os.PathLike)):
        urls = expand_urls([os.fspath(s) for s in spec])
        return _shards_source(urls, name or "shards", None, img_key, caption_key, label_key, classnames, templates)
    spec = os.fspath(spec)
    label = name or _default_name(spec)
    if isdir(spec):
        return _open_folder(spec.rstrip("/") if len(spec) > 1 else spec, split, label, img_key, caption_key,
                            label_key, separator, classnames, templates, shard_size)
    lower = spec.lower()
    literal = "://" not in spec and os.path.isfile(spec)  # "data [v2]/train.csv" is that file, not a glob
    if lower.endswith((".csv", ".tsv", ".tab")) and (literal or not any(c in spec for c in "{*?[")):
        return _csv_source(spec, label, img_key, caption_key, label_key, separator, classnames, templates, shard_size)
    if any(c in spec for c in "{*?[") or lower.endswith(TAR_SUFFIXES) or is_tfrecord(lower):
        urls = expand_urls(spec)
        return _shards_source(urls, label, parent_url(urls[0]), img_key, caption_key, label_key, classnames, templates)
    if not exists(spec):
        raise DatasetError(f"data set {spec!r} does not exist; pass a folder, a .csv/.tsv file, .tar shards "
                           f"or .tfrecord files")
    raise DatasetError(f"cannot tell what kind of data set {spec!r} is: expected a folder, a .csv/.tsv file, "
                       f".tar shards or .tfrecord files")


def _default_name(spec: str) -> str:
    base = spec.rstrip("/").rsplit("/", 1)[-1]
    base = base.split("{", 1)[0].rstrip("-_") or base
    for suffix in (".csv", ".tsv", *TAR_SUFFIXES, *TFRECORD_SUFFIXES):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base or "dataset"


def _shapes_params(folder: str) -> "dict | None":
    """The parameters of a clipzoo shapes data set in ``folder`` or its parent, else None."""
    for base in (folder, parent_url(folder)):
        path = join_url(base, "manifest.json") if base else None
        if path and exists(path):
            try:
                params = json.loads(read_text(path)).get("params", {})
            except ValueError:
                return None
            return params if str(params.get("generator", "")).startswith("clipzoo.shapes") else None
    return None


def _meta(folder: str, classnames: Any, templates: Any, name: str,
          label_key: "str | None" = None) -> tuple["list[str] | None", "list[str] | None", str]:
    names = resolve_classnames(classnames, name)
    shapes = _shapes_params(folder) if names is None and label_key else None
    if shapes is not None and label_key != shapes.get("label_key") and label_key in LABEL_KEYS:
        names = shape_classnames(label_key)  # classnames.txt lists the classes of the folder's own label key
    if names is None and (path := find_sidecar(folder, "classnames.txt")):
        names = read_lines(path, "class names")
    temps = resolve_templates(templates, name)
    if temps is None and (path := find_sidecar(folder, "zeroshot_classification_templates.txt")):
        temps = resolve_templates(read_lines(path, "templates"))
    kind = "classification"
    if path := find_sidecar(folder, "dataset_type.txt"):
        kind = "retrieval" if read_text(path).strip().lower() == "retrieval" else "classification"
    return names, temps, kind


def _open_folder(root: str, split: str, name: str, img_key, caption_key, label_key, separator, classnames,
                 templates, shard_size) -> DataSource:
    manifest = join_url(root, "manifest.json")
    if exists(manifest):
        try:
            info = json.loads(read_text(manifest))
        except ValueError:
            info = {}
        if str(info.get("params", {}).get("generator", "")).startswith("clipzoo.shapes"):
            return _open_shapes(root, info, name, img_key, caption_key, label_key, classnames, templates, shard_size)
    split_dir = join_url(root, split)
    if split and isdir(split_dir):
        return _open_folder(split_dir, "", name, img_key, caption_key, label_key, separator, classnames,
                            templates, shard_size)
    entries = listdir(root)
    files = [e for e in entries if not isdir(e)]
    nshards = join_url(root, "nshards.txt")
    tars = [e for e in files if e.lower().endswith(TAR_SUFFIXES)]
    if exists(nshards) and exists(join_url(root, "0.tar")):
        tars = _numbered_shards(root, read_text(nshards).strip(), len(tars))
    tfrecords = [e for e in files if is_tfrecord(e)]
    if tars or tfrecords:
        return _shards_source(tars or tfrecords, name, root, img_key, caption_key, label_key, classnames, templates)
    records, dirnames = read_image_folder(root)
    if records:
        names, temps, kind = _meta(root, classnames, templates, name)
        if names is None:
            names = [d.replace("_", " ") for d in dirnames]
        elif len(names) != len(dirnames):
            raise DatasetError(f"image folder {root!r} has {len(dirnames)} class folders but {len(names)} class "
                               f"names were given; they must match one to one (folders sorted by name)")
        return DataSource(name, chunk(records, name, shard_size), names, temps, kind, root, len(records))
    raise DatasetError(f"folder {root!r} holds no data set: expected class subfolders of images, .tar shards, "
                       f".tfrecord files, a {split!r} split folder, or a clipzoo shapes folder")


def _numbered_shards(root: str, count: str, tars_here: int) -> list[str]:
    """CLIP_benchmark's ``0.tar`` … ``{n-1}.tar`` from ``nshards.txt``'s ``count``; a count that is no number, or
    more shards than the folder holds, is a one-line error (a count of 10^8 listed that many names for minutes)."""
    if not (count.isascii() and count.isdecimal()) or not 1 <= int(count) <= tars_here:
        raise DatasetError(f"{join_url(root, 'nshards.txt')}: says {count[:40]!r} shards, but the folder holds "
                           f"{tars_here} .tar file(s); write the number of shards 0.tar, 1.tar, … it holds")
    return [join_url(root, f"{i}.tar") for i in range(int(count))]


def _open_shapes(root, info, name, img_key, caption_key, label_key, classnames, templates, shard_size):
    params = info.get("params", {})
    files = info.get("files", {})
    if not info.get("complete"):
        raise DatasetError(f"shapes data set {root!r} is incomplete (its writer was interrupted); "
                           f"run the same `clipzoo data shapes` command again to finish it")
    names, temps, kind = _meta(root, classnames, templates, name, label_key)
    if files.get("csv"):
        key = label_key or params.get("label_key", "shape")
        return _csv_source(join_url(root, files["csv"]), name, img_key or "filepath", caption_key or "caption", key,
                           ",", names, temps, shard_size, root=root)
    for fmt in ("webdataset", "tfrecord"):
        if files.get(fmt):
            urls = expand_urls(join_url(root, files[fmt]))
            return _shards_source(urls, name, root, img_key, caption_key, label_key, names, temps)
    records, _ = read_image_folder(join_url(root, "images"))
    return DataSource(name, chunk(records, name, shard_size), names, temps, kind, root, len(records))


def _csv_source(path, name, img_key, caption_key, label_key, separator, classnames, templates, shard_size,
                root=None) -> DataSource:
    folder = root or parent_url(path) or "."
    if label_key is None:
        label_key = default_csv_label(path, folder, separator)
    names, temps, kind = _meta(folder, classnames, templates, name, label_key)
    records, names = read_csv_records(path, img_key, caption_key, label_key, separator, names)
    if not records:
        raise DatasetError(f"CSV file {path!r} has no rows: the data set is empty")
    return DataSource(name, chunk(records, name, shard_size), names, temps, kind, path, len(records))


def _shards_source(urls, name, folder, img_key, caption_key, label_key, classnames, templates) -> DataSource:
    if not urls:
        raise DatasetError(f"data set {name!r}: no shards given")
    names, temps, kind = _meta(folder, classnames, templates, name, label_key) if folder else (
        resolve_classnames(classnames, name), resolve_templates(templates, name), "classification")
    for url in urls:  # a missing local shard is said before any work (it was said after embedding the others)
        if "://" not in url and not os.path.isfile(url):
            raise DatasetError(f"shard {url!r} {NOT_REGULAR}" if special_file(url) else
                               f"shard {url!r} does not exist" if not os.path.isdir(url) else
                               f"shard {url!r} is a folder; pass .tar or .tfrecord files")
    fields = SampleFields(img_key, caption_key, label_key, names)
    shards = [TFRecordShard(u, fields) if is_tfrecord(u) else TarShard(u, fields) for u in urls]
    return DataSource(name, shards, names, temps, kind, folder or urls[0], None)
