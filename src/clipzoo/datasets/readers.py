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

import csv
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DatasetError
from .classes import read_lines, resolve_classnames, resolve_templates
from .records import IMAGE_EXTENSIONS, Record

__all__ = ["DataSource", "open_dataset", "ListShard", "TarShard", "TFRecordShard", "expand_urls",
           "read_csv_records", "read_image_folder"]

CAPTION_EXTENSIONS = ("txt", "caption", "text")
LABEL_EXTENSIONS = ("cls", "label")
CSV_IMAGE_COLUMNS = ("filepath", "image", "image_path", "path", "file", "url")
CSV_CAPTION_COLUMNS = ("caption", "title", "text", "txt")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec", ".tfrecord.gz", ".tfrecords.gz", ".tfrec.gz")


# ------------------------------------------------------------------ shards
@dataclass
class ListShard:
    """Records known up front (image folder, CSV)."""

    name: str
    records: list[Record]

    def __call__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class SampleFields:
    """Which member / JSON field of a sample holds the image, the captions and the label."""

    image: "str | None" = None
    caption: "str | None" = None
    label: "str | None" = None
    classnames: "list[str] | None" = None
    multi_caption: bool = True  # a caption text holds one caption per line (CLIP_benchmark retrieval sets)

    def label_of(self, value: Any, where: str) -> "int | None":
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8").strip()
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
            if value is None:
                return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if self.classnames is None:
            raise DatasetError(f"{where}: label {text!r} is a class name but no class names are known; "
                               f"add classnames.txt next to the data or pass --classnames")
        try:
            return self.classnames.index(text)
        except ValueError:
            raise DatasetError(f"{where}: label {text!r} is not one of the {len(self.classnames)} class names "
                               f"({', '.join(self.classnames[:6])}{', …' if len(self.classnames) > 6 else ''}); "
                               f"the class names do not match the data") from None

    def captions_of(self, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        text = str(value)
        lines = text.splitlines() if self.multi_caption else [text]
        return [ln.strip() for ln in lines if ln.strip()]


def _split_member(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first '.' of the basename; extension = the rest."""
    directory, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, ext.lower()


@dataclass
class TarShard:
    """One webdataset tar (local or URL): members ``KEY.ext`` grouped into samples."""

    url: str
    fields: SampleFields = field(default_factory=SampleFields)

    @property
    def name(self) -> str:
        return self.url

    def __call__(self) -> Iterator[Record]:
        try:
            fh = _open_binary(self.url)
        except FileNotFoundError:
            raise DatasetError(f"shard {self.url!r} does not exist") from None
        with fh:
            try:
                with tarfile.open(fileobj=fh, mode="r|*") as tar:
                    key, parts = None, {}
                    for member in tar:
                        if not member.isfile():
                            continue
                        k, ext = _split_member(member.name)
                        if k != key and parts:
                            yield self._record(key, parts)
                            parts = {}
                        key = k
                        data = tar.extractfile(member)
                        parts[ext] = data.read() if data is not None else b""
                    if parts:
                        yield self._record(key, parts)
            except (tarfile.TarError, EOFError, OSError) as err:
                raise DatasetError(f"shard {self.url!r} is not a readable tar file ({err}); "
                                   f"it may be truncated — rewrite it") from None

    def _record(self, key: str, parts: dict[str, bytes]) -> Record:
        f = self.fields
        where = f"{self.url}:{key}"
        meta: dict[str, Any] = {}
        if "json" in parts:
            try:
                meta = json.loads(parts["json"].decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise DatasetError(f"{where}.json is not valid JSON") from None
            if not isinstance(meta, dict):
                meta = {"json": meta}
        image_ext = f.image or next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        image = parts.get(image_ext) if image_ext else None
        if f.image and image is None:
            raise DatasetError(f"{where}: no member {key}.{f.image}; the sample has {', '.join(sorted(parts))} "
                               f"(choose the image with --img-key)")
        captions = self._field(parts, meta, f.caption, CAPTION_EXTENSIONS, where, "caption", "--caption-key")
        label = self._field(parts, meta, f.label, LABEL_EXTENSIONS, where, "label", "--label-key")
        return Record(key=key, image=image, captions=f.captions_of(captions), label=f.label_of(label, where),
                      source=f"{where}.{image_ext}" if image_ext else where, meta=meta)

    @staticmethod
    def _field(parts, meta, name, defaults, where, what, flag):
        if name is None:
            ext = next((e for e in defaults if e in parts), None)
            return parts.get(ext) if ext else None
        if name in parts:
            return parts[name]
        if name in meta:
            return meta[name]
        raise DatasetError(f"{where}: no {what} {name!r}: the sample has members {', '.join(sorted(parts))}"
                           + (f" and JSON fields {', '.join(sorted(meta))}" if meta else "") + f" (set {flag})")


@dataclass
class TFRecordShard:
    """One TFRecord file of ``tf.train.Example``s (see :mod:`clipzoo.datasets.tfrecord`)."""

    url: str
    fields: SampleFields = field(default_factory=SampleFields)

    @property
    def name(self) -> str:
        return self.url

    def __call__(self) -> Iterator[Record]:
        from .tfrecord import iter_tfrecord_records

        f = self.fields
        for rec in iter_tfrecord_records(self.url, image_key=f.image, caption_key=f.caption, label_key=f.label):
            captions = rec.captions
            if f.multi_caption and len(captions) == 1:
                captions = f.captions_of(captions[0])
            label = rec.label if rec.label is None or isinstance(rec.label, int) else f.label_of(rec.label, rec.source)
            yield Record(key=rec.key, image=rec.image, captions=captions, label=label, source=rec.source,
                         meta=rec.meta)


# ------------------------------------------------------------------ the data source
@dataclass
class DataSource:
    """A data set: shards of records, plus what the data set says about itself."""

    name: str
    shards: list[Callable[[], Iterator[Record]]]
    classnames: "list[str] | None" = None
    templates: "list[str] | None" = None
    kind: str = "classification"  # or "retrieval"
    location: str = ""
    size: "int | None" = None  # known for folders and CSV; None for streamed shards

    def __iter__(self) -> Iterator[Record]:
        for shard in self.shards:
            yield from shard()

    def __repr__(self) -> str:
        size = "?" if self.size is None else self.size
        classes = "" if self.classnames is None else f", {len(self.classnames)} classes"
        return f"DataSource({self.name!r}, {size} samples in {len(self.shards)} shards{classes}, kind={self.kind!r})"

    def fingerprint(self) -> str:
        """Identifies the data for caches: location, shards and their sizes / mtimes where known."""
        import hashlib

        h = hashlib.sha256(f"{self.location}|{self.size}".encode())
        for s in self.shards:
            name = getattr(s, "name", repr(s))
            h.update(name.encode())
            if isinstance(s, ListShard):
                for r in s.records:
                    h.update(f"{r.image if isinstance(r.image, str) else r.key}|{r.label}|{r.captions}".encode())
            elif "://" not in name:
                try:
                    st = os.stat(name)
                    h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
                except OSError:
                    pass
        return h.hexdigest()[:16]


def _open_binary(url: str):
    if "://" in url and not url.startswith("file://"):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url[7:] if url.startswith("file://") else url, "rb")


def _fs(url: str):
    from ..files import url_filesystem

    return url_filesystem(url, DatasetError)


def _join(base: str, *parts: str) -> str:
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def _exists(url: str) -> bool:
    if "://" not in url:
        return os.path.exists(url)
    fs, path = _fs(url)
    return fs.exists(path)


def _isdir(url: str) -> bool:
    if "://" not in url:
        return os.path.isdir(url)
    fs, path = _fs(url)
    return fs.isdir(path)


def _listdir(url: str) -> list[str]:
    """Full URLs / paths of the entries of a folder, sorted."""
    if "://" not in url:
        return sorted(os.path.join(url, n) for n in os.listdir(url))
    fs, path = _fs(url)
    protocol = url.split("://", 1)[0]
    out = []
    for p in fs.ls(path, detail=False):
        p = p if "://" in p else f"{protocol}://{p.lstrip('/')}" if protocol != "file" else p
        out.append(p)
    return sorted(out)


def expand_urls(spec: "str | Sequence[str]") -> list[str]:
    """Brace-expand (``shard-{000..009}.tar``) and glob a shard spec (or list of specs) into URLs."""
    from braceexpand import braceexpand

    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in specs:
        for u in braceexpand(s):
            if any(c in u for c in "*?["):
                fs, path = _fs(u)
                matches = sorted(fs.glob(path))
                if not matches:
                    raise DatasetError(f"no files match {u!r}")
                protocol = u.split("://", 1)[0] if "://" in u else None
                out.extend(m if protocol in (None, "file") else f"{protocol}://{m.lstrip('/')}" for m in matches)
            else:
                out.append(u)
    return out


def _is_tfrecord(url: str) -> bool:
    return url.lower().endswith(TFRECORD_SUFFIXES)


def _sidecar(folder: str, name: str) -> "str | None":
    for base in (folder, _parent(folder)):
        if base is None:
            continue
        path = _join(base, name)
        if _exists(path):
            return path
    return None


def _parent(url: str) -> "str | None":
    stripped = url.rstrip("/")
    parent = stripped.rsplit("/", 1)[0] if "://" in stripped else os.path.dirname(stripped)
    return parent if parent and parent != stripped and not parent.endswith(":/") else None


# ------------------------------------------------------------------ image folders and CSV
def _chunk(records: list[Record], name: str, shard_size: int) -> list[ListShard]:
    return [ListShard(f"{name}[{i}:{i + shard_size}]", records[i:i + shard_size])
            for i in range(0, len(records), shard_size)]


def read_image_folder(root: str) -> tuple[list[Record], list[str]]:
    """``root/<class>/<image>`` -> (records sorted by class then file, class folder names)."""
    classes = [d for d in _listdir(root) if _isdir(d)]
    records: list[Record] = []
    names: list[str] = []
    for d in classes:
        entries = _listdir(d)
        present = set(entries)
        images = [e for e in entries if e.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]
        if not images:
            continue
        label = len(names)
        names.append(posixpath.basename(d.rstrip("/")) if "://" in d else os.path.basename(d))
        for img in images:
            stem = img.rsplit(".", 1)[0]
            txt = stem + ".txt"
            captions = []
            if txt in present:
                captions = read_lines(txt, "caption") if _size(txt) else []
            records.append(Record(key=os.path.basename(stem), image=img, captions=captions, label=label, source=img))
    return records, names


def _size(url: str) -> int:
    if "://" not in url:
        return os.path.getsize(url)
    fs, path = _fs(url)
    return fs.size(path)


def _read_text(url: str) -> str:
    with _open_binary(url) as fh:
        return fh.read().decode("utf-8-sig")


def read_csv_records(path: str, img_key: "str | None" = None, caption_key: "str | None" = None,
                     label_key: "str | None" = None, separator: "str | None" = None,
                     classnames: "list[str] | None" = None) -> tuple[list[Record], "list[str] | None"]:
    """Rows of a CSV/TSV -> records; rows naming the same image are one record with several captions.

    ``img_key`` / ``caption_key`` left out: the first of :data:`CSV_IMAGE_COLUMNS` /
    :data:`CSV_CAPTION_COLUMNS` present (no caption column is fine then); a named column must exist.
    Relative image paths are resolved against the CSV's folder. A label column of class names
    is mapped through ``classnames`` (or, when none are given, the sorted distinct names).
    """
    if separator is None:
        separator = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    try:
        text = _read_text(path)
    except FileNotFoundError:
        raise DatasetError(f"CSV file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read CSV file {path!r}: {err}") from None
    reader = csv.DictReader(io.StringIO(text), delimiter=separator)
    columns = reader.fieldnames or []
    if img_key is None:  # not named: the usual names (open_clip's "filepath" first)
        img_key = next((c for c in CSV_IMAGE_COLUMNS if c in columns), "filepath")
    if caption_key is None:  # optional unless named
        caption_key = next((c for c in CSV_CAPTION_COLUMNS if c in columns), None)
    for key, flag in ((img_key, "--img-key"), (caption_key, "--caption-key"), (label_key, "--label-key")):
        if key is not None and key not in columns:
            sep_name = "tab" if separator == "\t" else repr(separator)
            raise DatasetError(f"CSV file {path!r} has no column {key!r} (columns: {', '.join(columns) or 'none'}; "
                               f"separator {sep_name}); name the right column with {flag}")
    base = _parent(path) or ""
    by_image: dict[str, Record] = {}
    raw_labels: list[str] = []
    for line, row in enumerate(reader, start=2):
        image = (row.get(img_key) or "").strip()
        if not image:
            raise DatasetError(f"{path}:{line}: empty {img_key!r} cell")
        if "://" not in image and not os.path.isabs(image):
            image = _join(base, image) if base else image
        rec = by_image.get(image)
        if rec is None:
            rec = by_image[image] = Record(key=os.path.basename(image).rsplit(".", 1)[0], image=image, source=image)
            rec.meta["line"] = line
            if label_key is not None:
                raw_labels.append((row.get(label_key) or "").strip())
        if caption_key is not None and (row.get(caption_key) or "").strip():
            rec.captions.append(row[caption_key].strip())
    records = list(by_image.values())
    names = classnames
    if label_key is not None:
        numeric = all(v.lstrip("-").isdigit() for v in raw_labels)
        if not numeric and names is None:
            names = sorted(set(raw_labels))
        fields = SampleFields(classnames=names)
        for rec, value in zip(records, raw_labels):
            if value == "":
                raise DatasetError(f"{path}:{rec.meta['line']}: empty {label_key!r} cell")
            rec.label = fields.label_of(value, f"{path}:{rec.meta['line']}")
    return records, names


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
    if _isdir(spec):
        return _open_folder(spec.rstrip("/") if len(spec) > 1 else spec, split, label, img_key, caption_key,
                            label_key, separator, classnames, templates, shard_size)
    lower = spec.lower()
    if lower.endswith((".csv", ".tsv", ".tab")) and not any(c in spec for c in "{*?["):
        return _csv_source(spec, label, img_key, caption_key, label_key, separator, classnames, templates, shard_size)
    if any(c in spec for c in "{*?[") or lower.endswith(".tar") or _is_tfrecord(lower):
        urls = expand_urls(spec)
        return _shards_source(urls, label, _parent(urls[0]), img_key, caption_key, label_key, classnames, templates)
    if not _exists(spec):
        raise DatasetError(f"data set {spec!r} does not exist; pass a folder, a .csv/.tsv file, .tar shards "
                           f"or .tfrecord files")
    raise DatasetError(f"cannot tell what kind of data set {spec!r} is: expected a folder, a .csv/.tsv file, "
                       f".tar shards or .tfrecord files")


def _default_name(spec: str) -> str:
    base = spec.rstrip("/").rsplit("/", 1)[-1]
    base = base.split("{", 1)[0].rstrip("-_") or base
    for suffix in (".csv", ".tsv", ".tar", *TFRECORD_SUFFIXES):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base or "dataset"


def _shapes_params(folder: str) -> "dict | None":
    """The parameters of a clipzoo shapes data set in ``folder`` or its parent, else None."""
    for base in (folder, _parent(folder)):
        path = _join(base, "manifest.json") if base else None
        if path and _exists(path):
            try:
                params = json.loads(_read_text(path)).get("params", {})
            except ValueError:
                return None
            return params if str(params.get("generator", "")).startswith("clipzoo.shapes") else None
    return None


def _meta(folder: str, classnames: Any, templates: Any, name: str,
          label_key: "str | None" = None) -> tuple["list[str] | None", "list[str] | None", str]:
    names = resolve_classnames(classnames, name)
    shapes = _shapes_params(folder) if names is None and label_key else None
    if shapes is not None and label_key != shapes.get("label_key"):
        from .shapes import LABEL_KEYS
        from .shapes import classnames as shape_classnames

        if label_key in LABEL_KEYS:  # classnames.txt lists the classes of the folder's own label key
            names = shape_classnames(label_key)
    if names is None and (path := _sidecar(folder, "classnames.txt")):
        names = read_lines(path, "class names")
    temps = resolve_templates(templates, name)
    if temps is None and (path := _sidecar(folder, "zeroshot_classification_templates.txt")):
        temps = resolve_templates(read_lines(path, "templates"))
    kind = "classification"
    if path := _sidecar(folder, "dataset_type.txt"):
        kind = "retrieval" if _read_text(path).strip().lower() == "retrieval" else "classification"
    return names, temps, kind


def _open_folder(root: str, split: str, name: str, img_key, caption_key, label_key, separator, classnames,
                 templates, shard_size) -> DataSource:
    manifest = _join(root, "manifest.json")
    if _exists(manifest):
        try:
            info = json.loads(_read_text(manifest))
        except ValueError:
            info = {}
        if str(info.get("params", {}).get("generator", "")).startswith("clipzoo.shapes"):
            return _open_shapes(root, info, name, img_key, caption_key, label_key, classnames, templates, shard_size)
    split_dir = _join(root, split)
    if split and _isdir(split_dir):
        return _open_folder(split_dir, "", name, img_key, caption_key, label_key, separator, classnames,
                            templates, shard_size)
    entries = _listdir(root)
    files = [e for e in entries if not _isdir(e)]
    nshards = _join(root, "nshards.txt")
    tars = [e for e in files if e.lower().endswith(".tar")]
    if _exists(nshards) and _exists(_join(root, "0.tar")):
        n = int(_read_text(nshards).strip())
        tars = [_join(root, f"{i}.tar") for i in range(n)]
    tfrecords = [e for e in files if _is_tfrecord(e)]
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
        return DataSource(name, _chunk(records, name, shard_size), names, temps, kind, root, len(records))
    raise DatasetError(f"folder {root!r} holds no data set: expected class subfolders of images, .tar shards, "
                       f".tfrecord files, a {split!r} split folder, or a clipzoo shapes folder")


def _open_shapes(root, info, name, img_key, caption_key, label_key, classnames, templates, shard_size):
    params = info.get("params", {})
    files = info.get("files", {})
    if not info.get("complete"):
        raise DatasetError(f"shapes data set {root!r} is incomplete (its writer was interrupted); "
                           f"run the same `clipzoo data shapes` command again to finish it")
    names, temps, kind = _meta(root, classnames, templates, name, label_key)
    if files.get("csv"):
        key = label_key or params.get("label_key", "shape")
        return _csv_source(_join(root, files["csv"]), name, img_key or "filepath", caption_key or "caption", key,
                           ",", names, temps, shard_size, root=root)
    for fmt in ("webdataset", "tfrecord"):
        if files.get(fmt):
            urls = expand_urls(_join(root, files[fmt]))
            return _shards_source(urls, name, root, img_key, caption_key, label_key, names, temps)
    records, _ = read_image_folder(_join(root, "images"))
    return DataSource(name, _chunk(records, name, shard_size), names, temps, kind, root, len(records))


def _csv_source(path, name, img_key, caption_key, label_key, separator, classnames, templates, shard_size,
                root=None) -> DataSource:
    folder = root or _parent(path) or "."
    if label_key is None:
        label_key = _default_csv_label(path, folder, separator)
    names, temps, kind = _meta(folder, classnames, templates, name, label_key)
    records, names = read_csv_records(path, img_key, caption_key, label_key, separator, names)
    if not records:
        raise DatasetError(f"CSV file {path!r} has no rows: the data set is empty")
    return DataSource(name, _chunk(records, name, shard_size), names, temps, kind, path, len(records))


def _default_csv_label(path: str, folder: str, separator: "str | None") -> "str | None":
    """A label column when none is named: the shapes manifest's label key, else label / class / cls."""
    if separator is None:
        separator = "\t" if path.lower().endswith((".tsv", ".tab")) else ","
    try:
        with _open_binary(path) as fh:
            header = next(csv.reader([fh.readline().decode("utf-8-sig")], delimiter=separator), [])
    except (OSError, UnicodeDecodeError):
        return None  # read_csv_records reports the problem
    manifest = _join(folder, "manifest.json")
    if _exists(manifest):
        try:
            key = json.loads(_read_text(manifest)).get("params", {}).get("label_key")
        except ValueError:
            key = None
        if key in header:
            return key
    return next((c for c in ("label", "class", "cls") if c in header), None)


def _shards_source(urls, name, folder, img_key, caption_key, label_key, classnames, templates) -> DataSource:
    if not urls:
        raise DatasetError(f"data set {name!r}: no shards given")
    names, temps, kind = _meta(folder, classnames, templates, name, label_key) if folder else (
        resolve_classnames(classnames, name), resolve_templates(templates, name), "classification")
    fields = SampleFields(img_key, caption_key, label_key, names)
    shards = [TFRecordShard(u, fields) if _is_tfrecord(u) else TarShard(u, fields) for u in urls]
    return DataSource(name, shards, names, temps, kind, folder or urls[0], None)
